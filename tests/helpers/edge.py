"""Helpers of the edge's wire tests: `sipagent serve --edge` with the fake providers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.devtools.demo import AgentProcess, free_udp_port, free_udp_tcp_port, rtp_base_for
from tests.helpers.wire import (
    clean_env,
)


def fake_env(tmp: Path, **settings: str) -> dict[str, str]:
    """A pool with the fake providers, no app, records in `tmp`."""
    env = {
        "SIPAGENT_PROVIDERS__STT": "fake",
        "SIPAGENT_PROVIDERS__TTS": "fake",
        "SIPAGENT_PROVIDERS__BRAIN": "fake",
        "SIPAGENT_APP__ENABLED": "false",
        "SIPAGENT_RECORDS__URL": f"sqlite:///{tmp / 'records.db'}",
        "SIPAGENT_POOL__DRAIN_TIMEOUT_S": "5",
    }
    env.update({f"SIPAGENT_{k.upper()}": v for k, v in settings.items()})
    return env


@contextmanager
def edge_pool(
    tmp: Path, workers: int, host: str = "127.0.0.1", **settings: str
) -> Iterator[AgentProcess]:
    """`sipagent serve --edge --workers N` on a free port of `host` (the edge's), workers
    behind it on free loopback ports; stopped at the end."""
    port = free_udp_tcp_port(host)  # the edge listens on UDP and TCP
    env = fake_env(tmp, **settings)
    env["SIPAGENT_EDGE__ENABLED"] = "true"
    env.setdefault("SIPAGENT_EDGE__WORKER_PORT", str(free_udp_port()))
    env.setdefault("SIPAGENT_SIP__RTP_PORT_START", str(rtp_base_for(port, 40 * 8)))
    env.setdefault("SIPAGENT_SIP__ALLOW_NETWORKS", "127.0.0.1/32")
    pool = AgentProcess(
        port, env=clean_env(**env), cwd=tmp, workers=workers, new_session=True, host=host
    )
    try:
        assert pool.wait_ready(120), "pool did not start:\n" + "\n".join(pool.lines[-40:])
        yield pool
    except BaseException:
        # What serve said is the first thing to read when an edge test fails.
        print("\n".join(["serve's last lines:", *pool.lines[-120:]]))
        raise
    finally:
        pool.stop(30)
