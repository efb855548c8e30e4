"""A worker process of the pool: `python -m gateway.pool.child FD`.

It receives its settings over the control socket ``FD``, loads the providers (which can
take seconds with the offline models), reports ``loaded`` and waits for ``start``.  The
supervisor keeps one such loaded process as a spare, so a worker that dies is replaced by
a process that only has to open its SIP port.  The process stops on ``stop``, on end of
file (the supervisor is gone) and on SIGTERM; SIGINT is left to the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from typing import Any

from gateway.callcontext import decode_call_context
from gateway.pipeline.session import TurnRecord
from gateway.pool import protocol
from gateway.providers.registry import Providers, build_providers
from gateway.sip.calls import CallHandle
from gateway.sip.endpoint import SipError
from gateway.worker import AgentWorker, render_prompts
from sip_config import Settings

log = logging.getLogger("sipagent.worker")


def _setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def worker_settings(settings: Settings, command: dict[str, Any]) -> Settings:
    """The settings of worker ``index``: its own SIP port and RTP port range."""
    sip = settings.sip.model_copy(
        update={
            "listen_port": int(command["sip_port"]),
            "rtp_port_start": int(command["rtp_port_start"]),
            "rtp_port_range": int(command["rtp_port_range"]),
        }
    )
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
        ctx = decode_call_context(handle.headers)
        return {"sip_call_id": handle.sip_call_id, "call_uuid": ctx.get("call_uuid")}

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


async def _run(fd: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=protocol.MAX_LINE)
    first = await protocol.receive(reader)
    if first is None or first.get("cmd") != "config":
        return 2
    settings = Settings.model_validate(first["settings"])
    _setup_logging(settings.log_level, "spare")
    providers: Providers = await asyncio.to_thread(build_providers, settings)
    worker: AgentWorker | None = None
    try:
        # Rendered before "loaded": a spare that takes over must not spend time on it.
        prompts = await render_prompts(providers.tts, settings)
        await protocol.send(writer, {"event": "loaded"})
        command = await _next_command(reader, stop)
        if command is None or command.get("cmd") != "start":
            return 0
        index = int(command["index"])
        _setup_logging(settings.log_level, f"w{index}")
        reporter = _Reporter(writer)
        worker = AgentWorker(
            worker_settings(settings, command), providers, account_index=index, listener=reporter
        )
        worker.prompts = prompts
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
            command = await _next_command(reader, stop, poll_s=0.5)
            if command is None:
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
    reader: asyncio.StreamReader, stop: asyncio.Event, poll_s: float | None = None
) -> dict[str, Any] | None:
    """The next control message; ``{"cmd": "idle"}`` after ``poll_s`` without one; None
    on end of file or SIGTERM."""
    read = asyncio.ensure_future(protocol.receive(reader))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {read, stopped}, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED
        )
        if read in done:
            return read.result()
        return None if stopped in done else {"cmd": "idle"}
    finally:
        stopped.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read


def main(argv: list[str] | None = None) -> int:
    """Entry point: the control socket's file descriptor is the only argument."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m gateway.pool.child FD", file=sys.stderr)
        return 2
    return asyncio.run(_run(int(args[0])))


if __name__ == "__main__":
    sys.exit(main())
