"""How many workers the pool runs and which ports each one takes (pure: no processes, no
sockets).

`auto_workers` sizes the pool for ``pool.workers = 0``; `plan_workers` gives every worker
its SIP port and RTP port range, or a ConfigError naming the setting that does not fit (the
edge's own ports included, `_check_edge`).  Called on the main thread before the
supervisor's event loop starts (and by the unit tests); the plans never change afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gateway.pool.state import WorkerKind
from gateway.providers.registry import loads_models
from sip_config import ConfigError, Settings

# Hosts that bind (or mean) loopback: an edge listening on one of them shares 127.0.0.1
# with the workers behind it.
LOOPBACK_OR_ANY = ("127.0.0.1", "0.0.0.0", "localhost", "")


def auto_workers(settings: Settings, cpus: int | None = None) -> int:
    """Pool size for ``pool.workers = 0``.

    Register mode: one worker per configured account.  Offline speech models (pocketsphinx,
    Piper) cost about a core per 4 busy calls, so one worker per 2 cores.  With cloud or
    fake providers a call costs ~13 ms of CPU per second and audio starts to break up above
    ~75 % machine load (`scripts/bench/capacity.py`: 64 calls on 2 vCPUs held with no gap),
    so 8 workers (32 calls) per core.
    """
    if settings.sip.mode == "register":
        return max(1, len(settings.registration.accounts))
    n = cpus if cpus is not None else (os.cpu_count() or 1)
    if loads_models(settings):
        return max(1, n // 2)
    return max(1, n * 8)


@dataclass(frozen=True)
class WorkerPlan:
    """Addresses of worker ``index``."""

    index: int
    sip_port: int
    rtp_port_start: int
    rtp_port_range: int
    sip_host: str = "127.0.0.1"
    # A stream worker: `sip_host:sip_port` is its WebSocket address (shared by all of
    # them), and it has no RTP ports.
    kind: WorkerKind = "sip"

    @property
    def address(self) -> str:
        """host:port of its SIP transport (of its WebSocket, for a stream worker)."""
        return f"{self.sip_host}:{self.sip_port}"


def plan_stream_workers(settings: Settings, first_index: int) -> list[WorkerPlan]:
    """The ``pool.stream_workers`` stream workers, numbered after the SIP workers; they all
    listen on ``stream.listen_host:listen_port``."""
    st = settings.stream
    return [
        WorkerPlan(first_index + i, st.listen_port, 0, 0, st.listen_host, kind="stream")
        for i in range(settings.pool.stream_workers)
    ]


def plan_pool(settings: Settings, workers: int) -> list[WorkerPlan]:
    """Every worker of the pool: ``workers`` SIP workers (none when ``pool.sip`` is off),
    then the stream workers; ConfigError when none would run or the ports do not fit."""
    sip = plan_workers(settings, workers) if settings.pool.sip else []
    if not sip and not settings.pool.stream_workers:
        raise ConfigError("pool.sip is off and pool.stream_workers is 0: no worker would run")
    return sip + plan_stream_workers(settings, len(sip))


def worker_base(settings: Settings) -> tuple[str, int]:
    """(host, first SIP port) of the workers: their own public address, or loopback
    behind the edge."""
    if settings.edge.enabled:
        return "127.0.0.1", settings.edge.worker_port
    return settings.sip.listen_host, settings.sip.listen_port


def plan_workers(settings: Settings, workers: int) -> list[WorkerPlan]:
    """Ports for each worker; raises ConfigError when they do not fit."""
    if workers < 1:
        raise ConfigError("pool.workers: at least one worker is needed")
    if settings.sip.mode == "register" and workers > len(settings.registration.accounts):
        raise ConfigError(
            f"pool.workers: {workers} workers in register mode need {workers} accounts in"
            f" registration.accounts (each worker registers its own endpoint);"
            f" {len(settings.registration.accounts)} configured"
        )
    sip, per = settings.sip, settings.pool.rtp_ports_per_worker
    host, base = worker_base(settings)
    name = "edge.worker_port" if settings.edge.enabled else "sip.listen_port"
    if settings.edge.enabled:
        _check_edge(settings, base, workers)
    if workers == 1:
        per = sip.rtp_port_range
    if base + workers - 1 > 65535:
        raise ConfigError(f"pool.workers: {workers} SIP ports from {name} {base} go past 65535")
    if sip.rtp_port_start + workers * per > 65535:
        raise ConfigError(
            f"pool.workers: {workers} workers x {per} RTP ports from sip.rtp_port_start"
            f" {sip.rtp_port_start} go past 65535"
        )
    rtp_end = sip.rtp_port_start + workers * per
    if sip.rtp_port_start <= base < rtp_end:
        raise ConfigError(
            f"{name} {base} lies inside the workers' RTP ports {sip.rtp_port_start}-{rtp_end - 1}"
        )
    return [
        WorkerPlan(i, base + i, sip.rtp_port_start + i * per, per, host) for i in range(workers)
    ]


def _check_edge(settings: Settings, base: int, workers: int) -> None:
    """The edge's settings against the workers': ConfigError naming what does not fit."""
    edge = settings.edge
    if settings.sip.mode == "register":
        raise ConfigError(
            "edge.enabled: register mode has no edge (each worker registers its own"
            " endpoint and Plivo calls it there); use sip.mode = direct with the edge"
        )
    if edge.listen_host in LOOPBACK_OR_ANY:
        ports = {edge.listen_port} | ({edge.tls_port} if edge.tls_cert else set())
        for port in sorted(ports):
            if base <= port < base + workers:
                raise ConfigError(
                    f"edge.worker_port: the workers' ports {base}-{base + workers - 1} on"
                    f" 127.0.0.1 hold the edge's port {port}; move edge.worker_port"
                )
