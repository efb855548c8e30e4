"""`sipagent serve`: a pool of worker processes plus the answer_url app.

One pjsua2 process holds at most 4 calls and can be aborted by an INVITE flood (DESIGN.md),
so calls are spread over worker processes (`gateway.pool.child`), each with its own SIP
port and RTP port range.  The supervisor:

* starts the workers and one loaded spare, and restarts a worker that dies by handing its
  port to the spare at once, whatever the crash rate (a fresh spare is then loaded in the
  background; only that respawn backs off when processes keep dying);
* keeps `PoolState` up to date from the workers' reports, which the answer_url app reads to
  route each call to a worker with a free slot;
* records each worker's calls in the call-record store, and counts them in the pool's
  Prometheus metrics (`gateway.pool.metrics`, served by the app at ``/metrics``);
* on SIGTERM, SIGINT or SIGQUIT drains: no new calls are routed or accepted, calls in
  progress may finish for ``pool.drain_timeout_s``, then the workers stop and the
  supervisor exits 0.  A second signal stops at once (calls are hung up).  Workers ignore
  these signals, so signalling the whole process group (systemd, a terminal) drains the
  same way; they die with the supervisor whatever kills it (see `gateway.pool.child`).

This module is the coordinator: `Supervisor` owns the pool's state, its tasks, the records
and the edge, and handles every worker message; `run_supervisor` runs it with the app and
the signals.  The rooms around it: `gateway.pool.plan` (pool size, ports),
`gateway.pool.processes` (the processes: spawn, restart, spare, stop), `gateway.pool.relay`
(the app's pushed replies and outbound calls) and `gateway.pool.edge_plan` (the Kamailio
edge's plan).  All of it runs on one asyncio loop on the main thread (`asyncio.run` in
`run_supervisor`, signal handlers included); the answer_url app runs on waitress threads
and reaches the loop only through `PoolState` (locked) and the relay's ``*_threadsafe``
calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import IO, Any, Protocol

from gateway.edge.process import Edge, EdgeError, find_kamailio
from gateway.pool import protocol
from gateway.pool.edge_plan import edge_plan, edge_uri
from gateway.pool.metrics import PoolMetrics
from gateway.pool.outcomes import PlaceCall, PushReply
from gateway.pool.plan import auto_workers, plan_pool
from gateway.pool.processes import Child, WorkerProcesses
from gateway.pool.protocol import (
    CallActivity,
    CallEnded,
    CallStarted,
    DialResult,
    Drain,
    Failed,
    LegChanged,
    Loaded,
    PushResult,
    RegistrationChanged,
    Tallied,
    TurnRecorded,
    Up,
)
from gateway.pool.relay import Relay
from gateway.pool.state import LiveCall, PoolState
from gateway.records.model import SipCallEnd
from gateway.records.store import CallRecords
from gateway.stream.auth import new_secret
from sip_config import ConfigError, Settings

log = logging.getLogger("sipagent.pool")

# Workers of a gateway killed a moment ago exit within 0.5 s of it (PR_SET_PDEATHSIG);
# a restart waits this long for their SIP ports.
_PORT_WAIT_S = 5.0


class AppServer(Protocol):
    """The answer_url app's server, as the pool runs it."""

    def close(self) -> None:
        """Stop serving."""


class StartApp(Protocol):
    """Starts the answer_url app (`xml_app.pool_app.start_pool_app`): the pool's state to
    route by, its records, its requests (pushed replies, outbound calls), the operator's
    output, and the pool's metrics (served at ``/metrics``).  Returns the server and the
    app's URL, or None when the app's settings leave it off (said on ``say``);
    ConfigError when it cannot listen."""

    def __call__(
        self,
        settings: Settings,
        pool: PoolState,
        records: CallRecords,
        push: PushReply,
        dial: PlaceCall,
        say: Callable[[str], None],
        metrics: PoolMetrics,
    ) -> tuple[AppServer, str] | None: ...


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
        self.plans = plan_pool(settings, workers)
        self.sip_plans = [p for p in self.plans if p.kind == "sip"]
        self.state = PoolState(
            len(self.sip_plans),
            settings.sip.max_calls,
            stream_workers=len(self.plans) - len(self.sip_plans),
            stream_max_calls=settings.stream.max_calls,
            reserve_s=settings.pool.reserve_s,
        )
        self.records = records
        self.out = out if out is not None else sys.stderr
        self.tasks: set[asyncio.Task[Any]] = set()
        self.registers = settings.sip.mode == "register"
        self.metrics = PoolMetrics(self.state, registers=self.registers)
        self.edge: Edge | None = None
        self.workers = WorkerProcesses(self, self.plans)
        self.relay = Relay(self, self.workers)

    # -- output ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A line for the operator (stderr), prefixed like the rest of sipagent's output."""
        print(f"sipagent: {text}", file=self.out, flush=True)

    def own(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the pool (cancelled by `stop`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- the workers' messages ------------------------------------------------------------
    def handle(self, child: Child, msg: protocol.Message) -> None:
        """A message from ``child`` (`WorkerProcesses.read` calls this in the order they came)."""
        index = child.index
        match msg:
            case Loaded():
                child.loaded.set()
                if child is self.workers.spare:
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
                live = LiveCall(
                    start.sip_call_id,
                    start.call_uuid,
                    start.from_uri,
                    start.to_uri,
                    start.direction,
                    start.at,
                )
                self.state.call_started(index, start.sip_call_id, start.call_uuid, live)
                self.metrics.call_started(start)
                self._record("sip_call_started", lambda r: r.sip_call_started(start, index))
            case LegChanged() if index is not None:
                self.state.leg_changed(index, msg.sip_call_id, msg.up)
            case CallActivity() if index is not None:
                self.state.set_activity(index, msg.sip_call_id, msg.activity)
            case TurnRecorded() if index is not None:
                self.metrics.turn(msg.record)
                self._record("call_turn", lambda r: r.call_turn(msg.record))
            case Tallied():
                self.metrics.tallied(msg)
            case PushResult() | DialResult():
                self.relay.answer(msg)
            case CallEnded() if index is not None:
                end = msg.record
                self.state.call_ended(index, end.sip_call_id)
                if end.call_uuid:
                    # An outbound call that was never answered still holds its reservation.
                    self.state.release(end.call_uuid)
                self._call_ended(end, index)
            case Up() | RegistrationChanged() | CallStarted() | CallEnded() | TurnRecorded():
                pass  # from a process not (yet) given an index: nothing to update
            case LegChanged() | CallActivity():
                pass  # likewise
            case _:  # a command: the worker side's bug
                log.error("worker pid %d: unexpected control message %s", child.pid, msg.TYPE)

    def _worker_up(self, child: Child, index: int, msg: Up) -> None:
        if self.plans[index].kind == "stream":
            self.state.worker_up(index, child.pid, msg.uri, registers=False)
            child.up.set()
            self.say(f"stream worker {index} (pid {child.pid}) listening on {msg.uri}")
            return
        uri = msg.uri
        if self.settings.edge.enabled:
            uri = self.edge_uri()  # calls reach every worker through the edge
        if self.edge is not None:
            self.own(self.edge.set_worker(self.plans[index].address, True))
        self.state.worker_up(index, child.pid, uri, self.registers)
        if child.registration is not None:
            self.state.set_registration(index, *child.registration)
        child.up.set()
        self.say(
            f"worker {index} (pid {child.pid}) listening on udp {self._host()}:{msg.port} as {uri}"
        )

    def worker_gone(self, index: int) -> None:
        """Worker ``index``'s process ended: the edge stops sending it calls, the calls it
        held end (in the pool's state, the metrics and the records), and unless the pool
        is stopping it counts as a restart (the processes restart it)."""
        if self.edge is not None and not self.workers.stopping and index < len(self.sip_plans):
            self.own(self.edge.set_worker(self.plans[index].address, False))
        if not self.workers.stopping:
            self.metrics.worker_restarted(self.plans[index].kind)
        lost = self.state.worker_down(index)
        for sip_call_id in lost:
            self._call_ended(SipCallEnd(sip_call_id, None, "worker died", time.time()), index)

    def _call_ended(self, end: SipCallEnd, index: int) -> None:
        self.metrics.call_ended(end)
        self._record("sip_call_ended", lambda r: r.sip_call_ended(end, index))

    def _record(self, what: str, write: Callable[[CallRecords], None]) -> None:
        if self.records is None:
            return
        try:
            write(self.records)
        except Exception:
            log.exception("call records: %s failed", what)

    def _host(self) -> str:
        if self.settings.edge.enabled and self.sip_plans:
            return self.sip_plans[0].sip_host
        return self.settings.sip.public_host or self.settings.sip.listen_host

    def edge_uri(self) -> str:
        """The SIP URI of the agent at the edge (what Plivo's Dial and trunks call)."""
        return edge_uri(self.settings)

    # -- life cycle -----------------------------------------------------------------------
    async def wait_for_ports(self, timeout_s: float = _PORT_WAIT_S) -> None:
        """Wait until every worker's SIP port is free (the workers of a gateway killed a
        moment ago hold them for up to half a second); RuntimeError naming the ports still
        taken after ``timeout_s``."""
        wanted = [(p.sip_host, p.sip_port) for p in self.sip_plans]
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
        self.relay.loop = asyncio.get_running_loop()
        await self.workers.start()

    async def drain(self, timeout_s: float) -> None:
        """Route and accept no new calls; wait up to ``timeout_s`` for calls to end."""
        self.state.start_draining()
        if self.edge is not None:
            await self.edge.set_draining(True)
        for child in list(self.workers.by_index.values()):
            await self.workers.send(child, Drain())
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
        """Stop every worker (calls still up are hung up), wait for them, and cancel the
        pool's tasks."""
        await self.workers.stop()
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
    elif not sup.sip_plans:
        pass
    elif s.sip.mode == "register":
        users = [f"sip:{a.username}@{s.registration.uri_domain}" for a in s.registration.accounts]
        xml = "".join(f"<User>{u}</User>" for u in users[: len(snapshot)])
        sup.say(f"Dial XML for the registered endpoints: <Dial>{xml}</Dial>")
    else:
        origin = ", ".join(f"sip:{sup._host()}:{p.sip_port}" for p in sup.sip_plans)
        sup.say(f"trunk origination URIs (equal weight): {origin}")
        sup.say(f"Dial XML for one worker: <Dial><User>{snapshot[0]['uri']}</User></Dial>")
    if app_url:
        sup.say(f"answer_url: {app_url}/answer  hangup_url: {app_url}/hangup")
    if len(sup.plans) > len(sup.sip_plans):
        st = s.stream
        if st.url:
            where = st.url
        elif s.app.public_url:
            where = s.app.public_url.replace("http", "ws", 1) + "/stream"
        else:
            where = "the worker's own address (no TLS: set app.public_url or stream.url)"
        sup.say(f"Plivo audio streams (routing target 'stream'): the XML points Plivo at {where}")
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


def _capacity(sup: Supervisor) -> str:
    """What the pool holds: "2 SIP workers, up to 8 calls; 1 stream worker, up to 100
    streams"."""
    s = sup.settings
    sip_n, stream_n = len(sup.sip_plans), len(sup.plans) - len(sup.sip_plans)
    parts = []
    if sip_n:
        parts.append(f"{_count(sip_n, 'SIP worker')}, up to {sip_n * s.sip.max_calls} calls")
    if stream_n:
        limit = stream_n * s.stream.max_calls
        parts.append(f"{_count(stream_n, 'stream worker')}, up to {limit} streams")
    return "; ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


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
    if settings.pool.stream_workers and not (
        settings.stream.token_secret or settings.app.auth_token
    ):
        # The app and the stream workers share it (in the settings every worker gets).
        stream = settings.stream.model_copy(update={"token_secret": new_secret()})
        settings = settings.model_copy(update={"stream": stream})
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
            relay = sup.relay
            started = start_app(
                settings,
                sup.state,
                records,
                relay.push_threadsafe,
                relay.dial_threadsafe,
                sup.say,
                sup.metrics,
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
                sup.edge = Edge(edge_plan(sup.settings, sup.sip_plans), kamailio, sup.say)
                await sup.edge.start()
        except (RuntimeError, OSError) as exc:
            sup.say(f"cannot start: {exc}")
            return 1
        _print_routing(sup, app_url)
        sup.say(f"ready: {_capacity(sup)}")
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
