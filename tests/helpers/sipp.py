"""Helpers of the outbound wire tests: sipp as the callee (a UAS scenario that answers with
media) and reading call records."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.devtools.demo import free_udp_port

KEY = "wire-outbound-key"


def answer_scenario(rtp_port: int) -> str:
    """Ring, answer with media to ``rtp_port``, wait for the agent's BYE."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="answer">
  <recv request="INVITE" crlf="true"/>
  <send><![CDATA[
SIP/2.0 180 Ringing
{_REPLY_HEAD}
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
{_REPLY_HEAD}
Content-Type: application/sdp
Content-Length: [len]

v=0
o=callee 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio {rtp_port} RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=sendrecv
]]></send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
{_REPLY_HEAD}
Content-Length: 0

]]></send>
</scenario>
"""


@contextmanager
def sipp_uas(tmp: Path, scenario: str, name: str) -> Iterator[tuple[int, Path, Callable[[], int]]]:
    """sipp as a UAS for one call: (its SIP port, its message log, wait-for-exit)."""
    path = tmp / f"{name}.xml"
    path.write_text(scenario)
    log = tmp / f"{name}-messages.log"
    port = free_udp_port()
    proc = subprocess.Popen(
        [
            "sipp",
            "-sf",
            str(path),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "1",
            "-nostdin",
            "-trace_msg",
            "-message_file",
            str(log),
            "-timeout",
            "60s",
            "-timeout_error",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp,
    )

    def wait() -> int:
        return proc.wait(60)

    try:
        yield port, log, wait
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def wait_for_record(tmp: Path, call_id: str, key: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rec = record(tmp, call_id)
        if rec.get(key):
            return rec
        assert time.monotonic() < deadline, f"no {key} recorded for {call_id}: {rec}"
        time.sleep(0.1)


_REPLY_HEAD = """[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>"""


def record(tmp: Path, call_id: str) -> dict[str, Any]:
    with sqlite3.connect(tmp / "records.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM calls WHERE call_uuid = ?", (call_id,)).fetchone()
        return dict(row) if row is not None else {}
