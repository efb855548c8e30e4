"""Helpers for on-the-wire tests: a real agent process and real softphone processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.devtools.demo import AgentProcess, free_udp_port, rtp_base_for
from tests.fakes import http
from tests.fakes.plivo import PlivoEmulator, inbound_params
from tests.fakes.plivo_api import signed_request

CALL_TIMEOUT_S = 120


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without SIPAGENT_ settings, plus `extra`. Python's fault handler is
    on, so a process that crashes in native code leaves its Python stack on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAGENT_")}
    env.setdefault("PYTHONFAULTHANDLER", "1")
    env.update(extra)
    return env


@contextmanager
def running_agent(tmp: Path, **settings: str) -> Iterator[AgentProcess]:
    """Start `sipagent serve` on a free port (settings as SIPAGENT_ env vars); always stop it."""
    env = {f"SIPAGENT_{k.upper()}": v for k, v in settings.items()}
    port = free_udp_port()
    # Each agent gets its own RTP range so parallel test agents never collide.
    env.setdefault("SIPAGENT_SIP__RTP_PORT_START", str(rtp_base_for(port, 400)))
    # One worker, as before the pool: no spare process, a short drain on stop.
    env.setdefault("SIPAGENT_POOL__WORKERS", "1")
    env.setdefault("SIPAGENT_POOL__SPARE", "false")
    env.setdefault("SIPAGENT_POOL__DRAIN_TIMEOUT_S", "5")
    # cwd=tmp: no stray .env file is read.
    agent = AgentProcess(port, env=clean_env(**env), cwd=tmp)
    try:
        assert agent.wait_listening(120), "agent did not start:\n" + "\n".join(agent.lines[-30:])
        yield agent
    finally:
        rc = agent.stop()
        assert rc == 0, f"agent exited with {rc}:\n" + "\n".join(agent.lines[-30:])


POOL_TOKEN = "pool-test-auth-token"
PUSH_TOKEN = "wire-push-token"


@contextmanager
def running_pool(
    tmp: Path, workers: int, config: Path | None = None, **settings: str
) -> Iterator[AgentProcess]:
    """`sipagent serve --workers N` with the app on a free port; stopped (SIGTERM) after."""
    with _pool(tmp, workers, config, False, settings) as pool:
        yield pool


@contextmanager
def running_pool_group(tmp: Path, workers: int, **settings: str) -> Iterator[AgentProcess]:
    """`running_pool` leading its own process group (signal it all with killpg)."""
    with _pool(tmp, workers, None, True, settings) as pool:
        yield pool


@contextmanager
def _pool(
    tmp: Path, workers: int, config: Path | None, new_session: bool, settings: dict[str, str]
) -> Iterator[AgentProcess]:
    env = {f"SIPAGENT_{k.upper()}": v for k, v in settings.items()}
    port = free_udp_port()
    env.setdefault("SIPAGENT_SIP__RTP_PORT_START", str(rtp_base_for(port, 40 * 8)))
    env.setdefault("SIPAGENT_APP__LISTEN_PORT", "0")
    env.setdefault("SIPAGENT_APP__AUTH_TOKEN", POOL_TOKEN)
    env.setdefault("SIPAGENT_RECORDS__URL", f"sqlite:///{tmp / 'records.db'}")
    env.setdefault("SIPAGENT_POOL__DRAIN_TIMEOUT_S", "30")
    pool = AgentProcess(
        port, config, env=clean_env(**env), cwd=tmp, workers=workers, new_session=new_session
    )
    try:
        assert pool.wait_ready(180), "pool did not start:\n" + "\n".join(pool.lines[-40:])
        yield pool
    finally:
        pool.stop(timeout=60)


def uri(agent: AgentProcess) -> str:
    """The agent's SIP URI."""
    return f"sip:agent@127.0.0.1:{agent.port}"


def call_cmd(target: str, *args: str) -> list[str]:
    """Command line of a softphone call that prints a JSON report."""
    return [sys.executable, "-m", "gateway.cli", "call", target, "--json", *args]


def parse_report(stdout: str, stderr: str = "", returncode: int | None = None) -> dict[str, Any]:
    """The JSON report: the last stdout line that is a JSON object. Without one, the
    failure shows how the softphone ended and the end of what it wrote to stderr."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            report: dict[str, Any] = json.loads(line)
            return report
    raise AssertionError(
        f"no JSON report in softphone output (exit status {returncode}):\n{stdout}\n"
        f"stderr:\n{stderr[-4000:]}"
    )


def place_call(target: str, *args: str, timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """Run one softphone call to completion; returns its report (plus 'returncode')."""
    proc = subprocess.run(
        call_cmd(target, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )
    report = parse_report(proc.stdout, proc.stderr, proc.returncode)
    report["returncode"] = proc.returncode
    report["stderr"] = proc.stderr
    return report


def start_call(target: str, *args: str) -> subprocess.Popen[str]:
    """Start a softphone call in the background."""
    return subprocess.Popen(
        call_cmd(target, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def finish_call(proc: subprocess.Popen[str], timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """Wait for a background call; returns its report."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"softphone timed out:\n{out}\n{err}") from None
    report = parse_report(out, err, proc.returncode)
    report["returncode"] = proc.returncode
    report["stderr"] = err
    return report


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `cond` until true; fail the test naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def count_lines(agent: AgentProcess, needle: str) -> int:
    """How many agent log lines contain `needle`."""
    return sum(1 for line in list(agent.lines) if needle in line)


def words(text: str) -> list[str]:
    """Lower-case words without punctuation."""
    cleaned = "".join(c.lower() if c.isalnum() or c in " '" else " " for c in text)
    return cleaned.split()


def word_overlap(expected: str, heard: str) -> float:
    """Share of the expected text's distinct words found in what was heard."""
    exp = set(words(expected))
    got = set(words(heard))
    return len(exp & got) / max(1, len(exp))


def plivo_post(url: str, params: dict[str, str], token: str = POOL_TOKEN) -> tuple[int, str]:
    """POST form parameters signed the way Plivo signs them (V3 signature)."""
    return signed_request(url, params, token)


def answer(pool: AgentProcess, caller: str) -> tuple[str, str, list[str]]:
    """Ask the app where an inbound call goes, as Plivo does; returns (CallUUID, SIP URI,
    the softphone's arguments for the rest of Plivo's leg)."""
    assert pool.app_url is not None
    params = inbound_params(caller, "+14155550100")
    leg = PlivoEmulator(pool.app_url, POOL_TOKEN).dial(params)
    return params["CallUUID"], leg.uri, leg.softphone()


def post_json(url: str, payload: Any, token: str = PUSH_TOKEN) -> tuple[int, dict[str, Any]]:
    """`tests.fakes.http.post_json`, with the wire tests' push token by default."""
    return http.post_json(url, payload, token)
