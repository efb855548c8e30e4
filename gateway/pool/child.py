"""A worker process of the pool: `python -m gateway.pool.child FD SUPERVISOR_PID`.

It receives its settings over the control socket ``FD``, loads the providers (which can
take seconds with the offline models), reports ``loaded`` and waits for ``start``.  The
supervisor keeps one such loaded process as a spare, so a worker that dies is replaced by
a process that only has to open its SIP port.

Signals: the supervisor alone decides when a worker drains or stops (``drain``, ``stop``
on the control socket), so SIGTERM, SIGINT and SIGQUIT are ignored here: when a service
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
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

# Only light modules here: `main` must ignore the group's signals before the heavy imports
# (pjsua2, the providers, ~1 s), or a SIGTERM to the process group in that window kills a
# spare that is still starting. The rest is imported in `_run`.
from gateway.plivo.callcontext import record_key
from gateway.pool import protocol

if TYPE_CHECKING:
    from gateway.pipeline.session import TurnRecord
    from gateway.pool.worker import AgentWorker
    from gateway.sip.calls import CallHandle
    from sip_config import Settings

log = logging.getLogger("sipagent.worker")

_PR_SET_PDEATHSIG = 1
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


def worker_settings(settings: Settings, command: dict[str, Any]) -> Settings:
    """The settings of worker ``index``: its own SIP address and RTP port range; behind
    the edge, a loopback address that takes requests from the edge only, and the calls it
    places go out through the edge."""
    update: dict[str, Any] = {
        "listen_port": int(command["sip_port"]),
        "rtp_port_start": int(command["rtp_port_start"]),
        "rtp_port_range": int(command["rtp_port_range"]),
    }
    if "sip_host" in command:
        update["listen_host"] = str(command["sip_host"])
        update["public_host"] = None
    for key in ("media_host", "media_public_host"):
        if key in command:
            update[key] = command[key] and str(command[key])
    if "allow_networks" in command:
        update["allow_networks"] = [str(n) for n in command["allow_networks"]]
    if command.get("outbound_proxy"):
        update["outbound_proxy"] = str(command["outbound_proxy"])
    if command.get("inbound_auth") is False:
        from sip_config.settings import InboundAuthSettings

        update["inbound_auth"] = InboundAuthSettings()
    sip = settings.sip.model_copy(update=update)
    return settings.model_copy(update={"sip": sip})


class _Reporter:
    """Sends call and registration events to the supervisor (on the worker's loop)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task this reporter keeps alive until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _send(self, message: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._write(message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _write(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await protocol.send(self.writer, message)

    @staticmethod
    def _ids(handle: CallHandle) -> dict[str, Any]:
        if handle.outbound:
            return {"sip_call_id": handle.sip_call_id, "call_uuid": handle.ref}
        # Recorded under the app's id of a call it placed through Plivo, else the CallUUID.
        key = record_key(handle.context)
        return {"sip_call_id": handle.sip_call_id, "call_uuid": key or None}

    def call_started(self, handle: CallHandle) -> None:
        """Report a call that started."""
        self._send(
            {
                "event": "call_start",
                **self._ids(handle),
                # An outbound call's remote party is the callee.
                "from": handle.local_uri if handle.outbound else handle.remote_uri,
                "to": handle.remote_uri if handle.outbound else handle.local_uri,
                "direction": "outbound" if handle.outbound else "inbound",
                "recording": handle.recording or None,
                "headers": handle.context_headers(),
                "at": time.time(),
            }
        )

    def call_ended(self, handle: CallHandle) -> None:
        """Report a call that ended."""
        self._send(
            {
                "event": "call_end",
                **self._ids(handle),
                "reason": handle.end_reason,
                "outcome": handle.outcome or None,
                "at": time.time(),
            }
        )

    def turn_recorded(self, handle: CallHandle, rec: TurnRecord) -> None:
        """Report an agent turn, to be stored with the call."""
        self._send({"event": "turn", **self._ids(handle), "turn": rec.as_dict(), "at": time.time()})

    def leg_changed(self, handle: CallHandle, up: bool) -> None:
        """Report a call slot taken or freed by a call without a conversation."""
        self._send({"event": "leg", "sip_call_id": handle.sip_call_id, "up": up})

    def registration_changed(self, registered: bool, status: str) -> None:
        """Report the registration state."""
        self._send({"event": "reg", "registered": registered, "status": status})


async def _run(fd: int, orphan: _Orphan) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=protocol.MAX_LINE)
    first = await protocol.receive(reader)
    if first is None or first.get("cmd") != "config":
        return 2
    from gateway.pool.worker import AgentWorker, render_prompts
    from gateway.providers.registry import build_providers
    from gateway.sip.endpoint import SipError
    from sip_config import Settings

    settings = Settings.model_validate(first["settings"])
    _setup_logging(settings.log_level, "spare")
    providers = await asyncio.to_thread(build_providers, settings)
    worker: AgentWorker | None = None
    try:
        # Rendered before "loaded": a spare that takes over must not spend time on it.
        prompts = await render_prompts(providers.tts, settings)
        await protocol.send(writer, {"event": "loaded"})
        command = await _next_command(reader)
        if command is None or command.get("cmd") != "start":
            return 0
        index = int(command["index"])
        _setup_logging(settings.log_level, f"w{index}")
        reporter = _Reporter(writer)
        worker = AgentWorker(
            worker_settings(settings, command), providers, account_index=index, listener=reporter
        )
        worker.prompts = prompts
        orphan.worker = worker
        try:
            await worker.start()
        except SipError as exc:
            await protocol.send(writer, {"event": "error", "message": str(exc)})
            return 1
        await protocol.send(
            writer,
            {"event": "up", "uri": worker.ua.uri, "port": worker.ua.port},
        )
        while worker.ua.pj.alive:
            command = await _next_command(reader, poll_s=0.5)
            if command is None:
                orphan()  # end of file: the supervisor is gone
                await asyncio.sleep(1.0)  # the exit timer ends the process meanwhile
                break
            if command.get("cmd") == "drain":
                worker.ua.set_accepting(False)
            elif command.get("cmd") == "push":
                status, message = worker.push(
                    str(command.get("call_id", "")), command.get("payload")
                )
                await protocol.send(
                    writer,
                    {
                        "event": "push_result",
                        "id": command.get("id"),
                        "status": status,
                        "message": message,
                    },
                )
            elif command.get("cmd") == "dial":
                # Answered from a task: the INVITE goes out on the pj thread meanwhile,
                # and the loop keeps reading commands.
                reporter.spawn(_dial(worker, writer, command))
            elif command.get("cmd") == "stop":
                break
        return 0
    finally:
        if worker is not None:
            await worker.stop()
        await providers.close()
        with contextlib.suppress(Exception):
            writer.close()


async def _dial(worker: AgentWorker, writer: asyncio.StreamWriter, command: dict[str, Any]) -> None:
    """Handle ``dial``: place the call, answer ``dial_result`` (id, status, message,
    sip_call_id)."""
    raw = command.get("headers")
    headers = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    ref = command.get("call_id")
    status, message = await worker.dial(
        str(command.get("uri", "")), headers, str(ref) if ref else None
    )
    with contextlib.suppress(ConnectionError, RuntimeError):
        await protocol.send(
            writer,
            {
                "event": "dial_result",
                "id": command.get("id"),
                "status": status,
                "message": message,
                "sip_call_id": message if status == 201 else None,
            },
        )


async def _next_command(
    reader: asyncio.StreamReader, poll_s: float | None = None
) -> dict[str, Any] | None:
    """The next control message; ``{"cmd": "idle"}`` after ``poll_s`` without one; None
    on end of file."""
    try:
        return await asyncio.wait_for(protocol.receive(reader), poll_s)
    except TimeoutError:
        return {"cmd": "idle"}
    except ConnectionError:  # reset: the supervisor is gone, as at end of file
        return None


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
