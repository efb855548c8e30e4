"""`sipagent demo`: start the agent, call it once over real SIP/RTP, print the conversation."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEMO_QUESTIONS = ("What are your opening hours?", "Where are you located?")


# `free_udp_port` hands out blocks of this many ports: a pool's workers listen on the
# port it returned and the ones after it (`gateway.pool.plan`), so those must be free too.
PORT_BLOCK = 16


def _counter_path() -> Path:
    """Which block comes next, for every process of this user (parallel test runners too)."""
    return Path(tempfile.gettempdir()) / f"sipagent-free-ports-{os.getuid()}"


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to sockets bound to port 0 (Linux's default if unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _next_free_block(host: str, tcp: bool) -> int | None:
    """The first port of the next free block above the ephemeral range, or None when
    there is no room there or the shared counter cannot be used.

    A port taken from the ephemeral range by binding port 0 is only free for now: until
    the agent binds it (seconds later, after its models load) any socket bound to port 0
    (a softphone's SIP transport, sipp's) may get it, and the port after it, a second
    worker's, was never checked. Above that range nothing binds unless told to, and the
    counter, kept in a locked file, gives each caller blocks no other caller was given
    recently (a file of its own per user)."""
    first = _ephemeral_range()[1] + 1
    blocks = (65536 - first) // PORT_BLOCK
    if blocks < 2:
        return None
    try:
        # Never through a link: the temp dir is everybody's.
        fd = os.open(_counter_path(), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "r+", encoding="ascii") as counter:
            fcntl.flock(counter, fcntl.LOCK_EX)
            counter.seek(0)
            text = counter.read().strip()
            index = int(text) % blocks if text.isdigit() else 0
            found = None
            for _ in range(blocks):
                port = first + index * PORT_BLOCK
                index = (index + 1) % blocks
                ports = range(port, port + PORT_BLOCK)
                if all(_bindable(host, p, socket.SOCK_DGRAM) for p in ports) and (
                    not tcp or _bindable(host, port, socket.SOCK_STREAM)
                ):
                    found = port
                    break
            counter.seek(0)
            counter.truncate()
            counter.write(str(index))
            return found
    except OSError:
        return None


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody listens on, and that nobody else is handed for a while: the first
    of `PORT_BLOCK` free ports above the kernel's ephemeral range (an ephemeral port when
    there is no room there)."""
    port = _next_free_block(host, tcp=False)
    return port if port is not None else _ephemeral_udp_port(host)


def _ephemeral_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """Like `free_udp_port`, but the port is free for TCP too (a SIP listener that takes
    both, like the Kamailio edge: another process's outgoing TCP connection can hold a port
    that is free for UDP)."""
    port = _next_free_block(host, tcp=True)
    if port is not None:
        return port
    for _ in range(100):
        port = _ephemeral_udp_port(host)
        if _bindable(host, port, socket.SOCK_STREAM):
            return port
    raise OSError(f"no port free for both UDP and TCP on {host}")


# Linux hands out ephemeral ports from 32768 up, so `free_udp_port` never returns a port
# below this; RTP ranges placed under it cannot hold another process's SIP port.
_EPHEMERAL_LOW = 32768
_RTP_LOW = 10000


def rtp_base_for(sip_port: int, span: int) -> int:
    """A start for `span` RTP ports, below the ephemeral range and spread by `sip_port`'s
    block, so agents started on different free ports get disjoint ranges and no range
    covers a SIP port that `free_udp_port` handed out."""
    slots = (_EPHEMERAL_LOW - _RTP_LOW) // span
    if slots < 1:
        raise ValueError(f"{span} RTP ports do not fit below {_EPHEMERAL_LOW}")
    return _RTP_LOW + (sip_port // PORT_BLOCK % slots) * span


_WORKER_LINE = re.compile(
    r"^sipagent: worker (?P<index>\d+) \(pid (?P<pid>\d+)\) listening on udp \S+:(?P<port>\d+)"
)


class AgentProcess:
    """`sipagent serve` as a child process; its log lines are collected."""

    def __init__(
        self,
        port: int,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        workers: int | None = None,
        new_session: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        """Start the agent; `env` replaces the environment when given.  With
        ``new_session`` it leads its own session, and `stop` also kills any worker process
        left in it."""
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--listen", f"{host}:{port}"]
        if config is not None:
            cmd += ["--config", str(config)]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        self.port = port
        self.lines: list[str] = []
        self.listening = threading.Event()
        self.ready = threading.Event()
        # worker index -> (pid, SIP port) of its current process, from the supervisor's lines
        self.workers: dict[int, tuple[int, int]] = {}
        self.app_url: str | None = None
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else dict(os.environ),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )
        self.new_session = new_session
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:  # closed at end of output: this thread is its only reader
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                m = _WORKER_LINE.search(line)
                if m is not None:
                    self.workers[int(m["index"])] = (int(m["pid"]), int(m["port"]))
                if "listening on udp" in line:
                    self.listening.set()
                if line.startswith("sipagent: ready:"):
                    self.ready.set()
                if line.startswith("sipagent: answer_url app listening on "):
                    self.app_url = line.rsplit(" ", 1)[1].strip()

    def wait_listening(self, timeout: float = 90.0) -> bool:
        """Wait for the "listening" line; False if the process died or timed out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listening.wait(0.2):
                return True
            if self.proc.poll() is not None:
                return False
        return False

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Wait until every worker is up; False if the process died or timed out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.wait(0.2):
                return True
            if self.proc.poll() is not None:
                return False
        return False

    def worker_uri(self, index: int) -> str:
        """The SIP URI of worker ``index``."""
        return f"sip:agent@127.0.0.1:{self.workers[index][1]}"

    def turns(self) -> list[dict[str, object]]:
        """The TURN records the agent logged."""
        out = []
        for line in list(self.lines):
            if " TURN {" in line:
                out.append(json.loads(line.split(" TURN ", 1)[1]))
        return out

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        rc = stop_process(self.proc, timeout)
        if self.new_session:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
        self._reader.join(2)
        return rc


def stop_process(proc: subprocess.Popen[str], timeout: float) -> int:
    """SIGTERM ``proc``, SIGKILL it (its whole session when it leads one) if it has not
    exited after ``timeout`` seconds; returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                leads_session = os.getsid(proc.pid) == proc.pid
            except ProcessLookupError:
                leads_session = False
            with contextlib.suppress(ProcessLookupError):
                if leads_session:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            proc.wait()
    return int(proc.returncode)


def _fmt_turn(t: dict[str, object]) -> str:
    if t["kind"] == "greeting":
        head = "greeting"
    else:
        head = f'"{t["user_text"]}" → {t["intent"] or "fallback"}'
    parts = [
        f"end-of-turn wait {t['eot_wait_ms']:.0f}",
        f"STT {t['stt_ms']:.0f}",
        f"brain {t['brain_ms']:.0f}",
        f"TTS first audio {t['tts_first_ms']:.0f}",
        f"playout {t['playout_ms']:.0f}",
        f"total {t['total_ms']:.0f} ms",
    ]
    if t["kind"] == "greeting":
        parts = parts[2:]
    if t.get("interrupted"):
        parts.append("(interrupted)")
    return f"  {head}: " + ", ".join(parts)


def _expect(config: Path | None) -> list[str]:
    """The softphone's transcriber expects the playbook's replies when the agent answers
    from one: the demo then shows what the agent said, not the recogniser's guesses."""
    from sip_config import load_settings

    try:
        settings = load_settings(config)
    except Exception:  # the agent reports a broken configuration itself
        return []
    if settings.providers.brain != "scripted" or settings.playbook is None:
        return []
    return ["--expect", str(settings.playbook)]


def run_demo(config: Path | None = None, port: int = 0) -> int:
    """Start the agent, place one call with two questions, print what happened."""
    port = port or free_udp_port()
    uri = f"sip:agent@127.0.0.1:{port}"
    print(f"sipagent demo: starting the agent on {uri} (loading models)…", flush=True)
    # One call needs no spare worker: loading a spare's models would compete for the CPU
    # with the call the demo is about (on 2 cores the first question was misheard then).
    env = dict(os.environ)
    env.setdefault("SIPAGENT_POOL__SPARE", "false")
    agent = AgentProcess(port, config, env=env)
    try:
        if not agent.wait_listening():
            print("sipagent demo: the agent did not start:", file=sys.stderr)
            for line in agent.lines[-20:]:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"sipagent demo: calling {uri} with {len(DEMO_QUESTIONS)} questions…", flush=True)
        cmd = [sys.executable, "-m", "gateway.cli", "call", uri, "--transcribe"]
        cmd += _expect(config)
        for q in DEMO_QUESTIONS:
            cmd += ["--say", q]
        rc = subprocess.call(cmd, timeout=180)
        time.sleep(0.5)
        turns = agent.turns()
        if turns:
            print("agent-side timings (end of caller speech → first agent audio on the wire):")
            for t in turns:
                print(_fmt_turn(t))
        print("sipagent demo: " + ("the call went through" if rc == 0 else "the call FAILED"))
        return 0 if rc == 0 else 1
    finally:
        agent.stop()
