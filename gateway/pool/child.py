"""A worker process of the pool: `python -m gateway.pool.child FD SUPERVISOR_PID`.

It receives its settings over the control socket ``FD`` (`gateway.pool.protocol`), loads
the providers (which can take seconds with the offline models), reports `Loaded` and waits
for `Start`.  The
supervisor keeps one such loaded process as a spare, so a worker that dies is replaced by
a process that only has to open its SIP port.

Signals: the supervisor alone decides when a worker drains or stops (`Drain`, `Stop` on
the control socket), so SIGTERM, SIGINT and SIGQUIT are ignored here: when a service
manager or a terminal signals the whole process group, the pool drains exactly as when
only the supervisor is signalled.  The kernel sends SIGHUP when the supervisor dies,
whatever killed it (``PR_SET_PDEATHSIG``); the worker then hangs up its calls and exits
within half a second, so a new ``sipagent serve`` can take its ports at once.  End of
file on the control socket means the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

# Only light modules here: `main` must ignore the group's signals before the heavy imports
# (pjsua2, the providers, ~1 s), or a SIGTERM to the process group in that window kills a
# spare that is still starting. The rest is imported in `_run`.
from gateway.pool import protocol
from gateway.pool.outcomes import DialOutcome, DialStatus
from gateway.pool.protocol import (
    CallActivity,
    CallEnded,
    CallStarted,
    Command,
    Configure,
    DialResult,
    Drain,
    Failed,
    LegChanged,
    Loaded,
    PlaceCall,
    PushReply,
    PushResult,
    RegistrationChanged,
    Report,
    Start,
    Stop,
    Tallied,
    TurnRecorded,
    Up,
    VendorErrors,
)
from gateway.tally import TALLY, TallyDelta

if TYPE_CHECKING:
    from gateway.pipeline.activity import Activity
    from gateway.pipeline.session import Prompts
    from gateway.pool.worker import AgentWorker
    from gateway.providers.registry import Providers
    from gateway.records.model import CallTurn, SipCallEnd, SipCallStart
    from sip_config import Settings

log = logging.getLogger("sipagent.worker")

_PR_SET_PDEATHSIG = 1
# How often what the worker counted (`gateway.tally`) goes to the supervisor, when
# something was counted.
TALLY_INTERVAL_S = 2.0
# An orphaned worker sends its BYEs, then exits this much later whatever it is doing.
ORPHAN_EXIT_S = 0.2


class _Orphan:
    """What the worker does when its supervisor is gone."""

    def __init__(self) -> None:
        self.worker: AgentWorker | None = None
        self.gone = False

    def __call__(self, *_: object) -> None:
        if self.gone:
            return
        self.gone = True
        worker = self.worker
        if worker is not None:
            # BYE to every caller; nobody is left to record or route for this process.
            worker.ua.hangup_all("supervisor gone")
        # A timer thread, not the event loop: exit even when the loop is busy or stuck.
        threading.Timer(ORPHAN_EXIT_S if worker is not None else 0.0, os._exit, (0,)).start()


def _die_with(supervisor: int, orphan: _Orphan) -> None:
    """Have the kernel send SIGHUP when the supervisor dies; if it died already, go now."""
    signal.signal(signal.SIGHUP, orphan)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)
    if supervisor and os.getppid() != supervisor:
        orphan()


def _setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def worker_settings(settings: Settings, start: Start) -> Settings:
    """The settings of the worker ``start`` makes: its own SIP port and RTP port range;
    behind the edge, a loopback address that takes requests from the edge only, and the
    calls it places go out through the edge."""
    update: dict[str, Any] = {
        "listen_port": start.sip_port,
        "rtp_port_start": start.rtp_port_start,
        "rtp_port_range": start.rtp_port_range,
    }
    edge = start.edge
    if edge is not None:
        from sip_config import InboundAuthSettings

        update.update(
            listen_host=edge.sip_host,
            public_host=None,
            media_host=edge.media_host,
            media_public_host=edge.media_public_host,
            allow_networks=list(edge.allow_networks),
            outbound_proxy=edge.outbound_proxy,
            # The edge checks the callers' credentials (sip.inbound_auth); workers do not.
            inbound_auth=InboundAuthSettings(),
        )
    sip = settings.sip.model_copy(update=update)
    return settings.model_copy(update={"sip": sip})


class _Reporter:
    """Sends call and registration events, and what the process counted, to the
    supervisor (on the worker's loop)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.tasks: set[asyncio.Task[None]] = set()
        self._tallying: asyncio.Task[None] | None = None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task this reporter keeps alive until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send(self, message: Report) -> None:
        """Send ``message`` from a task (the caller does not wait)."""
        self.spawn(_send(self.writer, message))

    def call_started(self, start: SipCallStart) -> None:
        """Report a call that started."""
        self.send(CallStarted(start))

    def call_ended(self, end: SipCallEnd) -> None:
        """Report a call that ended (after what was counted so far: its vendor errors are
        in the metrics by the time its end is)."""
        self.send_tally()
        self.send(CallEnded(end))

    def turn_recorded(self, turn: CallTurn) -> None:
        """Report an agent turn, to be stored with the call."""
        self.send(TurnRecorded(turn))

    def activity_changed(self, sip_call_id: str, activity: Activity) -> None:
        """Report what the agent now does on a call."""
        self.send(CallActivity(sip_call_id, activity))

    def leg_changed(self, sip_call_id: str, up: bool) -> None:
        """Report a call slot taken or freed by a call without a conversation."""
        self.send(LegChanged(sip_call_id, up))

    def registration_changed(self, registered: bool, status: str) -> None:
        """Report the registration state."""
        self.send(RegistrationChanged(registered, status))

    def send_tally(self) -> None:
        """Send what the process counted since the last time, if anything."""
        delta = TALLY.take()
        if delta:
            self.send(tallied(delta))

    def start_tallying(self, interval_s: float = TALLY_INTERVAL_S) -> None:
        """Send what was counted every ``interval_s`` (until `stop_tallying`)."""

        async def every() -> None:
            while True:
                await asyncio.sleep(interval_s)
                self.send_tally()

        self._tallying = asyncio.get_running_loop().create_task(every())

    async def stop_tallying(self) -> None:
        """Stop the periodic sends, and send what is left."""
        task, self._tallying = self._tallying, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        delta = TALLY.take()
        if delta:
            await _send(self.writer, tallied(delta))


def tallied(delta: TallyDelta) -> Tallied:
    """``delta`` as the protocol's message."""
    return Tallied(
        vendor_errors=tuple(
            VendorErrors(vendor, kind, n)
            for (vendor, kind), n in sorted(delta.vendor_errors.items())
        ),
        failovers=dict(delta.failovers),
        streams_refused=dict(delta.streams_refused),
    )


async def _send(writer: asyncio.StreamWriter, message: Report) -> None:
    """Send ``message``; nothing when the supervisor is gone."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        await protocol.send(writer, message)


async def _run(fd: int, orphan: _Orphan) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=protocol.MAX_LINE)
    first = await _next_command(reader)
    if not isinstance(first, Configure):
        if first is not None:
            log.error("the first control message must be config, not %s", first.TYPE)
        return 2
    from gateway.pool.conversations import render_prompts
    from gateway.pool.worker import AgentWorker
    from gateway.providers.registry import build_providers
    from gateway.sip.endpoint import SipError
    from sip_config import Settings

    settings = Settings.model_validate(first.settings)
    _setup_logging(settings.log_level, "spare")
    providers = await asyncio.to_thread(build_providers, settings)
    worker: AgentWorker | None = None
    reporter: _Reporter | None = None
    try:
        # Rendered before "loaded": a spare that takes over must not spend time on it.
        prompts = await render_prompts(providers.tts, settings)
        await protocol.send(writer, Loaded())
        start = await _next_command(reader)
        if not isinstance(start, Start):
            return 0
        _setup_logging(settings.log_level, f"w{start.index}")
        reporter = _Reporter(writer)
        reporter.start_tallying()
        if start.kind == "stream":
            return await _run_stream(settings, providers, prompts, start, reader, reporter)
        worker = AgentWorker(
            worker_settings(settings, start),
            providers,
            account_index=start.index,
            listener=reporter,
        )
        worker.prompts = prompts
        orphan.worker = worker
        try:
            await worker.start()
        except SipError as exc:
            await protocol.send(writer, Failed(str(exc)))
            return 1
        await protocol.send(writer, Up(worker.ua.uri, worker.ua.port))
        while worker.ua.pj.alive:
            command = await _next_command(reader, poll_s=0.5)
            match command:
                case None:
                    orphan()  # end of file: the supervisor is gone
                    await asyncio.sleep(1.0)  # the exit timer ends the process meanwhile
                    break
                case Drain():
                    worker.ua.set_accepting(False)
                case PushReply():
                    outcome = worker.push(command.sip_call_id, command.payload)
                    await _send(writer, PushResult(command.request_id, outcome))
                case PlaceCall():
                    # Answered from a task: the INVITE goes out on the pj thread meanwhile,
                    # and the loop keeps reading commands.
                    reporter.spawn(_dial(worker, writer, command))
                case Stop():
                    break
                case Configure() | Start():
                    log.error("unexpected control message %s: ignored", command.TYPE)
                case _Idle():
                    pass
        return 0
    finally:
        if worker is not None:
            await worker.stop()
        if reporter is not None:
            await reporter.stop_tallying()
        await providers.close()
        with contextlib.suppress(Exception):
            writer.close()


async def _run_stream(
    settings: Settings,
    providers: Providers,
    prompts: Prompts,
    start: Start,
    reader: asyncio.StreamReader,
    reporter: _Reporter,
) -> int:
    """Be stream worker ``start.index`` (Plivo audio streams on ``start.sip_port``) until
    told to stop or the supervisor is gone; no pjsua2 is loaded. (Orphaned, it exits at
    once: its connections close with the process, and Plivo ends those calls.)"""
    from gateway.stream.server import StreamWorker

    logging.getLogger("websockets").setLevel(logging.WARNING)  # a line per connection
    writer = reporter.writer
    worker = StreamWorker(
        settings, providers, index=start.index, listener=reporter, port=start.sip_port
    )
    worker.prompts = prompts
    try:
        await worker.start()
    except OSError as exc:
        await protocol.send(writer, Failed(f"cannot listen on {worker.url}: {exc}"))
        return 1
    try:
        await protocol.send(writer, Up(worker.url, worker.port))
        while True:
            command = await _next_command(reader, poll_s=None)
            match command:
                case None:
                    break  # the supervisor is gone: end the streams (Plivo hangs up)
                case Drain():
                    worker.drain()
                case PushReply():
                    pushed = worker.push(command.sip_call_id, command.payload)
                    await _send(writer, PushResult(command.request_id, pushed))
                case PlaceCall():
                    refused = DialOutcome(
                        DialStatus.UNAVAILABLE, "a stream worker places no SIP calls"
                    )
                    await _send(writer, DialResult(command.request_id, refused))
                case Stop():
                    break
                case _:
                    log.error("unexpected control message %s: ignored", command.TYPE)
        return 0
    finally:
        await worker.stop()


async def _dial(worker: AgentWorker, writer: asyncio.StreamWriter, command: PlaceCall) -> None:
    """Place the call, answer `DialResult` once its INVITE is out."""
    outcome = await worker.dial(command.uri, command.headers, command.call_id or None)
    await _send(writer, DialResult(command.request_id, outcome))


class _Idle:
    """No control message within the poll interval."""

    TYPE = "idle"


_IDLE = _Idle()


async def _next_command(
    reader: asyncio.StreamReader, poll_s: float | None = None
) -> Command | _Idle | None:
    """The next control message; `_IDLE` after ``poll_s`` without one; None on end of file
    (or when the supervisor is gone).  A line that is not a message is logged and skipped."""
    while True:
        try:
            message = await asyncio.wait_for(protocol.receive(reader), poll_s)
        except TimeoutError:
            return _IDLE
        except ConnectionError:  # reset: the supervisor is gone, as at end of file
            return None
        except ValueError as exc:  # the line is consumed: read on
            log.error("bad control message: %s", exc)
            continue
        if message is None or isinstance(message, Command):
            return message
        log.error("unexpected control message %s: ignored", message.TYPE)


def main(argv: list[str] | None = None) -> int:
    """Entry point: the control socket's file descriptor and the supervisor's pid."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or not all(a.isdigit() for a in args):
        print("usage: python -m gateway.pool.child FD [SUPERVISOR_PID]", file=sys.stderr)
        return 2
    orphan = _Orphan()
    _die_with(int(args[1]) if len(args) == 2 else 0, orphan)
    return asyncio.run(_run(int(args[0]), orphan))


if __name__ == "__main__":
    sys.exit(main())
