"""`sipagent serve`: a pool of worker processes plus the answer_url app.

One pjsua2 process holds at most 4 calls and can be aborted by an INVITE flood (DESIGN.md),
so calls are spread over worker processes (`gateway.pool.child`), each with its own SIP
port and RTP port range.  The supervisor:

* starts the workers and one loaded spare, and restarts a worker that dies by handing its
  port to the spare at once, whatever the crash rate (a fresh spare is then loaded in the
  background; only that respawn backs off when processes keep dying);
* keeps `PoolState` up to date from the workers' reports, which the answer_url app reads to
  route each call to a worker with a free slot;
* records each worker's calls in the call-record store;
* on SIGTERM, SIGINT or SIGQUIT drains: no new calls are routed or accepted, calls in
  progress may finish for ``pool.drain_timeout_s``, then the workers stop and the
  supervisor exits 0.  A second signal stops at once (calls are hung up).  Workers ignore
  these signals, so signalling the whole process group (systemd, a terminal) drains the
  same way; they die with the supervisor whatever kills it (see `gateway.pool.child`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar

from gateway.edge.config import EdgePlan
from gateway.edge.process import Edge, EdgeError, edge_run_dir, find_kamailio
from gateway.pool import protocol
from gateway.pool.outcomes import (
    DialOutcome,
    DialStatus,
    PlaceCall,
    PushOutcome,
    PushReply,
    PushStatus,
)
from gateway.pool.protocol import (
    BehindEdge,
    CallEnded,
    CallStarted,
    Command,
    Configure,
    DialResult,
    Drain,
    Failed,
    LegChanged,
    Loaded,
    PushResult,
    RegistrationChanged,
    Start,
    Stop,
    TurnRecorded,
    Up,
)
from gateway.pool.state import PoolState
from gateway.providers.registry import loads_models
from gateway.records.model import SipCallEnd
from gateway.records.store import CallRecords
from gateway.sip.digest import inbound_credentials
from sip_config import ConfigError, Settings

log = logging.getLogger("sipagent.pool")

_START_TIMEOUT_S = 120.0  # loading offline models on a busy machine
_STOP_TIMEOUT_S = 15.0
_PUSH_TIMEOUT_S = 3.0  # a worker answers a pushed reply at once (rendering happens later)
_DIAL_TIMEOUT_S = 5.0  # a worker answers "dial" once its INVITE is sent
# Workers of a gateway killed a moment ago exit within 0.5 s of it (PR_SET_PDEATHSIG);
# a restart waits this long for their SIP ports.
_PORT_WAIT_S = 5.0
_SPARE = -1  # the backoff key of spare respawns

_T = TypeVar("_T")


class AppServer(Protocol):
    """The answer_url app's server, as the pool runs it."""

    def close(self) -> None:
        """Stop serving."""


class StartApp(Protocol):
    """Starts the answer_url app (`xml_app.pool_app.start_pool_app`): the pool's state to
    route by, its records, its requests (pushed replies, outbound calls), and the
    operator's output.  Returns the server and the app's URL, or None when the app's
    settings leave it off (said on ``say``); ConfigError when it cannot listen."""

    def __call__(
        self,
        settings: Settings,
        pool: PoolState,
        records: CallRecords,
        push: PushReply,
        dial: PlaceCall,
        say: Callable[[str], None],
    ) -> tuple[AppServer, str] | None: ...


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

    @property
    def address(self) -> str:
        """host:port of its SIP transport."""
        return f"{self.sip_host}:{self.sip_port}"


_LOOPBACK_OR_ANY = ("127.0.0.1", "0.0.0.0", "localhost", "")


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
    if edge.listen_host in _LOOPBACK_OR_ANY:
        ports = {edge.listen_port} | ({edge.tls_port} if edge.tls_cert else set())
        for port in sorted(ports):
            if base <= port < base + workers:
                raise ConfigError(
                    f"edge.worker_port: the workers' ports {base}-{base + workers - 1} on"
                    f" 127.0.0.1 hold the edge's port {port}; move edge.worker_port"
                )


@dataclass
class _Child:
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


class Supervisor:
    """Runs the worker pool; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        *,
        records: CallRecords | None = None,
        out: IO[str] | None = None,
    ) -> None:
        self.settings = settings
        self.plans = plan_workers(settings, workers)
        self.state = PoolState(
            len(self.plans), settings.sip.max_calls, reserve_s=settings.pool.reserve_s
        )
        self.records = records
        self.out = out if out is not None else sys.stderr
        self.children: list[_Child] = []
        self.by_index: dict[int, _Child] = {}
        self.spare: _Child | None = None
        self.stopping = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.deaths: dict[int, list[float]] = {}
        self.registers = settings.sip.mode == "register"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.edge: Edge | None = None
        self._requests: dict[int, asyncio.Future[PushResult | DialResult]] = {}
        self._last_request = 0

    # -- output ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A line for the operator (stderr), prefixed like the rest of sipagent's output."""
        print(f"sipagent: {text}", file=self.out, flush=True)

    # -- children -------------------------------------------------------------------------
    async def _spawn(self) -> _Child:
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
        child = _Child(proc, reader, writer)
        self.children.append(child)
        await protocol.send(writer, Configure(self.settings.model_dump(mode="json")))
        child.reading = self._own(self._read(child))
        self._own(self._watch(child))
        return child

    def own(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the pool (cancelled by `stop`)."""
        return self._own(coro)

    def _own(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _read(self, child: _Child) -> None:
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
                self._handle(child, msg)
            except Exception:
                log.exception("worker pid %d: cannot handle %s", child.pid, msg.TYPE)

    def _handle(self, child: _Child, msg: protocol.Message) -> None:
        index = child.index
        match msg:
            case Loaded():
                child.loaded.set()
                if child is self.spare:
                    self.say(f"spare worker (pid {child.pid}) loaded, ready to take over")
            case Failed():
                child.error = msg.message or "worker failed"
            case Up() if index is not None:
                self._worker_up(child, index, msg)
            case RegistrationChanged() if index is not None:
                child.registration = (msg.registered, msg.status)
                if child.up.is_set():
                    self.state.set_registration(index, msg.registered, msg.status)
            case CallStarted() if index is not None:
                start = msg.record
                self.state.call_started(index, start.sip_call_id, start.call_uuid)
                self._record("sip_call_started", lambda r: r.sip_call_started(start, index))
            case LegChanged() if index is not None:
                self.state.leg_changed(index, msg.sip_call_id, msg.up)
            case TurnRecorded() if index is not None:
                self._record("call_turn", lambda r: r.call_turn(msg.record))
            case PushResult() | DialResult():
                waiter = self._requests.get(msg.request_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg)
            case CallEnded() if index is not None:
                end = msg.record
                self.state.call_ended(index, end.sip_call_id)
                if end.call_uuid:
                    # An outbound call that was never answered still holds its reservation.
                    self.state.release(end.call_uuid)
                self._record_end(end, index)
            case Up() | RegistrationChanged() | CallStarted() | CallEnded() | TurnRecorded():
                pass  # from a process not (yet) given an index: nothing to update
            case LegChanged():
                pass  # likewise
            case _:  # a command: the worker side's bug
                log.error("worker pid %d: unexpected control message %s", child.pid, msg.TYPE)

    def _worker_up(self, child: _Child, index: int, msg: Up) -> None:
        uri = msg.uri
        if self.settings.edge.enabled:
            uri = self.edge_uri()  # calls reach every worker through the edge
        if self.edge is not None:
            self._own(self.edge.set_worker(self.plans[index].address, True))
        self.state.worker_up(index, child.pid, uri, self.registers)
        if child.registration is not None:
            self.state.set_registration(index, *child.registration)
        child.up.set()
        self.say(
            f"worker {index} (pid {child.pid}) listening on udp {self._host()}:{msg.port} as {uri}"
        )

    def _record_end(self, end: SipCallEnd, index: int) -> None:
        self._record("sip_call_ended", lambda r: r.sip_call_ended(end, index))

    def _record(self, what: str, write: Callable[[CallRecords], None]) -> None:
        if self.records is None:
            return
        try:
            write(self.records)
        except Exception:
            log.exception("call records: %s failed", what)

    async def _watch(self, child: _Child) -> None:
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
            if self.edge is not None and not self.stopping:
                self._own(self.edge.set_worker(self.plans[index].address, False))
            lost = self.state.worker_down(index)
            for sip_call_id in lost:
                self._record_end(SipCallEnd(sip_call_id, None, "worker died", time.time()), index)
        if self.stopping:
            return
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        if index is None:
            log.warning("spare worker pid %d ended (%s)", child.pid, how)
            self._own(self._replace_spare(delay=self._backoff(_SPARE)))
            return
        if not child.up.is_set():
            # It never came up: the start failure is reported by _start_worker.
            return
        self.say(f"worker {index} (pid {child.pid}) died ({how}); restarting it")
        self._own(self._restart(index))

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
        if self.stopping or not self.settings.pool.spare or self.spare is not None:
            return
        self.spare = await self._spawn()

    async def _restart(self, index: int) -> None:
        """Put worker ``index`` back: the spare takes its ports at once (it has its models
        loaded); the crash-loop backoff delays only spawning processes, the replacement
        spare or, with no spare, the worker itself."""
        while not self.stopping:
            child = self.spare
            if child is not None:
                self.spare = None
                self._own(self._replace_spare(delay=self._backoff(_SPARE)))
            else:
                delay = self._backoff(index)
                if delay:
                    log.warning("worker %d died repeatedly; restarting in %.1f s", index, delay)
                    await asyncio.sleep(delay)
                    if self.stopping:
                        return
                    if self.spare is not None:
                        continue  # a spare came up meanwhile: it is quicker
                child = await self._spawn()
            error = await self._start_worker(child, index)
            if error is None:
                return
            log.error("worker %d failed to restart: %s; retrying in 1 s", index, error)
            await asyncio.sleep(1.0)

    async def _start_worker(self, child: _Child, index: int) -> str | None:
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
                edge=self._behind_edge(plan),
            )
            await protocol.send(child.writer, start)
            up = asyncio.ensure_future(child.up.wait())
            try:
                await asyncio.wait({up, died}, timeout=30.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
            if child.up.is_set():
                if self.state.draining:
                    await self._send(child, Drain())
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

    async def _send(self, child: _Child, message: Command) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await protocol.send(child.writer, message)

    def _host(self) -> str:
        if self.settings.edge.enabled:
            return self.plans[0].sip_host
        return self.settings.sip.public_host or self.settings.sip.listen_host

    def _behind_edge(self, plan: WorkerPlan) -> BehindEdge | None:
        """What a worker behind the edge is told (None: there is no edge)."""
        edge = self.settings.edge
        if not edge.enabled:
            return None
        sources = ["127.0.0.1/32"]
        if edge.listen_host not in _LOOPBACK_OR_ANY:
            sources.append(f"{edge.listen_host}/32")
        sip = self.settings.sip
        return BehindEdge(
            sip_host=plan.sip_host,
            allow_networks=tuple(sources),
            outbound_proxy=f"sip:127.0.0.1:{edge.listen_port};lr",
            # Signalling is on loopback behind the edge; media is not: callers send RTP
            # straight to the worker, on the edge's address unless told otherwise.
            media_host=sip.media_host or edge.listen_host,
            media_public_host=sip.media_public_host or edge.public_host or sip.public_host,
        )

    def edge_uri(self) -> str:
        """The SIP URI of the agent at the edge (what Plivo's Dial and trunks call)."""
        edge = self.settings.edge
        host = edge.public_host or edge.listen_host
        return f"sip:{self.settings.sip.user}@{host}:{edge.listen_port}"

    # -- requests to a worker (push, dial) ----------------------------------------------
    async def _ask(
        self, child: _Child, request: Callable[[int], Command], timeout: float
    ) -> PushResult | DialResult:
        """Send ``request(id)`` to a worker and wait for the result with that id; raises
        TimeoutError, ConnectionError or RuntimeError when there is none."""
        self._last_request += 1
        request_id = self._last_request
        waiter: asyncio.Future[PushResult | DialResult] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = waiter
        try:
            await protocol.send(child.writer, request(request_id))
            return await asyncio.wait_for(waiter, timeout)
        finally:
            self._requests.pop(request_id, None)

    # -- pushed bot replies ---------------------------------------------------------------
    async def push(self, key: str, payload: dict[str, Any]) -> PushOutcome:
        """Hand a reply the bot pushed to the worker holding call `key` (SIP Call-ID or
        CallUUID); the worker's outcome, or NO_CALL / UNAVAILABLE (it did not answer)."""
        found = self.state.find_call(key)
        child = self.by_index.get(found[0]) if found is not None else None
        if found is None or child is None or not child.up.is_set():
            return PushOutcome(PushStatus.NO_CALL, "no call with that id is in progress")
        sip_call_id = found[1]
        try:
            answer = await self._ask(
                child, lambda i: protocol.PushReply(i, sip_call_id, payload), _PUSH_TIMEOUT_S
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            answer = None
        if not isinstance(answer, PushResult):
            return PushOutcome(PushStatus.UNAVAILABLE, "the worker holding the call did not answer")
        return answer.outcome

    # -- outbound calls -------------------------------------------------------------------
    async def dial(self, call_id: str, uri: str, headers: dict[str, str]) -> DialOutcome:
        """Place an outbound call from a worker with a free slot (held for ``call_id`` in
        `PoolState` until the call starts or ends).  PLACED (with the SIP Call-ID) once the
        INVITE is sent; the outcome arrives later with the worker's `CallEnded`."""
        # Held while the callee's phone rings (the call counts once it is answered).
        hold = self.settings.outbound.ring_timeout_s + _DIAL_TIMEOUT_S
        target = self.state.reserve_for(call_id, hold)
        child = self.by_index.get(target.worker) if target is not None else None
        if target is None or child is None or not child.up.is_set():
            self.state.release(call_id)
            return DialOutcome(DialStatus.UNAVAILABLE, "no worker can place a call now")
        try:
            answer = await self._ask(
                child,
                lambda i: protocol.PlaceCall(i, call_id, uri, headers),
                _DIAL_TIMEOUT_S,
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            answer = None
        if not isinstance(answer, DialResult):
            self.state.release(call_id)
            return DialOutcome(DialStatus.UNAVAILABLE, "the worker did not answer")
        if answer.outcome.status is not DialStatus.PLACED:
            self.state.release(call_id)
        else:
            log.info("outbound call %s to %s placed by worker %d", call_id, uri, target.worker)
        return answer.outcome

    def dial_threadsafe(self, call_id: str, uri: str, headers: dict[str, str]) -> DialOutcome:
        """`dial` from another thread (the app's request threads)."""
        return self._from_thread(
            lambda: self.dial(call_id, uri, headers),
            _DIAL_TIMEOUT_S,
            lambda why: DialOutcome(DialStatus.UNAVAILABLE, why),
        )

    def push_threadsafe(self, key: str, payload: dict[str, Any]) -> PushOutcome:
        """`push` from another thread (the app's request threads)."""
        return self._from_thread(
            lambda: self.push(key, payload),
            _PUSH_TIMEOUT_S,
            lambda why: PushOutcome(PushStatus.UNAVAILABLE, why),
        )

    def _from_thread(
        self,
        request: Callable[[], Coroutine[Any, Any, _T]],
        timeout_s: float,
        unavailable: Callable[[str], _T],
    ) -> _T:
        """Run a pool request on the supervisor's loop from another thread; `unavailable`
        when the pool is not running or does not answer within `timeout_s` (plus a second)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return unavailable("the worker pool is not running")
        coro = request()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:
            coro.close()
            return unavailable("the worker pool is not running")
        try:
            return future.result(timeout_s + 1.0)
        except Exception:
            future.cancel()
            return unavailable("the worker pool did not answer")

    # -- life cycle -----------------------------------------------------------------------
    async def wait_for_ports(self, timeout_s: float = _PORT_WAIT_S) -> None:
        """Wait until every worker's SIP port is free (the workers of a gateway killed a
        moment ago hold them for up to half a second); RuntimeError naming the ports still
        taken after ``timeout_s``."""
        wanted = [(p.sip_host, p.sip_port) for p in self.plans]
        edge = self.settings.edge
        if edge.enabled:
            wanted.append((edge.listen_host, edge.listen_port))
        deadline = time.monotonic() + timeout_s
        while True:
            busy = [f"{h}:{p}" for h, p in wanted if _udp_port_taken(h, p)]
            if not busy:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(busy)
                raise RuntimeError(
                    f"cannot listen on udp {names}: in use by another process"
                    f" (waited {timeout_s:g} s for it to come free)"
                )
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        """Start every worker (and the spare); raises RuntimeError if one cannot start."""
        self.loop = asyncio.get_running_loop()
        fresh = [await self._spawn() for _ in self.plans]
        if self.settings.pool.spare:
            self.spare = await self._spawn()
        results = await asyncio.gather(
            *(
                self._start_worker(child, plan.index)
                for child, plan in zip(fresh, self.plans, strict=True)
            )
        )
        errors = [f"worker {i}: {e}" for i, e in enumerate(results) if e is not None]
        if errors:
            raise RuntimeError("; ".join(errors))

    async def drain(self, timeout_s: float) -> None:
        """Route and accept no new calls; wait up to ``timeout_s`` for calls to end."""
        self.state.start_draining()
        if self.edge is not None:
            await self.edge.set_draining(True)
        for child in list(self.by_index.values()):
            await self._send(child, Drain())
        calls = self.state.total_calls()
        self.say(
            f"draining: {calls} call(s) in progress, waiting up to {timeout_s:g} s"
            " (signal again to hang up now)"
        )
        deadline = time.monotonic() + timeout_s
        while self.state.total_calls() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        left = self.state.total_calls()
        if left:
            self.say(f"drain timeout: hanging up {left} call(s)")

    async def stop(self) -> None:
        """Stop every worker (calls still up are hung up) and wait for them."""
        self.stopping = True
        for child in list(self.children):
            await self._send(child, Stop())
        for child in list(self.children):
            try:
                await asyncio.wait_for(child.proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("worker pid %d did not stop; killing it", child.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _udp_port_taken(host: str, port: int) -> bool:
    """Whether binding UDP ``host:port`` fails because something holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _print_routing(sup: Supervisor, app_url: str | None) -> None:
    s = sup.settings
    snapshot = sup.state.snapshot()
    if sup.edge is not None:
        e = s.edge
        tls = f", tls {e.tls_port}" if e.tls_cert else ""
        sup.say(
            f"edge: {sup.edge.plan.uri} (udp, tcp{tls}) in front of"
            f" {len(sup.edge.plan.workers)} workers; Kamailio pid"
            f" {sup.edge.proc.pid if sup.edge.proc else '?'}"
        )
        sup.say(f"trunk origination URI: {sup.edge.plan.uri}")
        sup.say(f"Dial XML: <Dial><User>{sup.edge_uri()}</User></Dial>")
    elif s.sip.mode == "register":
        users = [f"sip:{a.username}@{s.registration.uri_domain}" for a in s.registration.accounts]
        xml = "".join(f"<User>{u}</User>" for u in users[: len(snapshot)])
        sup.say(f"Dial XML for the registered endpoints: <Dial>{xml}</Dial>")
    else:
        origin = ", ".join(f"sip:{sup._host()}:{p.sip_port}" for p in sup.plans)
        sup.say(f"trunk origination URIs (equal weight): {origin}")
        sup.say(f"Dial XML for one worker: <Dial><User>{snapshot[0]['uri']}</User></Dial>")
    if app_url:
        sup.say(f"answer_url: {app_url}/answer  hangup_url: {app_url}/hangup")
    t = s.transfer
    if t.method == "auto" and t.target and app_url and not s.plivo_transfer_ready():
        sup.say(
            "warning: calls the answer_url app routes (from Plivo) are transferred with REFER,"
            " which Plivo takes only on Zentrunk; set transfer.plivo_auth_id, app.auth_token"
            " and app.public_url for Plivo's REST transfer"
        )
    loopback_only = all(_is_loopback(n) for n in s.sip.allow_networks)
    if s.sip.allow_networks and loopback_only and s.sip.listen_host not in ("127.0.0.1", "::1"):
        sup.say(
            "warning: sip.allow_networks lets in loopback only, so INVITEs from Plivo or"
            " a trunk get 403; add their signalling ranges to sip.allow_networks"
        )


def _is_loopback(network: str) -> bool:
    return ipaddress.ip_network(network, strict=False).is_loopback


async def _serve(settings: Settings, workers: int, start_app: StartApp | None) -> int:
    from gateway.records.model import RecordsError

    loop = asyncio.get_running_loop()
    drain, stop = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        # The first signal drains; a second one (Ctrl-C twice) stops at once.
        (stop if drain.is_set() else drain).set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        loop.add_signal_handler(sig, on_signal)
    sup = Supervisor(settings, workers)  # checks the port plan first (ConfigError)
    kamailio = ""
    if settings.edge.enabled:
        try:
            kamailio = find_kamailio(settings.edge.kamailio)
        except EdgeError as exc:
            raise ConfigError(str(exc)) from None
    try:
        records = CallRecords.open(settings.records.url)
    except Exception as exc:
        # One line, and never the password of a postgresql:// URL (RecordsError has none).
        text = " ".join(str(exc).split()) if isinstance(exc, RecordsError) else repr(exc)
        raise ConfigError(f"records.url: {text.removeprefix('records: ')}") from None
    sup.records = records
    server: AppServer | None = None
    claimed = False
    try:
        try:
            await sup.wait_for_ports()
        except RuntimeError as exc:
            sup.say(f"cannot start: {exc}")
            return 1
        # The SIP ports are ours now, so a gateway that had them (same id) is gone: close
        # the calls it left open, before any call of ours is recorded.
        gateway_id = gateway_identity(settings)
        closed = records.claim_gateway(gateway_id, settings.records.lease_s)
        claimed = True
        if closed:
            sup.say(
                f"closed {closed} call record(s) left open by a gateway that stopped without"
                ' ending them ("gateway restarted")'
            )
        sup.own(_heartbeat(sup, records, settings.records.lease_s))
        app_url: str | None = None
        if settings.app.enabled and start_app is not None:
            # Before the workers: they are told the app's URL for the bot's pushed replies.
            started = start_app(
                settings, sup.state, records, sup.push_threadsafe, sup.dial_threadsafe, sup.say
            )
            if started is not None:
                server, app_url = started
        if app_url and settings.webhook.push_token and not settings.webhook.reply_url:
            webhook = settings.webhook.model_copy(
                update={"reply_url": f"{app_url}/bot/calls/{{call_id}}/reply"}
            )
            sup.settings = settings.model_copy(update={"webhook": webhook})
        try:
            await sup.start()
            if settings.edge.enabled:
                sup.edge = Edge(edge_plan(sup), kamailio, sup.say)
                await sup.edge.start()
        except (RuntimeError, OSError) as exc:
            sup.say(f"cannot start: {exc}")
            return 1
        _print_routing(sup, app_url)
        sup.say(
            f"ready: {len(sup.plans)} workers,"
            f" up to {len(sup.plans) * settings.sip.max_calls} calls"
        )
        waiters = {asyncio.ensure_future(drain.wait()), asyncio.ensure_future(stop.wait())}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if drain.is_set() and not stop.is_set():
            draining = asyncio.ensure_future(sup.drain(settings.pool.drain_timeout_s))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({draining, stopped}, return_when=asyncio.FIRST_COMPLETED)
            draining.cancel()
            stopped.cancel()
            if stop.is_set() and not draining.done():
                sup.say("second signal: hanging up the calls in progress now")
        return 0
    finally:
        await sup.stop()
        if sup.edge is not None:
            await sup.edge.stop()
            shutil.rmtree(sup.edge.plan.run_dir, ignore_errors=True)
        if server is not None:
            server.close()
        if claimed:
            with contextlib.suppress(Exception):
                records.release_gateway()
        records.close()
        sup.say("stopped")


def edge_plan(sup: Supervisor) -> EdgePlan:
    """What the edge's Kamailio is configured with, from the settings and the pool."""
    s = sup.settings
    e = s.edge
    extra: tuple[str, ...] = ()
    if e.listen_host not in _LOOPBACK_OR_ANY:
        # Workers reach the edge, and the edge its workers, over loopback.
        extra = (f"udp:127.0.0.1:{e.listen_port}",)
    return EdgePlan(
        listen_host=e.listen_host,
        listen_port=e.listen_port,
        run_dir=edge_run_dir(),
        workers=tuple([p.address for p in sup.plans] + list(e.workers)),
        allow_networks=tuple(s.sip.allow_networks),
        public_host=e.public_host,
        tls_port=e.tls_port if e.tls_cert else None,
        tls_cert=e.tls_cert.expanduser().absolute() if e.tls_cert else None,
        tls_key=e.tls_key.expanduser().absolute() if e.tls_key else None,
        max_message_bytes=e.max_message_bytes,
        requests_per_s_per_source=e.requests_per_s_per_source,
        new_calls_per_s=e.new_calls_per_s,
        extra_listen=extra,
        inbound_auth=inbound_credentials(s),
        auth_secret=secrets.token_hex(16),
    )


def gateway_identity(settings: Settings) -> str:
    """This gateway's id in the call records: ``records.gateway_id``, else
    ``<hostname>:<first SIP port>`` (two gateways cannot hold one host's port at once)."""
    return settings.records.gateway_id or f"{socket.gethostname()}:{settings.sip.listen_port}"


async def _heartbeat(sup: Supervisor, records: CallRecords, lease_s: float) -> None:
    """Renew this gateway's lease in the records every third of it, and close the calls of
    gateways whose lease ran out (one that died while this one runs)."""
    while True:
        await asyncio.sleep(lease_s / 3)
        try:
            closed = await asyncio.to_thread(records.heartbeat)
        except Exception as exc:
            log.warning("call records: lease not renewed: %s", exc)
            continue
        if closed:
            sup.say(f"closed {closed} call record(s) of a gateway whose lease ran out")


def run_supervisor(
    settings: Settings, workers: int | None = None, start_app: StartApp | None = None
) -> int:
    """Run the pool, with the answer_url app that ``start_app`` starts (when ``app.enabled``),
    until SIGTERM (drain) or SIGINT; returns the exit status."""
    n = workers if workers is not None else (settings.pool.workers or auto_workers(settings))
    return asyncio.run(_serve(settings, n, start_app))
