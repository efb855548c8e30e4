"""Kamailio as a supervised child of `sipagent serve`: start, watch, restart, stop, and
tell it which workers are up and whether the pool drains (JSON-RPC over a Unix datagram
socket, Kamailio's jsonrpcs module).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.edge.config import (
    WORKERS_SET,
    EdgePlan,
    dispatcher_list,
    kamailio_cfg,
    sdp_regex_file,
    tls_cfg,
)

log = logging.getLogger("sipagent.edge")

DEBIAN_PACKAGES = "kamailio kamailio-tls-modules"
_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1
_counter = itertools.count(1)


class EdgeError(RuntimeError):
    """The edge cannot run (message meant for the operator)."""


def find_kamailio(configured: str = "") -> str:
    """The kamailio binary: `configured`, else from PATH, else /usr/sbin/kamailio."""
    for candidate in (configured,) if configured else ("kamailio", "/usr/sbin/kamailio"):
        found = shutil.which(candidate)
        if found:
            return found
    if configured:
        raise EdgeError(f"edge.kamailio: {configured} is not an executable")
    raise EdgeError(
        f"edge.enabled: Kamailio is not installed (Debian: apt-get install {DEBIAN_PACKAGES})"
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, whatever killed it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class Edge:
    """One Kamailio process group, restarted when it dies until `stop`."""

    def __init__(self, plan: EdgePlan, binary: str, say: Callable[[str], None]) -> None:
        self.plan = plan
        self.binary = binary
        self.say = say
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.draining = False
        self.down: set[str] = set()  # workers known dead (host:port)
        self.restarts = 0
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._deaths: list[float] = []

    # -- files ------------------------------------------------------------------------------
    def write_files(self) -> None:
        """Write kamailio.cfg, the dispatcher list, the SDP patterns and tls.cfg."""
        plan = self.plan
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        (plan.run_dir / "dispatcher.list").write_text(dispatcher_list(plan))
        (plan.run_dir / "sdp.regex").write_text(sdp_regex_file())
        if plan.tls:
            (plan.run_dir / "tls.cfg").write_text(tls_cfg(plan))
        # The configuration may hold sip.inbound_auth's password: owner only.
        plan.cfg_path.touch(mode=0o600)
        plan.cfg_path.chmod(0o600)
        plan.cfg_path.write_text(kamailio_cfg(plan))

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Write the files, start Kamailio and wait until it answers; EdgeError otherwise."""
        self.write_files()
        check = await asyncio.create_subprocess_exec(
            self.binary,
            "-c",
            "-f",
            str(self.plan.cfg_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await check.communicate()
        if check.returncode != 0:
            errors = [ln for ln in out.decode(errors="replace").splitlines() if "ERROR" in ln]
            raise EdgeError("kamailio refused its configuration: " + " | ".join(errors[-3:]))
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._supervise())

    async def _spawn(self) -> None:
        plan = self.plan
        plan.rpc_socket.unlink(missing_ok=True)
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "-f",
            str(plan.cfg_path),
            "-DD",  # foreground, no daemon
            "-E",  # log to stderr
            "-w",
            str(plan.run_dir),
            "-Y",
            str(plan.run_dir),
            "-P",
            str(plan.run_dir / "kamailio.pid"),
            "-m",
            "64",
            "-M",
            "8",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its children share its process group: killpg ends all
            preexec_fn=_die_with_parent,
        )
        self.proc = proc
        self._reader = asyncio.get_running_loop().create_task(self._read(proc))
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                break
            try:
                await self.rpc("core.uptime", timeout=0.5)
            except (OSError, TimeoutError, EdgeError):
                await asyncio.sleep(0.05)
                continue
            await self._restore()
            return
        tail = " | ".join(self.lines[-5:])
        await self._kill(proc)
        raise EdgeError(f"kamailio did not start on {plan.uri}: {tail}")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            raw = await proc.stderr.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            del self.lines[:-200]
            level = (
                logging.ERROR
                if " ERROR:" in line or "CRITICAL" in line
                else logging.WARNING
                if " WARNING:" in line
                else logging.INFO
            )
            log.log(level, "%s", line.split(": ", 1)[-1] if "<script>" in line else line)

    async def _supervise(self) -> None:
        """Restart Kamailio when it dies (backing off when it keeps dying)."""
        while not self._stopping:
            proc = self.proc
            if proc is None:
                return
            # Not proc.wait(): it also waits for the stderr pipe, which Kamailio's children
            # keep open when the main process died alone.
            while proc.returncode is None:
                await asyncio.sleep(0.2)
            code = proc.returncode
            await self._kill(proc)  # its children, if the main process died alone
            if self._stopping:
                return
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < 60.0] + [now]
            n = len(self._deaths)
            delay = 0.0 if n <= 2 else min(30.0, 0.5 * 2 ** (n - 2))
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            later = f" in {delay:g} s" if delay else ""
            self.say(f"edge: kamailio died ({how}); restarting it{later}")
            if delay:
                await asyncio.sleep(delay)
            while not self._stopping:
                try:
                    await self._spawn()
                    self.restarts += 1
                    self.say(f"edge: kamailio (pid {self.proc.pid if self.proc else '?'}) back up")
                    break
                except EdgeError as exc:
                    self.say(f"edge: {exc}; retrying in 2 s")
                    await asyncio.sleep(2.0)

    async def _restore(self) -> None:
        """After a (re)start: what Kamailio must know that is not in its files."""
        if self.draining:
            await self.set_draining(True)
        for worker in list(self.down):
            await self.set_worker(worker, False)

    async def stop(self) -> None:
        """Stop Kamailio and every process it forked."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S)
        if proc is not None:
            await self._kill(proc)
        for task in (self._watch, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()

    # -- control ------------------------------------------------------------------------------
    async def rpc(self, method: str, *params: Any, timeout: float = 2.0) -> Any:
        """One JSON-RPC call; returns its result, EdgeError for an error answer."""
        client = self.plan.run_dir / f"rpc-{os.getpid()}-{next(_counter)}.sock"
        request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(client))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_sendto(sock, json.dumps(request).encode(), str(self.plan.rpc_socket))
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
        finally:
            sock.close()
            client.unlink(missing_ok=True)
        answer = json.loads(data)
        if "error" in answer:
            raise EdgeError(f"kamailio {method}: {answer['error'].get('message', answer['error'])}")
        return answer.get("result")

    async def set_worker(self, worker: str, up: bool) -> None:
        """Route new calls to worker ``host:port`` again (up) or not any more (down); when
        down, Kamailio keeps probing it and takes it back once it answers."""
        if up:
            self.down.discard(worker)
        else:
            self.down.add(worker)
        state = "a" if up else "ip"
        try:
            await self.rpc("dispatcher.set_state", state, WORKERS_SET, f"sip:{worker}")
        except (OSError, TimeoutError, EdgeError) as exc:
            log.warning("edge: cannot mark worker %s %s: %s", worker, "up" if up else "down", exc)

    async def set_draining(self, draining: bool) -> None:
        """New calls and OPTIONS pings get 503 + Retry-After (draining) or are taken."""
        self.draining = draining
        try:
            await self.rpc("htable.seti", "edge", "draining", 1 if draining else 0)
        except (OSError, TimeoutError, EdgeError) as exc:
            log.warning("edge: cannot set draining=%s: %s", draining, exc)

    async def workers(self) -> list[dict[str, Any]]:
        """Kamailio's view of the workers (dispatcher.list)."""
        result = await self.rpc("dispatcher.list")
        sets = result.get("RECORDS", []) if isinstance(result, dict) else []
        out: list[dict[str, Any]] = []
        for entry in sets:
            for target in entry.get("SET", {}).get("TARGETS", []):
                dest = target.get("DEST", {})
                out.append({"uri": dest.get("URI"), "flags": dest.get("FLAGS")})
        return out


def edge_run_dir(base: Path | None = None) -> Path:
    """A fresh directory for Kamailio's files and sockets."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="sipagent-edge-", dir=base))
