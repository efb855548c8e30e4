"""The pool's process model on the wire: a signal to the whole process group drains like a
signal to the supervisor, workers die with a killed supervisor and `sipagent serve`
starts again on the same ports at once, closing the call records the dead one left open;
a caller's non-UTF-8 display name is recorded.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.audio.pcm import write_wav
from gateway.devtools.demo import AgentProcess, free_udp_port, rtp_base_for
from tests.helpers.sipraw import RawSip, call, sdp_offer
from tests.helpers.wire import (
    clean_env,
    finish_call,
    running_agent,
    running_pool_group,
    start_call,
    wait_for,
)

pytestmark = [pytest.mark.wire, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def question_wav(
    tmp_path_factory: pytest.TempPathFactory, speech_8k: Callable[[str], bytes]
) -> Path:
    path = tmp_path_factory.mktemp("speech") / "hours.wav"
    write_wav(path, speech_8k("What are your opening hours?"))
    return path


def rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM calls")]


def children(pid: int) -> set[int]:
    """Child processes of `pid` (workers and the spare of a supervisor)."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out |= {int(p) for p in f.read().split()}
        except FileNotFoundError:
            continue
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_drains(
    tmp_path: Path, question_wav: Path, sig: signal.Signals
) -> None:
    with running_pool_group(tmp_path, 2, app__enabled="false", pool__drain_timeout_s="120") as pool:
        talking = start_call(
            pool.worker_uri(0), *["--play", str(question_wav)] * 3, "--timeout", "60"
        )
        wait_for(lambda: any("incoming call" in line for line in pool.lines), 20, "the call")
        time.sleep(2.0)  # into the conversation
        os.killpg(pool.proc.pid, sig)  # what systemd, docker or a terminal do
        wait_for(lambda: any("sipagent: draining" in line for line in pool.lines), 10, "drain")
        # Every worker refuses new calls (none answers 200), and none stopped early.
        for index in (0, 1):
            refused = finish_call(start_call(pool.worker_uri(index), "--play", str(question_wav)))
            assert refused["status_code"] == 503 and not refused["answered"], refused
        report = finish_call(talking, timeout=180)
        assert pool.proc.wait(60) == 0
    assert report["returncode"] == 0, report["stderr"][-2000:]
    assert report["ended_by"] == "caller", report
    assert all(s["reply_latency_ms"] is not None for s in report["steps"]), report["steps"]


def test_workers_die_with_a_killed_supervisor_and_serve_restarts_at_once(
    tmp_path: Path, question_wav: Path
) -> None:
    port = free_udp_port()
    db = tmp_path / "records.db"
    env = clean_env(
        SIPAGENT_SIP__RTP_PORT_START=str(rtp_base_for(port, 40 * 8)),
        SIPAGENT_APP__ENABLED="false",
        SIPAGENT_RECORDS__URL=f"sqlite:///{db}",
        SIPAGENT_POOL__DRAIN_TIMEOUT_S="5",
    )
    first = AgentProcess(port, env=env, cwd=tmp_path, workers=2, new_session=True)
    second: AgentProcess | None = None
    try:
        assert first.wait_ready(180), "\n".join(first.lines[-40:])
        talking = start_call(
            first.worker_uri(0), *["--play", str(question_wav)] * 3, "--timeout", "60"
        )
        wait_for(lambda: any("incoming call" in line for line in first.lines), 20, "the call")
        wait_for(lambda: any(r["start_at"] for r in rows(db)), 10, "the call's record")
        workers = children(first.proc.pid)
        assert len(workers) >= 3, workers  # two workers and the spare
        killed = time.monotonic()
        os.kill(first.proc.pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(p) for p in workers), 5, "the workers to exit")
        gone_s = time.monotonic() - killed
        print(f"workers gone {gone_s * 1000:.0f} ms after the supervisor was killed")
        assert gone_s < 2.0, gone_s
        # The caller was hung up (BYE), not left in silence.
        report = finish_call(talking, timeout=60)
        assert report["ended_by"] == "agent", report

        second = AgentProcess(port, env=env, cwd=tmp_path, workers=2, new_session=True)
        assert second.wait_ready(180), "\n".join(second.lines[-40:])
        assert any("closed 1 call record(s) left open" in line for line in second.lines)
        (row,) = rows(db)
        assert row["end_reason"] == "gateway restarted" and row["end_at"] is not None, row
        fresh = finish_call(start_call(second.worker_uri(0), "--play", str(question_wav)), 120)
        assert fresh["returncode"] == 0 and fresh["steps"][0]["reply_latency_ms"] is not None
        assert second.stop(60) == 0
    finally:
        first.stop(10)
        if second is not None:
            second.stop(10)


def test_a_loaded_spare_takes_the_port_at_once_however_often_workers_die(
    tmp_path: Path,
) -> None:
    # Before, the crash-loop backoff delayed the hand-over itself: 0.5, 1, 2, 4 s from the
    # third death in a minute on.
    with running_pool_group(
        tmp_path,
        1,
        app__enabled="false",
        providers__stt="fake",
        providers__tts="fake",
        providers__brain="fake",
    ) as pool:
        took = []
        for death in range(1, 7):

            def spare_loaded(n: int = death) -> bool:
                return sum("spare worker" in ln and "loaded" in ln for ln in pool.lines) >= n

            wait_for(spare_loaded, 60, f"a loaded spare before death {death}")
            pid = pool.workers[0][0]

            def replaced(old: int = pid) -> bool:
                return pool.workers[0][0] != old

            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_for(replaced, 10, "worker 0 replaced")
            took.append(time.monotonic() - killed)
        print("spare took the port after " + ", ".join(f"{t * 1000:.0f}" for t in took) + " ms")
        assert max(took) < 2.0, took
        target = ("127.0.0.1", pool.workers[0][1])
        with RawSip() as sip:
            dialog = call(sip, target, sdp_offer())
            assert sip.final(dialog.request(sip, "BYE"), target).code == 200


def test_a_display_name_that_is_not_utf8_is_recorded(tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    with running_agent(tmp_path, records__url=f"sqlite:///{db}") as agent, RawSip() as sip:
        target = ("127.0.0.1", agent.port)
        dialog = call(sip, target, sdp_offer(), from_display=b"Caf\xe9 \xff\xfe")
        wait_for(lambda: any(r["start_at"] for r in rows(db)), 10, "the call's record")
        assert sip.final(dialog.request(sip, "BYE"), target).code == 200
        wait_for(lambda: any(r["end_at"] for r in rows(db)), 10, "the call's end")
    (row,) = rows(db)
    assert row["sip_from"].startswith('"Caf\ufffd \ufffd\ufffd" <sip:caller@127.0.0.1'), row
    assert row["sip_to"] and row["end_reason"], row
