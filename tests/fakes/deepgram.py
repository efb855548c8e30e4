"""A loopback fake of Deepgram's live transcription WebSocket (``/v1/listen``).

`FakeDeepgram` runs a real `websockets` server on 127.0.0.1 (a free port) in a background
thread with its own event loop; use it as a context manager.  It speaks the wire protocol
the official SDK expects:

- the upgrade must be ``GET /v1/listen?...`` with ``Authorization: Token <key>`` (else 401);
- binary messages are audio; every `interim_every` audio messages it answers an interim
  ``Results`` (``is_final: false``); with `final_every` set it also closes a segment every
  that many audio messages with an endpointing final (``is_final``/``speech_final: true``);
- ``{"type": "Finalize"}`` → a final ``Results`` of the audio since the last final with
  ``is_final``, ``speech_final`` and ``from_finalize`` true; nothing when all audio was
  already finalized (Deepgram does not guarantee that answer then);
- ``{"type": "KeepAlive"}`` is counted and resets the idle timer;
- ``{"type": "CloseStream"}`` → a ``Metadata`` message, then a normal close;
- no audio and no KeepAlive for `idle_timeout_s` (10 s like Deepgram) → close code 1011.

The transcript text is ``transcript(n)`` for the n bytes of audio in the segment (default
``"<n> bytes"``).  Failure modes, switchable per test through attributes: `reject_status`
(answer the upgrade with that HTTP status), `hang_handshake_s` (answer the upgrade that late),
`silent` (accept, record, never answer), `drop_after` (abort the TCP connection after that
many audio messages, for the first `drops` connections), `drop_mid_utterance` (while set,
abort any connection once it got that many audio messages since its last Finalize),
`malformed` (answer Finalize with text that is not JSON) and `malformed_results` (a
``Results`` without ``channel``).  `outage(status)` is a vendor outage: every open socket
is aborted and every upgrade refused with `status` until `outage(None)`.  All of these are
read when they apply, so a test can switch them between a call's turns.

Everything the fake saw is in `connections` (one `FakeConnection` per accepted upgrade).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

BYTES_PER_SECOND = 16000  # 8 kHz 16-bit mono


def bytes_transcript(n: int) -> str:
    """The default transcript: how many bytes of audio the segment had."""
    return f"{n} bytes"


@dataclass
class FakeConnection:
    """What the fake saw on one accepted WebSocket connection."""

    path: str
    query: dict[str, str]
    authorization: str
    audio_bytes: int = 0
    audio_messages: int = 0
    keepalives: int = 0
    finalizes: int = 0
    close_streams: int = 0
    dropped: bool = False  # aborted by drop_mid_utterance
    open: bool = True
    sent: list[dict[str, Any]] = field(default_factory=list)


class FakeDeepgram:
    """A fake Deepgram live STT server on 127.0.0.1; see the module docstring."""

    def __init__(self, api_key: str = "test-key", *, idle_timeout_s: float = 10.0) -> None:
        self.api_key = api_key
        self.idle_timeout_s = idle_timeout_s
        self.transcript: Callable[[int], str] = bytes_transcript
        self.interim_every = 10
        self.final_every: int | None = None
        self.reject_status: int | None = None
        self.hang_handshake_s = 0.0
        self.silent = False
        self.drop_after: int | None = None
        self.drops = 1
        self.drop_mid_utterance: int | None = None
        self.malformed = False
        self.malformed_results = False
        self.final_delay_s = 0.0
        self.connections: list[FakeConnection] = []
        self.rejected: list[int] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._sockets: set[ServerConnection] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give the client: ``ws://127.0.0.1:<port>``."""
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeDeepgram:
        self._thread = threading.Thread(target=self._run, name="fake-deepgram", daemon=True)
        self._thread.start()
        if not self._started.wait(5.0):
            raise RuntimeError("fake Deepgram did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handle, "127.0.0.1", 0, process_request=self._process_request
        ) as server:
            self._server = server
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._started.set()
            await self._stop.wait()
            server.close(close_connections=True)
            await server.wait_closed()

    # -- queries from the test thread --------------------------------------------------------

    def open_connections(self) -> int:
        """How many connections are open right now."""
        with self._lock:
            return sum(1 for c in self.connections if c.open)

    def outage(self, status: int | None) -> None:
        """Refuse every upgrade with `status` (None: accept again) and, when starting an
        outage, abort every open connection, as a vendor's failing front end would."""
        self.reject_status = status
        loop = self._loop
        if status is None or loop is None:
            return
        done = threading.Event()

        def abort_all() -> None:
            for ws in list(self._sockets):
                ws.transport.abort()
            done.set()

        loop.call_soon_threadsafe(abort_all)
        if not done.wait(5.0):
            raise RuntimeError("fake Deepgram did not abort its connections")

    def total_keepalives(self) -> int:
        with self._lock:
            return sum(c.keepalives for c in self.connections)

    # -- the server --------------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if self.hang_handshake_s:
            await asyncio.sleep(self.hang_handshake_s)
        if urlsplit(request.path).path != "/v1/listen":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            self.rejected.append(401)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid credentials\n")
        if self.reject_status is not None:
            self.rejected.append(self.reject_status)
            return Response(self.reject_status, "Error", Headers(), b"server error\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        split = urlsplit(ws.request.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        conn = FakeConnection(
            path=split.path, query=query, authorization=ws.request.headers.get("Authorization", "")
        )
        with self._lock:
            self.connections.append(conn)
            drop = self.drop_after is not None and self.drops > 0
            if drop:
                self.drops -= 1
        self._sockets.add(ws)
        try:
            await self._serve(ws, conn, drop)
        except ConnectionClosed:
            pass
        finally:
            self._sockets.discard(ws)
            conn.open = False

    async def _send(self, ws: ServerConnection, conn: FakeConnection, msg: dict[str, Any]) -> None:
        conn.sent.append(msg)
        await ws.send(json.dumps(msg))

    async def _serve(self, ws: ServerConnection, conn: FakeConnection, drop: bool) -> None:
        request_id = str(uuid.uuid4())
        segment_bytes = 0  # audio since the last final
        start_bytes = 0  # where the current segment starts, in bytes of this connection
        utterance_messages = 0  # audio messages since the last Finalize
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
            except TimeoutError:
                await ws.close(1011, "did not receive audio data or a text message in time")
                return
            if isinstance(message, bytes):
                conn.audio_bytes += len(message)
                conn.audio_messages += 1
                segment_bytes += len(message)
                if drop and self.drop_after is not None and conn.audio_messages >= self.drop_after:
                    ws.transport.abort()
                    return
                utterance_messages += 1
                mid = self.drop_mid_utterance
                if mid is not None and utterance_messages >= mid:
                    conn.dropped = True
                    ws.transport.abort()
                    return
                if self.silent:
                    continue
                if self.final_every and conn.audio_messages % self.final_every == 0:
                    await self._send(
                        ws, conn, self._results(request_id, start_bytes, segment_bytes, final=True)
                    )
                    start_bytes += segment_bytes
                    segment_bytes = 0
                elif self.interim_every and conn.audio_messages % self.interim_every == 0:
                    await self._send(
                        ws, conn, self._results(request_id, start_bytes, segment_bytes, final=False)
                    )
                continue
            try:
                control = json.loads(message)
                kind = control["type"]
            except (ValueError, KeyError, TypeError):
                await ws.close(1008, "invalid control message")
                return
            if kind == "KeepAlive":
                conn.keepalives += 1
            elif kind == "Finalize":
                conn.finalizes += 1
                utterance_messages = 0
                if self.silent:
                    continue
                if segment_bytes == 0:
                    continue  # like Deepgram: no from_finalize answer when nothing is buffered
                if self.malformed:
                    await ws.send("{this is not json")
                    continue
                if self.final_delay_s:
                    await asyncio.sleep(self.final_delay_s)  # the vendor's finalize latency
                msg = self._results(
                    request_id, start_bytes, segment_bytes, final=True, from_finalize=True
                )
                if self.malformed_results:
                    del msg["channel"]
                await self._send(ws, conn, msg)
                start_bytes += segment_bytes
                segment_bytes = 0
            elif kind == "CloseStream":
                conn.close_streams += 1
                duration = conn.audio_bytes / BYTES_PER_SECOND
                await self._send(ws, conn, self._metadata(request_id, duration))
                await ws.close(1000)
                return

    def _results(
        self,
        request_id: str,
        start_bytes: int,
        n: int,
        *,
        final: bool,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        text = self.transcript(n) if n else ""
        start = start_bytes / BYTES_PER_SECOND
        duration = n / BYTES_PER_SECOND
        words = [
            {"word": w, "start": start, "end": start + duration, "confidence": 0.99}
            for w in text.split()
        ]
        msg: dict[str, Any] = {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": duration,
            "start": start,
            "is_final": final,
            "speech_final": final,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.99, "words": words}]},
            "metadata": {
                "request_id": request_id,
                "model_info": {"name": "general-nova-3", "version": "fake", "arch": "nova-3"},
                "model_uuid": "00000000-0000-0000-0000-000000000000",
            },
        }
        if from_finalize:
            msg["from_finalize"] = True
        return msg

    @staticmethod
    def _metadata(request_id: str, duration: float) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": request_id,
            "sha256": "0" * 64,
            "created": "2026-01-01T00:00:00.000Z",
            "duration": duration,
            "channels": 1,
            "models": ["00000000-0000-0000-0000-000000000000"],
            "model_info": {},
        }
