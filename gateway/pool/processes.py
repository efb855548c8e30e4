"""The pool's worker processes, as the supervisor sees them: spawn one (`python -m
gateway.pool.child`, configured over its control socket), read its messages, give it a
worker's ports once its providers are loaded, watch it, restart a worker that dies, keep a
loaded spare, and stop them all.  (What runs inside such a process is
`gateway.pool.child` and `gateway.pool.worker`.)

What a message *means* (the pool's state, the call records, answers to requests) is the
supervisor's business: `WorkerProcesses` hands every message to `Pool.handle` and every lost
worker to `Pool.worker_gone`.  Restarts: the spare takes a dead worker's ports at once,
whatever the crash rate; only spawning fresh processes backs off when they keep dying.

Everything here runs on the supervisor's event loop (the main thread of ``sipagent
serve``); the background tasks (readers, watchers, restarts) are owned by the pool
(`Pool.own`) and cancelled when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.pool import protocol
from gateway.pool.edge_plan import behind_edge
from gateway.pool.plan import WorkerPlan
from gateway.pool.protocol import Command, Configure, Drain, Start, Stop
from gateway.pool.state import PoolState
from sip_config import Settings

log = logging.getLogger("sipagent.pool")

_START_TIMEOUT_S = 120.0  # loading offline models on a busy machine
_STOP_TIMEOUT_S = 15.0
_SPARE = -1  # the backoff key of spare respawns


@dataclass
class Child:
    """One worker process (a spare until it is given an index)."""

    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    index: int | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    up: asyncio.Event = field(default_factory=asyncio.Event)
    error: str = ""
    # A registration reported before "up" (a fast registrar): applied once the worker is up.
    registration: tuple[bool, str] | None = None
    started_at: float = field(default_factory=time.monotonic)
    reading: asyncio.Task[None] | None = None

    async def drained(self) -> None:
        """Wait (briefly) until every message the process sent has been handled."""
        if self.reading is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.reading), 2.0)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


class Pool(Protocol):
    """What the worker processes need of the supervisor that runs them."""

    # The settings each new process is configured with (read at every spawn: the
    # supervisor may complete them before the workers start).
    settings: Settings
    state: PoolState

    def say(self, text: str) -> None:
        """A line for the operator."""

    def own(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the pool (cancelled when it stops)."""
        ...

    def handle(self, child: Child, msg: protocol.Message) -> None:
        """A message from ``child`` (on the loop, in the order it was sent)."""

    def worker_gone(self, index: int) -> None:
        """The process of worker ``index`` ended (its calls with it)."""


class WorkerProcesses:
    """Worker processes, by worker index, plus the spare; see the module docstring."""

    def __init__(self, pool: Pool, plans: list[WorkerPlan]) -> None:
        self.pool = pool
        self.plans = plans
        self.children: list[Child] = []
        self.by_index: dict[int, Child] = {}
        self.spare: Child | None = None
        self.stopping = False
        self.deaths: dict[int, list[float]] = {}

    async def start(self) -> None:
        """Start every worker (and the spare); raises RuntimeError if one cannot start."""
        fresh = [await self.spawn() for _ in self.plans]
        if self.pool.settings.pool.spare:
            self.spare = await self.spawn()
        results = await asyncio.gather(
            *(
                self._start_worker(child, plan.index)
                for child, plan in zip(fresh, self.plans, strict=True)
            )
        )
        errors = [f"worker {i}: {e}" for i, e in enumerate(results) if e is not None]
        if errors:
            raise RuntimeError("; ".join(errors))

    async def spawn(self) -> Child:
        """A new process, configured and loading its providers (no index yet)."""
        parent, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.pool.child",
                str(child_sock.fileno()),
                str(os.getpid()),
                pass_fds=(child_sock.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child_sock.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=protocol.MAX_LINE)
        child = Child(proc, reader, writer)
        self.children.append(child)
        await protocol.send(writer, Configure(self.pool.settings.model_dump(mode="json")))
        child.reading = self.pool.own(self.read(child))
        self.pool.own(self._watch(child))
        return child

    async def read(self, child: Child) -> None:
        """Hand ``child``'s messages to the pool until its control socket closes."""
        while True:
            try:
                msg = await protocol.receive(child.reader)
            except ValueError as exc:  # the line is consumed: read on
                log.error("worker pid %d: bad control message: %s", child.pid, exc)
                continue
            except ConnectionError as exc:
                # The worker is gone (e.g. reset: it died with unread commands). Reading on
                # would raise again at once, without yielding: the loop would spin forever.
                log.warning("worker pid %d: control socket lost: %s", child.pid, exc)
                return
            if msg is None:
                return
            try:
                self.pool.handle(child, msg)
            except Exception:
                log.exception("worker pid %d: cannot handle %s", child.pid, msg.TYPE)

    async def send(self, child: Child, message: Command) -> None:
        """Send ``message`` to ``child``; nothing when it is gone."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await protocol.send(child.writer, message)

    async def _watch(self, child: Child) -> None:
        code = await child.proc.wait()
        with contextlib.suppress(Exception):
            child.writer.close()
        if child in self.children:
            self.children.remove(child)
        if self.spare is child:
            self.spare = None
        index = child.index
        if index is not None and self.by_index.get(index) is child:
            del self.by_index[index]
            self.pool.worker_gone(index)
        if self.stopping:
            return
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        if index is None:
            log.warning("spare worker pid %d ended (%s)", child.pid, how)
            self.pool.own(self._replace_spare(delay=self._backoff(_SPARE)))
            return
        if not child.up.is_set():
            # It never came up: the start failure is reported by _start_worker.
            return
        self.pool.say(f"worker {index} (pid {child.pid}) died ({how}); restarting it")
        self.pool.own(self._restart(index))

    def _backoff(self, key: int) -> float:
        """Delay before restarting ``key`` again: none for the first death in a minute,
        then doubling up to 30 s, so a crash loop cannot spin the machine."""
        now = time.monotonic()
        recent = [t for t in self.deaths.get(key, []) if now - t < 60.0]
        recent.append(now)
        self.deaths[key] = recent
        return 0.0 if len(recent) <= 2 else min(30.0, 0.5 * 2 ** (len(recent) - 2))

    async def _replace_spare(self, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.stopping or not self.pool.settings.pool.spare or self.spare is not None:
            return
        self.spare = await self.spawn()

    async def _restart(self, index: int) -> None:
        """Put worker ``index`` back: the spare takes its ports at once (it has its models
        loaded); the crash-loop backoff delays only spawning processes, the replacement
        spare or, with no spare, the worker itself."""
        while not self.stopping:
            child = self.spare
            if child is not None:
                self.spare = None
                self.pool.own(self._replace_spare(delay=self._backoff(_SPARE)))
            else:
                delay = self._backoff(index)
                if delay:
                    log.warning("worker %d died repeatedly; restarting in %.1f s", index, delay)
                    await asyncio.sleep(delay)
                    if self.stopping:
                        return
                    if self.spare is not None:
                        continue  # a spare came up meanwhile: it is quicker
                child = await self.spawn()
            error = await self._start_worker(child, index)
            if error is None:
                return
            log.error("worker %d failed to restart: %s; retrying in 1 s", index, error)
            await asyncio.sleep(1.0)

    async def _start_worker(self, child: Child, index: int) -> str | None:
        """Give ``child`` the addresses of worker ``index``; None once it is up, else why
        it is not."""
        waiter = asyncio.ensure_future(child.loaded.wait())
        died = asyncio.ensure_future(child.proc.wait())
        try:
            await asyncio.wait(
                {waiter, died}, timeout=_START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not child.loaded.is_set():
                await child.drained()
                return (
                    child.error or "worker process ended while loading"
                    if died.done()
                    else "timed out loading"
                )
            plan = self.plans[index]
            child.index = index
            self.by_index[index] = child
            start = Start(
                index,
                plan.sip_port,
                plan.rtp_port_start,
                plan.rtp_port_range,
                edge=behind_edge(self.pool.settings, plan) if plan.kind == "sip" else None,
                kind=plan.kind,
            )
            await protocol.send(child.writer, start)
            up = asyncio.ensure_future(child.up.wait())
            try:
                await asyncio.wait({up, died}, timeout=30.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
            if child.up.is_set():
                if self.pool.state.draining:
                    await self.send(child, Drain())
                return None
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.drained()
            return child.error or "worker process ended while starting"
        except ConnectionError as exc:
            return f"lost the worker's control socket: {exc}"
        finally:
            waiter.cancel()
            died.cancel()

    async def stop(self) -> None:
        """Stop every process (calls still up are hung up) and wait for them; from now on
        none is restarted."""
        self.stopping = True
        for child in list(self.children):
            await self.send(child, Stop())
        for child in list(self.children):
            try:
                await asyncio.wait_for(child.proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("worker pid %d did not stop; killing it", child.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
