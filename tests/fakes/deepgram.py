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

Listening mode (`word_dbfs` set; off by default): the fake then hears the audio like a
recogniser, 20 ms frame by 20 ms frame.  A frame louder than `word_dbfs` is part of a word;
a frame louder than `vad_dbfs` is sound to its endpointing VAD (so background noise between
the two levels holds endpointing off, as Deepgram documents).  With the connection's
``endpointing`` query parameter, that many ms without sound after words closes the segment
with ``is_final``/``speech_final: true``; with ``utterance_end_ms`` (and
``interim_results=true``) a gap that long after the last word's end sends any unfinalised
words as a final (``speech_final: false``) and then ``{"type": "UtteranceEnd",
"last_word_end": ...}``.  Interims come every `interim_every` frames while the segment has
words; a segment without word frames transcribes as "" (noise); word timings are real.

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

Timing (every message of a connection goes out through one ordered queue, sent by its own
task, so the receive loop never stops reading audio while a message waits):

- `latency_s` (default 0): every ``Results`` and ``UtteranceEnd`` the audio causes (interim,
  endpointing final, utterance-end final) is sent that long after the audio message that
  completed it arrived: Deepgram's processing latency.
- `final_delay_s` (default 0): the ``from_finalize`` answer is sent that long after the
  ``Finalize`` arrived, and never before `latency_s` after the last audio it covers.
- Messages keep their order (a late Finalize answer holds back the interims behind it).
  ``CloseStream`` sends what is queued, then ``Metadata``, then closes, as Deepgram flushes
  its cached results before the summary (https://developers.deepgram.com/docs/close-stream).

Realistic mode (`realistic()`: listening mode with the timing Deepgram documents):

- interims about once per second of audio while the segment has words, cumulative over the
  segment (https://developers.deepgram.com/docs/using-interim-results shows one interim per
  second of audio: 0.0-1.1, 0.0-2.1, 0.0-3.1 s ...; the feature page is
  https://developers.deepgram.com/docs/interim-results);
- a final for everything unfinalised after ``Finalize``
  (https://developers.deepgram.com/docs/finalize), after ``endpointing`` ms of silence with
  ``speech_final`` (https://developers.deepgram.com/docs/endpointing) and after
  ``utterance_end_ms`` without words (https://developers.deepgram.com/docs/utterance-end);
- the transcript is what the caller said, punctuated: with ``punctuate=true`` /
  ``smart_format=true`` Deepgram capitalises and ends a sentence with "." or "?"
  (https://developers.deepgram.com/docs/punctuation).  A test gives the caller's sentences
  in `script` (one entry per utterance, punctuation included).  An utterance takes the next
  entry when words start at least `phrase_gap_s` after the last word heard (any
  connection: one caller at a time).  An interim shows a prefix of the entry's words in
  proportion to the word audio heard (`words_per_s`, 2.5 words a second: 150 a minute); a
  final carries the words up to the entry's next ``|`` (a test marks where a caller pauses
  mid-sentence: "What are | your opening hours?") or to its end; words after an entry is
  used up transcribe as "".  With `script` empty the text is ``transcript(n)``.

Everything the fake saw is in `connections` (one `FakeConnection` per accepted upgrade).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
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
FRAME_BYTES = 320  # 20 ms
FRAME_S = 0.02
# Deepgram's interim cadence: about one interim per second of audio
# (https://developers.deepgram.com/docs/using-interim-results).
INTERIM_EVERY_S = 1.0


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
    utterance_ends: int = 0
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
        self.latency_s = 0.0
        self.word_dbfs: float | None = None  # listening mode (see the module docstring)
        self.vad_dbfs = -45.0
        self.script: deque[str] = deque()  # the caller's sentences (listening mode)
        self.words_per_s = 2.5
        self.phrase_gap_s = 0.7
        self._parts: list[list[str]] = []  # the current sentence's parts not yet final
        self._scripted = False  # the current utterance's text comes from `script`
        self._last_word_at = -math.inf  # loop time of the last word frame heard
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

    def realistic(
        self,
        *,
        latency_s: float = 0.2,
        word_dbfs: float = -35.0,
        script: Iterable[str] = (),
    ) -> None:
        """Switch to realistic mode (see the module docstring): listening mode with words
        above `word_dbfs`, an interim per second of audio, every result `latency_s` after
        its audio and the Finalize answer `latency_s` after the Finalize; `script` is
        added to the caller's sentences."""
        self.word_dbfs = word_dbfs
        self.interim_every = round(INTERIM_EVERY_S / FRAME_S)
        self.latency_s = latency_s
        self.final_delay_s = latency_s
        self.script.extend(script)

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

    async def _serve(self, ws: ServerConnection, conn: FakeConnection, drop: bool) -> None:
        outbox = _Outbox(ws, conn)
        try:
            await self._listen(ws, conn, drop, outbox)
        finally:
            await outbox.aclose()

    async def _listen(
        self, ws: ServerConnection, conn: FakeConnection, drop: bool, outbox: _Outbox
    ) -> None:
        loop = asyncio.get_running_loop()
        request_id = str(uuid.uuid4())
        listener = _Listener(self, conn, request_id) if self.word_dbfs is not None else None
        segment_bytes = 0  # audio since the last final
        start_bytes = 0  # where the current segment starts, in bytes of this connection
        utterance_messages = 0  # audio messages since the last Finalize
        last_audio_at = -math.inf  # loop time the last audio message arrived
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
            except TimeoutError:
                await ws.close(1011, "did not receive audio data or a text message in time")
                return
            now = loop.time()
            if isinstance(message, bytes):
                last_audio_at = now
                due = now + self.latency_s  # the results of this audio, processed
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
                if listener is not None:
                    for msg in listener.audio(message, now):
                        outbox.put(due, msg)
                elif self.final_every and conn.audio_messages % self.final_every == 0:
                    outbox.put(
                        due, self._results(request_id, start_bytes, segment_bytes, final=True)
                    )
                    start_bytes += segment_bytes
                    segment_bytes = 0
                elif self.interim_every and conn.audio_messages % self.interim_every == 0:
                    outbox.put(
                        due, self._results(request_id, start_bytes, segment_bytes, final=False)
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
                if listener is not None:
                    segment_bytes = listener.pending_bytes()
                if segment_bytes == 0:
                    continue  # like Deepgram: no from_finalize answer when nothing is buffered
                # The vendor's finalize latency, and never before the audio it covers is
                # processed; the receive loop goes on meanwhile.
                due = max(now + self.final_delay_s, last_audio_at + self.latency_s)
                if self.malformed:
                    outbox.put(due, raw="{this is not json")
                    continue
                if listener is not None:
                    msg = listener.close_segment(final=True, speech_final=False, from_finalize=True)
                else:
                    msg = self._results(
                        request_id, start_bytes, segment_bytes, final=True, from_finalize=True
                    )
                    start_bytes += segment_bytes
                    segment_bytes = 0
                if self.malformed_results:
                    del msg["channel"]
                outbox.put(due, msg)
            elif kind == "CloseStream":
                conn.close_streams += 1
                duration = conn.audio_bytes / BYTES_PER_SECOND
                outbox.put(now, self._metadata(request_id, duration))
                await outbox.drain()  # pending results first, then Metadata
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
        speech_final: bool | None = None,
        words_span: tuple[int, int] | None = None,
        text: str | None = None,
    ) -> dict[str, Any]:
        """A ``Results`` for the `n` bytes from `start_bytes`; in listening mode the words
        are in `words_span` (byte offsets of the first word's start, the last word's end)
        and `text`, when given, is their transcript (else ``transcript(n)``)."""
        start = start_bytes / BYTES_PER_SECOND
        duration = n / BYTES_PER_SECOND
        if self.word_dbfs is None:
            text = self.transcript(n) if n else ""
            w_start, w_end = start, start + duration
        else:
            if words_span is None:
                text = ""
            elif text is None:
                text = self.transcript(n)
            first, last = words_span or (start_bytes, start_bytes)
            w_start, w_end = first / BYTES_PER_SECOND, last / BYTES_PER_SECOND
        words = [
            {"word": w, "start": w_start, "end": w_end, "confidence": 0.99} for w in text.split()
        ]
        msg: dict[str, Any] = {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": duration,
            "start": start,
            "is_final": final,
            "speech_final": final if speech_final is None else speech_final,
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

    # -- the caller's script (listening mode) ------------------------------------------------

    def _word_heard(self, now: float, first_of_segment: bool) -> None:
        """A word frame arrived at loop time `now`; the first of a segment may begin the
        next sentence of the script (when the caller was quiet long enough before it)."""
        if first_of_segment and not self._parts and now - self._last_word_at >= self.phrase_gap_s:
            with self._lock:
                sentence = self.script.popleft() if self.script else None
            self._scripted = sentence is not None
            if sentence is not None:
                parts = [part.split() for part in sentence.split("|")]
                self._parts = [p for p in parts if p]
        self._last_word_at = now

    def _script_text(self, word_frames: int, *, final: bool) -> str | None:
        """The scripted transcript of a segment with `word_frames` frames of words: a
        final takes the current part whole, an interim shows a prefix in proportion to
        the word audio heard; None when the utterance is not scripted."""
        if not self._scripted:
            return None
        if not self._parts:
            return ""
        if final:
            return " ".join(self._parts.pop(0))
        part = self._parts[0]
        shown = math.ceil(word_frames * FRAME_S * self.words_per_s)
        return " ".join(part[: max(1, min(len(part), shown))])

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


class _Outbox:
    """A connection's messages, sent in order, each at its due time (loop time), by one
    task: the receive loop queues a result and goes on reading audio."""

    def __init__(self, ws: ServerConnection, conn: FakeConnection) -> None:
        self.ws = ws
        self.conn = conn
        self.queue: asyncio.Queue[tuple[float, dict[str, Any] | None, str]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(), name="fake-deepgram-outbox")

    def put(self, due: float, msg: dict[str, Any] | None = None, raw: str = "") -> None:
        """Send `msg` (recorded in the connection's `sent`), or the text `raw`, at `due`."""
        self.queue.put_nowait((due, msg, raw))

    async def drain(self) -> None:
        """Wait until everything queued was sent (or the connection broke)."""
        await self.queue.join()

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        broken = False
        while True:
            due, msg, raw = await self.queue.get()
            try:
                if not broken:
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    if msg is not None:
                        self.conn.sent.append(msg)
                        raw = json.dumps(msg)
                    await self.ws.send(raw)
            except ConnectionClosed:
                broken = True  # the rest is dropped, as on a broken socket
            finally:
                self.queue.task_done()


def _frame_dbfs(frame: bytes) -> float:
    """RMS level of 16-bit little-endian PCM in dBFS (-inf for digital silence)."""
    n = len(frame) // 2
    if n == 0:
        return -math.inf
    total = sum(v * v for (v,) in struct.iter_unpack("<h", frame[: n * 2]))
    rms = math.sqrt(total / n)
    return 20 * math.log10(rms / 32768) if rms else -math.inf


class _Listener:
    """Listening mode of one connection: words, endpointing and UtteranceEnd from levels."""

    def __init__(self, fake: FakeDeepgram, conn: FakeConnection, request_id: str) -> None:
        self.fake = fake
        self.request_id = request_id
        q = conn.query
        self.endpointing_frames = _ms_frames(q.get("endpointing"))
        interim = q.get("interim_results") == "true"
        self.utterance_end_frames = _ms_frames(q.get("utterance_end_ms")) if interim else None
        self.conn = conn
        self.buf = b""
        self.frames = 0  # whole frames heard on this connection
        self.seg_start = 0  # frame where the current segment starts
        self.seg_first_word: int | None = None  # frame of its first word frame
        self.seg_word_frames = 0  # word frames in the current segment
        self.last_word_end = 0  # frame after the last word frame of the connection
        self.quiet = 0  # frames without sound since the last sound
        self.since_interim = 0
        self.words_since_end = False  # words since the last UtteranceEnd

    def pending_bytes(self) -> int:
        """Audio not yet in a final (whole frames)."""
        return (self.frames - self.seg_start) * FRAME_BYTES

    def close_segment(
        self, *, final: bool, speech_final: bool, from_finalize: bool = False
    ) -> dict[str, Any]:
        """The Results of the current segment; a final starts a new segment."""
        span = text = None
        if self.seg_first_word is not None:
            span = (self.seg_first_word * FRAME_BYTES, self.last_word_end * FRAME_BYTES)
            text = self.fake._script_text(self.seg_word_frames, final=final)
        msg = self.fake._results(
            self.request_id,
            self.seg_start * FRAME_BYTES,
            self.pending_bytes(),
            final=final,
            from_finalize=from_finalize,
            speech_final=speech_final,
            words_span=span,
            text=text,
        )
        if final:
            self.seg_start = self.frames
            self.seg_first_word = None
            self.seg_word_frames = 0
            self.since_interim = 0  # interims are cumulative over a segment
        return msg

    def audio(self, data: bytes, now: float) -> list[dict[str, Any]]:
        """Hear `data` (arrived at loop time `now`); the messages Deepgram would send by
        the end of it."""
        out: list[dict[str, Any]] = []
        self.buf += data
        word_dbfs = self.fake.word_dbfs
        assert word_dbfs is not None
        while len(self.buf) >= FRAME_BYTES:
            frame, self.buf = self.buf[:FRAME_BYTES], self.buf[FRAME_BYTES:]
            level = _frame_dbfs(frame)
            self.frames += 1
            if level > word_dbfs:
                first = self.seg_first_word is None
                if first:
                    self.seg_first_word = self.frames - 1
                self.fake._word_heard(now, first)
                self.seg_word_frames += 1
                self.last_word_end = self.frames
                self.words_since_end = True
            self.quiet = 0 if level > self.fake.vad_dbfs else self.quiet + 1
            has_words = self.seg_first_word is not None
            if has_words and self.endpointing_frames and self.quiet == self.endpointing_frames:
                out.append(self.close_segment(final=True, speech_final=True))
            gap = self.frames - self.last_word_end
            if (
                self.words_since_end
                and self.utterance_end_frames
                and gap >= self.utterance_end_frames
            ):
                if self.seg_first_word is not None:
                    out.append(self.close_segment(final=True, speech_final=False))
                out.append(
                    {
                        "type": "UtteranceEnd",
                        "channel": [0, 1],
                        "last_word_end": self.last_word_end * FRAME_BYTES / BYTES_PER_SECOND,
                    }
                )
                self.conn.utterance_ends += 1
                self.words_since_end = False
            self.since_interim += 1
            every = self.fake.interim_every
            if every and self.since_interim >= every and self.seg_first_word is not None:
                out.append(self.close_segment(final=False, speech_final=False))
                self.since_interim = 0
        return out


def _ms_frames(value: str | None) -> int | None:
    """A ms query parameter as whole 20 ms frames (None when absent or "false")."""
    if value is None or not value.isdigit():
        return None
    return max(1, math.ceil(int(value) / 20))
