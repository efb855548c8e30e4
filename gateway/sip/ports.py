"""The RTP and RTCP ports pjsua binds for the agent account's calls (pure Python).

Each worker process gets its own range of ports (the supervisor's plan:
`pool.rtp_ports_per_worker` ports each from `sip.rtp_port_start`); these helpers turn a
range into pjsua's ``portRange`` and list every port it may use, so that neighbouring
workers never share one. No pjsua2 here: callable from any thread.
"""

from __future__ import annotations


def pjsua_port_range(ports: int) -> int:
    """pjsua's ``portRange`` that keeps RTP and RTCP inside ``ports`` ports from the start.

    pjsua puts RTP on start, start+2, ... while the port is at most start+portRange
    (inclusive) and RTCP one above, so portRange = ports - 2 keeps the top RTCP port at
    start+ports-1 (with portRange = ports, worker i's last RTP/RTCP pair was worker
    i+1's first). 0 would mean "no limit" to pjsua: at least 2.
    """
    return max(2, ports - 2)


def pjsua_media_ports(start: int, port_range: int) -> set[int]:
    """Every port pjsua may bind for RTP and RTCP with this start and ``portRange``."""
    rtp = range(start, start + port_range + 1, 2)
    return {p for port in rtp for p in (port, port + 1)}
