"""A stream worker: Plivo's audio-stream WebSockets in, one conversation per stream.

No pjsua2 and no 4-call cap: one asyncio loop holds the WebSocket server
(``websockets``), every stream's conversation (`gateway.pipeline.session.CallSession`),
and one `Pacer` that sends every stream's audio. Several stream workers share
``stream.listen_port`` (``SO_REUSEPORT``: the kernel spreads the connections).

A connection is let in only when the upgrade request carries a valid per-call token from
the answer_url app (``?call=…&token=…``) or Plivo's signature (`gateway.stream.auth`);
anything else is answered 401 before the WebSocket opens. The first message must be
Plivo's ``start`` within ``stream.start_timeout_s`` (naming the call the token was issued
for), else the connection is closed: no AI work is done for a connection until then.
A malformed message later is counted and skipped (never raised), so one bad peer costs
nothing to the other calls of the worker. A connection lost without a close frame keeps
its conversation ``stream.reconnect_grace_s`` for Plivo's retry (docs §4.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from gateway.pipeline.session import CallSession, Prompts
from gateway.plivo.callcontext import decode_call_context
from gateway.plivo.signature import (
    MAIN_SIGNATURE_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    SignatureVerifier,
)
from gateway.pool.conversations import (
    WorkerListener,
    activity_reporter,
    conversation_options,
    push_reply,
    render_prompts,
    start_recorder,
    turn_reporter,
)
from gateway.pool.outcomes import PushOutcome
from gateway.providers.registry import Providers
from gateway.records.model import SipCallEnd, SipCallStart
from gateway.records.recording import CallRecorder
from gateway.stream import auth, events
from gateway.stream.call import Pacer, StreamCall, StreamPlayout, stream_context
from gateway.tally import TALLY
from sip_config import Settings

log = logging.getLogger("sipagent.stream")

# How much a stream's pending writes may hold before its audio is held back (a peer that
# does not read): ~2 s of playAudio.
_WRITE_BACKLOG_BYTES = 64 * 1024
# How long a token's second connection waits for the first one to be seen gone.
_DROP_NOTICE_S = 1.0


class _Socket:
    """A stream's `Outbox` over its WebSocket: sends at once, from synchronous code (the
    pacer's tick, a barge-in's clear), and refuses when the peer stopped reading (its
    write buffer is past `_WRITE_BACKLOG_BYTES`)."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.refused = 0

    def send(self, message: str) -> bool:
        ws = self.ws
        transport = ws.transport
        if ws.state is not State.OPEN or transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > _WRITE_BACKLOG_BYTES:
            self.refused += 1
            return False
        # websockets' `send` waits only when the write buffer is past `write_limit`
        # (4 x the backlog allowed here) or the connection is closing, neither of which
        # holds now: it completes in one step, so it is run to completion here and the
        # messages keep their order without a task per message.
        coro = ws.send(message)
        try:
            coro.send(None)
        except StopIteration:
            return True
        except ConnectionClosed:
            return False
        # It would have waited: the connection is in no state to carry audio.
        coro.close()
        transport.abort()
        return False


class _Live:
    """A stream call in progress: it outlives a connection Plivo drops and reconnects."""

    def __init__(self, call: StreamCall, ws: ServerConnection) -> None:
        self.call = call
        self.ws = ws  # the connection in use
        # While waiting for Plivo's reconnect: resolved with the new connection.
        self.reattach: asyncio.Future[tuple[ServerConnection, events.Start]] | None = None
        # A Plivo-signed connection that takes over while the old one still looked open.
        self.pending: tuple[ServerConnection, events.Start] | None = None
        self.done = asyncio.Event()  # the conversation is over
        self.waiting = asyncio.Event()  # set while `reattach` waits


class StreamWorker:
    """Serves Plivo audio streams on ``stream.listen_host:listen_port``."""

    def __init__(
        self,
        settings: Settings,
        providers: Providers,
        *,
        index: int = 0,
        listener: WorkerListener | None = None,
        port: int | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.index = index
        self.listener = listener
        self.options = conversation_options(settings)
        self.port = settings.stream.listen_port if port is None else port
        self.prompts: Prompts | None = None
        self.pacer = Pacer()
        self.accepting = True
        self.live: dict[str, _Live] = {}  # by call id
        self.conversations: dict[str, CallSession] = {}
        self.calls_total = 0
        self.refused: dict[str, int] = {}
        # Held from the upgrade to the handler; a handshake that fails between the two
        # leaves nothing behind.
        self._grants: weakref.WeakKeyDictionary[ServerConnection, auth.StreamGrant] = (
            weakref.WeakKeyDictionary()
        )
        self._server: Server | None = None
        self._pacer_task: asyncio.Task[None] | None = None
        app = settings.app
        self._signatures = (
            SignatureVerifier(
                app.auth_token, nonce_ttl_s=app.nonce_ttl_s, main_token=app.main_auth_token
            )
            if app.auth_token
            else None
        )
        self._secret = settings.stream.token_secret or settings.app.auth_token
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Render the prompts, start the pacer and listen (raises OSError when the port
        cannot be bound)."""
        if self.prompts is None:
            self.prompts = await render_prompts(self.providers.tts, self.settings)
        self._pacer_task = asyncio.get_running_loop().create_task(self.pacer.run())
        self._server = await serve(
            self._handle,
            self.settings.stream.listen_host,
            self.port,
            reuse_port=True,
            process_request=self._authorize,
            max_size=events.MAX_MESSAGE_BYTES,
            max_queue=64,
            write_limit=4 * _WRITE_BACKLOG_BYTES,
            # Plivo's side is not documented to answer pings; the TCP connection and the
            # call's end are what end a stream.
            ping_interval=None,
            close_timeout=2,
            server_header="sipagent",
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        """ws://host:port/stream where this worker listens."""
        return f"ws://{self.settings.stream.listen_host}:{self.port}/stream"

    def drain(self) -> None:
        """Take no new streams (those in progress go on)."""
        self.accepting = False

    async def stop(self) -> None:
        """Close every stream (their conversations end) and stop listening."""
        self.accepting = False
        if self._server is not None:
            self._server.close(close_connections=False)
        for live in list(self.live.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(live.ws.close(1001, "gateway stopping"), 3)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self._pacer_task is not None:
            self._pacer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacer_task

    # -- the upgrade --------------------------------------------------------------------------
    def _refuse(self, reason: str, detail: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        TALLY.stream_refused(reason)
        log.warning("stream connection refused (%s): %s", reason, detail)

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        """Let the upgrade through with a grant, or answer it with an HTTP error."""
        peer = _peer(connection)
        parts = urlsplit(request.path)
        call, token = auth.query_call_token(parts.query)
        if not self.accepting and not self._awaiting_reconnect(call):
            # Draining: no new streams, but a call in progress may still get its dropped
            # stream back.
            self._refuse("draining", peer)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
        if token:
            verdict = auth.check_token(self._secret, call, token, time.time())
            if verdict == "expired" and self._awaiting_reconnect(call):
                self._grants[connection] = auth.StreamGrant("resume", call)
                return None
            if verdict == "ok":
                self._grants[connection] = auth.StreamGrant("token", call)
                return None
            self._refuse(f"{verdict}-token", f"{peer} call {call[:64]!r}")
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid stream token\n")
        verdict = self._check_signature(request)
        if verdict == "ok":
            self._grants[connection] = auth.StreamGrant("signature")
            return None
        self._refuse(verdict, f"{peer} {parts.path[:80]!r}")
        return connection.respond(HTTPStatus.UNAUTHORIZED, "not signed by Plivo\n")

    def _check_signature(self, request: Request) -> str:
        """``ok``, ``unsigned``, ``forged`` or ``replayed`` for Plivo's V3 signature of the
        upgrade (any of the URL forms Plivo may have signed; docs §4.1)."""
        if self._signatures is None:
            return "unsigned"
        # The URL Plivo requested is under stream.url or app.public_url (what the XML
        # named), or, with neither, the Host it connected to.
        host = request.headers.get("Host", "")
        bases = {self.settings.stream.url or "", self.settings.app.public_url or "", ""}
        urls = {u for b in bases for u in auth.signed_url_forms(b, host, request.path)}
        return self._signatures.check(
            "GET",
            sorted(urls),
            {},
            request.headers.get(SIGNATURE_HEADER),
            request.headers.get(NONCE_HEADER),
            request.headers.get(MAIN_SIGNATURE_HEADER),
        )

    # -- one stream ---------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        grant = self._grants.pop(ws, None)
        if grant is None:  # not through _authorize (cannot happen): refuse
            await ws.close(1008, "not authorised")
            return
        try:
            first = await asyncio.wait_for(ws.recv(), self.settings.stream.start_timeout_s)
            start = events.parse_event(first)
        except TimeoutError:
            self._refuse("no-start", _peer(ws))
            await ws.close(1008, "no start event")
            return
        except events.StreamProtocolError as exc:
            self._refuse("bad-start", f"{_peer(ws)}: {exc}")
            await ws.close(1008, "malformed start event")
            return
        except ConnectionClosed:
            return
        if not isinstance(start, events.Start):
            self._refuse("bad-start", f"{_peer(ws)}: first event is not start")
            await ws.close(1008, "the first event must be start")
            return
        if grant.how in ("token", "resume") and start.call_id != grant.call:
            self._refuse(
                "wrong-call", f"{_peer(ws)}: token for {grant.call}, start {start.call_id}"
            )
            await ws.close(1008, "the token is for another call")
            return
        if (start.encoding, start.sample_rate) not in events.ENCODINGS:
            self._refuse("format", f"{start.encoding}/{start.sample_rate}")
            await ws.close(1003, "audio must be audio/x-mulaw 8000 or audio/x-l16 8000")
            return
        live = self.live.get(start.call_id)
        if live is not None:
            await self._resume(live, ws, start, grant)
            return
        if grant.how == "resume":  # the call it was for ended meanwhile
            await ws.close(1008, "the call is over")
            return
        await self._converse(ws, start)

    def _awaiting_reconnect(self, call_id: str) -> bool:
        live = self.live.get(call_id)
        return live is not None and live.reattach is not None

    async def _resume(
        self, live: _Live, ws: ServerConnection, start: events.Start, grant: auth.StreamGrant
    ) -> None:
        """A second connection for a call in progress: Plivo retrying a dropped stream
        (docs/plivo-audio-streams.md §4.2, up to twice). It takes over the conversation
        when the old connection is gone, or when it is signed by Plivo (whose nonce is
        new: not a replay); a token alone cannot take a live stream from its socket (a
        leaked URL must not hijack a call)."""
        if live.reattach is None and grant.how != "signature":
            # Plivo may be quicker to retry than this loop to see the old connection go.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.waiting.wait(), _DROP_NOTICE_S)
        if live.reattach is None:
            if grant.how != "signature":
                self._refuse("in-use", f"{_peer(ws)}: call {live.call.call_id} is streaming")
                await ws.close(1008, "the call's stream is in use")
                return
            live.pending = (ws, start)
            transport = live.ws.transport
            if transport is not None:
                transport.abort()  # its reader ends, and the conversation takes `pending`
        elif not live.reattach.done():
            live.reattach.set_result((ws, start))
        else:
            await ws.close(1008, "the call's stream is in use")
            return
        # The connection is served by the conversation's own handler from now on; this
        # handler only keeps it open until that ends.
        await live.done.wait()

    async def _converse(self, ws: ServerConnection, start: events.Start) -> None:
        settings = self.settings
        context = stream_context(start, decode_call_context(_as_sip_headers(start)))
        playout = StreamPlayout(
            _Socket(ws),
            start.stream_id,
            send_ahead=settings.stream.send_ahead_ms // 20,
            checkpoint_timeout_s=settings.stream.checkpoint_timeout_s,
            encoding=start.encoding,
        )
        record_id = context.record_id or start.call_id

        def hangup(reason: str) -> None:
            self._spawn(self._hang_up(live, start.call_id, reason))

        call = StreamCall(start, context, playout, hangup=hangup, transfer=self._transfer(start))
        live = _Live(call, ws)
        self.calls_total += 1
        self.live[start.call_id] = live
        if len(self.live) > settings.stream.max_calls:
            log.warning(
                "stream worker %d holds %d streams (stream.max_calls %d)",
                self.index,
                len(self.live),
                settings.stream.max_calls,
            )
        recorder = self._start_recording(call, record_id)
        if self.listener is not None:
            self.listener.call_started(
                SipCallStart(
                    sip_call_id=start.call_id,
                    call_uuid=record_id,
                    from_uri=context.from_number or None,
                    to_uri=context.to_number or None,
                    at=time.time(),
                    recording=str(recorder[0].path) if recorder else None,
                    headers=dict(context.headers) or None,
                )
            )
        session = CallSession(
            call,
            stt=self.providers.stt,
            tts=self.providers.tts,
            brain=self.providers.brain,
            options=self.options,
            on_turn=turn_reporter(settings, self.listener, start.call_id, lambda: record_id),
            prompts=self.prompts,
            on_activity=activity_reporter(self.listener, start.call_id),
        )
        self.conversations[start.call_id] = session
        log.info("stream %s (call %s) from %s started", start.stream_id, start.call_id, _peer(ws))
        reason = "caller hung up"
        self.pacer.streams.add(playout)
        task = self._spawn(session.run())
        try:
            reason = await self._serve_connections(live, task)
        finally:
            self.pacer.streams.discard(playout)
            call.ended()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if not task.cancelled() and task.exception() is not None:
                log.error("stream %s: conversation crashed: %r", start.call_id, task.exception())
                reason = "conversation error"
            if call.hangup_reason:
                reason = call.hangup_reason
            if recorder is not None:
                recorder[1].cancel()
                recorder[0].close()
            del self.live[start.call_id]
            self.conversations.pop(start.call_id, None)
            if live.ws.state is not State.CLOSED:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(live.ws.close(1000, reason[:100]), 3)
            live.done.set()
            log.info(
                "stream %s ended: %s (%d caller frames, %d malformed messages, %d reconnects)",
                start.call_id,
                reason,
                call.media_frames,
                call.bad_messages,
                call.reconnects,
            )
            if self.listener is not None:
                self.listener.call_ended(
                    SipCallEnd(
                        sip_call_id=start.call_id,
                        call_uuid=record_id,
                        reason=reason,
                        at=time.time(),
                    )
                )

    async def _serve_connections(self, live: _Live, session: asyncio.Task[None]) -> str:
        """Read the stream's connection, and the next one when Plivo reconnects a dropped
        stream, until the conversation or the stream ends; the reason it ended."""
        call = live.call
        grace = self.settings.stream.reconnect_grace_s
        while True:
            reason = await self._read(live.ws, call, session)
            # A close frame is Plivo ending the stream on purpose (the call ended); a
            # connection lost without one is a drop, which Plivo retries.
            closed_cleanly = live.ws.close_code not in (None, CloseCode.ABNORMAL_CLOSURE)
            if session.done() or call.hangup_reason or call.stopped:
                return reason
            successor = live.pending
            live.pending = None
            if successor is None and grace > 0 and not closed_cleanly:
                # Dropped without Plivo's stop: it retries (docs §4.2). The conversation
                # waits, its audio held; the caller hears silence meanwhile.
                live.reattach = asyncio.get_running_loop().create_future()
                live.waiting.set()
                call.playout.paused = True
                log.info(
                    "stream %s: connection lost; waiting %.1f s for Plivo to reconnect",
                    call.call_id,
                    grace,
                )
                try:
                    successor = await asyncio.wait_for(asyncio.shield(live.reattach), grace)
                except TimeoutError:
                    successor = None
                finally:
                    live.reattach = None
                    live.waiting.clear()
                    call.playout.paused = False
            if successor is None:
                return reason
            live.ws, restart = successor
            call.reconnects += 1
            # Whether a retry keeps the streamId is not documented: the new start's counts.
            call.playout.reconnect(_Socket(live.ws), restart.stream_id)
            log.info(
                "stream %s: Plivo reconnected (%s, stream %s)",
                call.call_id,
                _peer(live.ws),
                restart.stream_id,
            )

    async def _read(
        self, ws: ServerConnection, call: StreamCall, session: asyncio.Task[None]
    ) -> str:
        """Dispatch Plivo's events until the socket closes or the conversation ends; the
        reason the stream ended. One reader task per connection (not a task per message:
        50 messages a second per call)."""
        reader = asyncio.ensure_future(self._read_all(ws, call))
        try:
            await asyncio.wait({reader, session}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if session.done():
            return call.hangup_reason or "conversation ended"
        return "caller hung up"

    async def _read_all(self, ws: ServerConnection, call: StreamCall) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                self._dispatch(call, message)

    def _dispatch(self, call: StreamCall, message: str | bytes) -> None:
        try:
            event = events.parse_event(message)
        except events.StreamProtocolError as exc:
            call.bad_messages += 1
            if call.bad_messages <= 3:
                log.warning("stream %s: malformed message skipped: %s", call.call_id, exc)
            return
        match event:
            case events.Media(payload=payload, track=track):
                if track == "inbound":
                    call.media(payload)
            case events.Dtmf(digit=digit):
                call.key(digit)
            case events.PlayedStream(name=name):
                call.playout.played(name)
            case events.ClearedAudio():
                pass
            case events.Stop(reason=reason):
                call.stopped = reason or "stop"
                log.info("stream %s: Plivo stops the stream (%s)", call.call_id, reason or "-")
            case events.Start():
                call.bad_messages += 1
                log.warning("stream %s: a second start event is ignored", call.call_id)
            case events.Other(event=name):
                log.info("stream %s: event %r ignored", call.call_id, name)

    # -- hang-up, transfer, records -------------------------------------------------------------
    def _transfer(self, start: events.Start) -> Any:
        """Plivo's REST transfer of the call (None: no REST credentials)."""
        if not self.settings.plivo_transfer_ready():
            return None
        from gateway.plivo.transfer import PlivoTransfer

        return PlivoTransfer(self.settings, start.call_id).transfer

    async def _hang_up(self, live: _Live, call_uuid: str, reason: str) -> None:
        """End the call: Plivo's REST hang-up when credentials are set (docs §5.2), and the
        WebSocket closed (with keepCallAlive and nothing after `<Stream>`, Plivo ends the
        call when the stream ends: §1.4)."""
        if self.settings.plivo_transfer_ready():
            from gateway.plivo.transfer import hang_up_call

            await hang_up_call(self.settings, call_uuid)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(live.ws.close(1000, reason[:100]), 3)

    def _start_recording(
        self, call: StreamCall, record_id: str
    ) -> tuple[CallRecorder, asyncio.Task[None]] | None:
        recorder = start_recorder(self.settings, call, record_id)
        return None if recorder is None else (recorder, self._spawn(recorder.run()))

    def push(self, call_id: str, payload: object) -> PushOutcome:
        """Hand a reply the bot pushed to the brain of stream call ``call_id``."""
        return push_reply(self.providers.brain, self.conversations, call_id, payload)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _as_sip_headers(start: events.Start) -> dict[str, str]:
    """extraHeaders as the X-PH- headers `decode_call_context` reads (the app writes the
    same pairs into a SIP Dial's sipHeaders and a stream's extraHeaders)."""
    return {f"X-PH-{k}": v for k, v in start.extra_headers.items()}


def _peer(ws: ServerConnection) -> str:
    with contextlib.suppress(Exception):
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    return "?"
