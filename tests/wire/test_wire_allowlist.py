"""Source allow-list and drain on the wire: sipp calls a worker from 127.0.0.1 and 127.0.0.2.

The worker allows only 127.0.0.1/32; sipp binds its source address with ``-i``. Drain is
driven through the test worker's SIGUSR1/SIGUSR2 (``AgentUA.set_accepting``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtools.demo import free_udp_port
from tests.helpers.kamailio import (
    WorkerProcess,
    finish_sipp,
    refused_scenario,
    run_sipp,
    running_worker,
    sipp_available,
    start_sipp,
    worker_settings,
)

pytestmark = [
    pytest.mark.wire,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sipp_available(), reason="sipp (Debian sip-tester) missing"),
]


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerProcess]:
    port = free_udp_port()
    settings = worker_settings(port, sip={"allow_networks": ["127.0.0.1/32"]})
    with running_worker(tmp_path, settings) as w:
        yield w


def _out(proc: object) -> str:
    return str(getattr(proc, "stdout", ""))[-1500:] + str(getattr(proc, "stderr", ""))[-1500:]


def test_invite_from_outside_the_allow_list_gets_403_and_no_conversation(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    refused = run_sipp(
        tmp_path, worker.target, scenario=refused_scenario(tmp_path, 403), source_ip="127.0.0.2"
    )
    assert refused.returncode == 0, _out(refused)
    worker.wait_line("INVITE from 127.0.0.2:", timeout=2)
    (_, line), *rest = worker.matching("refused with 403")
    assert not rest
    assert " WARNING " in line and "source not in sip.allow_networks" in line, line
    # No call, no conversation for the stranger.
    assert worker.count("incoming call") == 0
    assert worker.count(" TURN ") == 0

    answered = run_sipp(tmp_path, worker.target, source_ip="127.0.0.1", pause_ms=300)
    assert answered.returncode == 0, _out(answered)
    (_, line), *rest = worker.matching("incoming call")
    assert not rest and "sip:sipp@127.0.0.1" in line, line
    worker.wait_line(" ended: 200", timeout=5)


def test_draining_refuses_new_calls_with_503_and_keeps_calls_in_progress(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    long_call = start_sipp(tmp_path, worker.target, pause_ms=3000)
    try:
        worker.wait_line("incoming call", timeout=10, after=t0)
        worker.set_accepting(False)
        worker.wait_line("draining: new calls get 503", timeout=5)
        refused = run_sipp(
            tmp_path, worker.target, scenario=refused_scenario(tmp_path, 503, retry_after=True)
        )
        assert refused.returncode == 0, _out(refused)
        worker.wait_line("refused with 503: draining", timeout=2)
        assert worker.count("incoming call") == 1
    finally:
        rc, out = finish_sipp(long_call)
    # The call in progress went on to its normal end (sipp's BYE answered with 200).
    assert rc == 0, out
    worker.wait_line(" ended: 200", timeout=5)

    worker.set_accepting(True)
    worker.wait_line("accepting new calls again", timeout=5)
    again = run_sipp(tmp_path, worker.target, pause_ms=300)
    assert again.returncode == 0, _out(again)
    assert worker.count("incoming call") == 2
