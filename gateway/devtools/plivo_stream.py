"""Plivo's side of a bidirectional audio stream: a WebSocket client that connects to a
stream bot the way Plivo does and plays the caller (`sipagent call ws://…` and the tests).

Every behaviour follows Plivo's documentation as docs/plivo-audio-streams.md records it
(short page names as there: PROTOREF is
https://plivo.com/docs/voice-agents/audio-streaming/concepts/audio-streaming-reference,
GUIDE …/audio-streaming-guide, XMLREF https://docs.plivo.com/docs/voice/xml/audiostream);
where Plivo's pages disagree, what the bot sends is accepted both ways.

- `PlivoStreamPeer` is one stream on an asyncio loop (a benchmark runs many on one loop):
  it connects (optionally signing the upgrade), sends ``start``, then every 20 ms one
  ``media`` chunk of what `StreamCall.playout` holds (silence when empty) and one frame of
  its playback queue into `StreamCall.inbound` (what the caller hears); it queues
  ``playAudio``, answers ``checkpoint`` with ``playedStream`` once the audio before it has
  played, ``clearAudio`` with ``clearedAudio``, records ``sendDTMF``; `PeerStats` is what
  it saw (arrivals, gaps in the playback, clears, protocol errors).
- `StreamDialer` runs one peer on a thread of its own with the interface of
  `gateway.sip.dialer.Dialer`, so `gateway.devtools.softphone.Softphone` drives a stream
  call exactly like a SIP one.
- `fetch_stream_answer` plays Plivo's answer_url request and reads the ``<Stream>`` of the
  XML it gets back (`sipagent call --answer-url`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import json
import logging
import re
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from gateway.audio.g711 import ulaw_decode, ulaw_encode
from gateway.audio.pcm import FRAME_BYTES, FRAME_MS, SILENCE_FRAME
from gateway.plivo.signature import NONCE_HEADER, SIGNATURE_HEADER, expected_signature
from gateway.sip.calls import OutboundCall
from gateway.stream.auth import CALL_PARAM

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "L16",
    "MULAW",
    "CheckpointRecord",
    "Gap",
    "PeerStats",
    "PlayAudioArrival",
    "PlivoStreamPeer",
    "StreamAnswerError",
    "StreamCall",
    "StreamDialer",
    "StreamDialerError",
    "StreamTarget",
    "answer_params",
    "cleared_audio_event",
    "dtmf_event",
    "fetch_stream_answer",
    "is_stream_uri",
    "media_event",
    "parse_stream_answer",
    "played_stream_event",
    "signature_headers",
    "start_event",
    "stop_event",
]

log = logging.getLogger(__name__)

MULAW: Final = "audio/x-mulaw"
L16: Final = "audio/x-l16"
SAMPLE_RATE: Final = 8000
# playAudio's documented (contentType, sampleRate) pairs (the play-audio-event page; FAQ
# "What are the supported audio codecs?"); the emulator plays the 8 kHz ones.
PLAY_FORMATS: Final = frozenset({(L16, 8000), (L16, 16000), (MULAW, 8000)})
MAX_MESSAGE_BYTES: Final = 64 * 1024  # GUIDE "Limits": maximum WebSocket message
QUEUE_LIMIT_S: Final = 60.0  # GUIDE "Limits": playback buffer "~60 seconds of audio"
DTMF_GAP_MS: Final = 160  # one key every 160 ms, as the SIP softphone's RFC 4733 keys
DEFAULT_ACCOUNT_ID: Final = "MAEMULATEDSIPAGENT00"  # an MA… id as in PROTOREF's example
STOP_REASON: Final = "Call hangup"  # the console's stream-termination reason (BEST)
_FRAME_S: Final = FRAME_MS / 1000.0
_DIGITS: Final = re.compile(r"^[0-9*#A-D]+$")
_MAX_NOTES: Final = 200  # protocol errors kept word for word; the rest are only counted
# Receive limit of the socket: above Plivo's 64 KB so that an over-size message is noted
# (and dropped) by the emulator instead of failing the connection inside the library.
_RECEIVE_LIMIT: Final = 4 * 1024 * 1024


def is_stream_uri(uri: str) -> bool:
    """Whether `sipagent call` plays Plivo for ``uri`` (a WebSocket URL, or an answer_url)."""
    return uri.lower().startswith(("ws://", "wss://", "http://", "https://"))


# -- the events Plivo sends (PROTOREF, unless said otherwise) ----------------------------------


def _unix_ms(t: float) -> str:
    return str(int(t * 1000))


def start_event(
    sequence: int,
    call_id: str,
    stream_id: str,
    *,
    account_id: str = DEFAULT_ACCOUNT_ID,
    encoding: str = MULAW,
    extra_headers: str = "",
) -> dict[str, Any]:
    """``start``: first message on the socket; ``extra_headers`` (the XML's extraHeaders,
    verbatim) at the top level, ``mediaFormat.encoding`` without ``;rate=``."""
    return {
        "event": "start",
        "sequenceNumber": sequence,
        "start": {
            "callId": call_id,
            "streamId": stream_id,
            "accountId": account_id,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": encoding, "sampleRate": SAMPLE_RATE},
        },
        "extra_headers": extra_headers,
    }


def media_event(
    sequence: int, stream_id: str, chunk: int, timestamp_ms: str, payload: bytes, extra_headers: str
) -> dict[str, Any]:
    """``media``: ~20 ms of the caller's audio; ``timestamp`` a string of milliseconds,
    ``chunk`` rising from 1 (plivo-stream-sdk-python), ``extra_headers`` on every one."""
    return {
        "event": "media",
        "sequenceNumber": sequence,
        "streamId": stream_id,
        "media": {
            "track": "inbound",
            "timestamp": timestamp_ms,
            "chunk": chunk,
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "extra_headers": extra_headers,
    }


def dtmf_event(
    sequence: int, stream_id: str, digit: str, timestamp_ms: str, extra_headers: str
) -> dict[str, Any]:
    """``dtmf``: one key the caller pressed (``digit`` matches ``^[0-9*#A-D]$``)."""
    return {
        "event": "dtmf",
        "sequenceNumber": sequence,
        "streamId": stream_id,
        "dtmf": {"track": "inbound", "digit": digit, "timestamp": timestamp_ms},
        "extra_headers": extra_headers,
    }


def played_stream_event(sequence: int, stream_id: str, name: str) -> dict[str, Any]:
    """``playedStream``: the audio queued before checkpoint ``name`` has played
    (PROTOREF; the checkpoint-event page)."""
    return {
        "event": "playedStream",
        "sequenceNumber": sequence,
        "streamId": stream_id,
        "name": name,
    }


def cleared_audio_event(sequence: int, stream_id: str) -> dict[str, Any]:
    """``clearedAudio``: the answer to ``clearAudio``."""
    return {"event": "clearedAudio", "sequenceNumber": sequence, "streamId": stream_id}


def stop_event(sequence: int, stream_id: str, reason: str, extra_headers: str) -> dict[str, Any]:
    """``stop``: not in PROTOREF, but in plivo-stream-sdk-java's StopEvent (top-level
    ``reason``) and GUIDE's "handle start, media, dtmf, stop"; the close that follows is
    what ends the stream."""
    return {
        "event": "stop",
        "sequenceNumber": sequence,
        "streamId": stream_id,
        "reason": reason,
        "extra_headers": extra_headers,
    }


def signature_headers(url: str, auth_token: str, nonce: str | None = None) -> dict[str, str]:
    """``X-Plivo-Signature-V3`` and its nonce for a WebSocket upgrade to ``url`` (GUIDE
    "Signature Validation": the SDK's V3 algorithm, method GET, over the URL requested)."""
    nonce = nonce or str(secrets.randbelow(10**20)).zfill(20)
    signature = expected_signature(auth_token, "GET", url, {}, nonce)
    return {SIGNATURE_HEADER: signature.decode("ascii"), NONCE_HEADER: nonce}


# -- the call and what the peer saw ------------------------------------------------------------


@dataclass
class StreamCall(OutboundCall):
    """State of one stream call, readable from any thread, filled in by the peer: what
    `Softphone` reads of a SIP call (`inbound`: the bot's playAudio played out in real
    time, silence between; `playout`: what the caller says, popped every 20 ms into a
    media event; `confirmed_at`: the WebSocket opened; `status_code`: 101, else the
    upgrade's HTTP status; `dtmf_received`: the bot's sendDTMF keys with method "stream";
    `codecs`: the stream's format, e.g. "PCMU/8000"; `session_expires` stays empty), and
    the stream's ids."""

    call_id: str = ""
    stream_id: str = ""


@dataclass(frozen=True)
class PlayAudioArrival:
    """One playAudio the bot sent: when it arrived, its size on the wire, its audio."""

    at: float
    message_bytes: int
    audio_ms: float


@dataclass
class CheckpointRecord:
    """A checkpoint: when it arrived, when its playedStream went out (0.0: not yet), and
    whether a clearAudio dropped it first."""

    name: str
    at: float
    played_at: float = 0.0
    cleared: bool = False


@dataclass(frozen=True)
class Gap:
    """A stretch during which the playback queue was empty between two pieces of audio
    (from the first silent tick to the tick that played audio again)."""

    start: float
    end: float
    after_clear: bool  # a clearAudio came since the audio before it
    at_checkpoint: bool  # the queue had drained exactly to a checkpoint

    @property
    def duration(self) -> float:
        """Seconds of silence the caller heard."""
        return self.end - self.start


@dataclass
class PeerStats:
    """What one peer saw; times are CLOCK_MONOTONIC seconds."""

    connected_at: float = 0.0
    play_audio: list[PlayAudioArrival] = field(default_factory=list)
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)  # clearAudio arrivals
    gaps: list[Gap] = field(default_factory=list)
    events_in: collections.Counter[str] = field(default_factory=collections.Counter)
    events_out: collections.Counter[str] = field(default_factory=collections.Counter)
    unknown_events: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)  # the first _MAX_NOTES, word for word
    error_count: int = 0
    frames_heard: int = 0  # 20 ms frames of the bot's audio played to the caller
    late_ticks: int = 0  # 20 ms ticks that ran after their time (the loop was busy)
    max_lateness_s: float = 0.0

    def underruns(self, turn_gap_s: float = 0.8, checkpoints_end_turns: bool = False) -> list[Gap]:
        """Gaps inside one bot turn: shorter than ``turn_gap_s`` (longer ones are taken as
        the pause between turns), not caused by a clearAudio, and, when
        ``checkpoints_end_turns``, not at a checkpoint (a bot that marks each turn's end)."""
        return [
            g
            for g in self.gaps
            if g.duration < turn_gap_s
            and not g.after_clear
            and not (checkpoints_end_turns and g.at_checkpoint)
        ]

    def max_underrun_s(self, turn_gap_s: float = 0.8, checkpoints_end_turns: bool = False) -> float:
        """The longest of `underruns` in seconds (0.0 when there were none)."""
        gaps = self.underruns(turn_gap_s, checkpoints_end_turns)
        return max((g.duration for g in gaps), default=0.0)


class _PlaybackQueue:
    """The audio Plivo has queued for the caller (16-bit PCM); positions count bytes ever
    queued and played, so a checkpoint is a position."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head = 0  # bytes of the first chunk already played
        self.queued = 0
        self.played = 0

    def __len__(self) -> int:
        return self.queued - self.played

    def append(self, pcm: bytes) -> None:
        if pcm:
            self._chunks.append(pcm)
            self.queued += len(pcm)

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes from the head."""
        out: list[bytes] = []
        need = n
        while need and self._chunks:
            chunk = self._chunks[0]
            piece = chunk[self._head : self._head + need]
            out.append(piece)
            need -= len(piece)
            self._head += len(piece)
            if self._head >= len(chunk):
                self._chunks.popleft()
                self._head = 0
        data = b"".join(out)
        self.played += len(data)
        return data

    def clear(self) -> int:
        """Drop what is queued; returns the bytes dropped."""
        dropped = len(self)
        self._chunks.clear()
        self._head = 0
        self.queued = self.played
        return dropped


def _codec_name(encoding: str) -> str:
    return {MULAW: "PCMU", L16: "L16"}.get(encoding, encoding) + f"/{SAMPLE_RATE}"


def _query_call(url: str) -> str:
    """The ``call`` query parameter of a stream URL (the app's per-call URL), or ""."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get(CALL_PARAM, [])
    return values[0] if len(values) == 1 else ""


# -- the peer ----------------------------------------------------------------------------------


class PlivoStreamPeer:
    """One Plivo audio stream towards a bot, on the running asyncio loop.

    ``await peer.run()`` connects, plays the stream until either side closes it, and
    returns (it never raises for the network: a failed connection ends `call` with the
    HTTP status and reason). Meanwhile `hangup`, `drop`, `send_dtmf` and `send_raw` act on
    it from the same loop, and `until` waits for a condition on its state.
    """

    def __init__(
        self,
        url: str,
        *,
        call: StreamCall | None = None,
        call_id: str | None = None,
        stream_id: str | None = None,
        account_id: str = DEFAULT_ACCOUNT_ID,
        extra_headers: str = "",
        headers: Mapping[str, str] | None = None,
        auth_token: str = "",
        signed_url: str | None = None,
        encoding: str = MULAW,
        bidirectional: bool = True,
        first_sequence: int = 1,
        open_timeout: float = 10.0,
        connect_retries: int = 0,
        retry_delay_s: float = 0.5,
    ) -> None:
        """``call_id``: default the URL's ``call`` query parameter (an app-issued URL
        names its call), else a new UUID. ``headers``: extra HTTP headers on the upgrade
        (they override the signature's). ``auth_token``: sign the upgrade over
        ``signed_url`` (default ``url`` as requested). ``first_sequence``: Plivo's pages
        show both 0 and 1 (EVPROTO says 1). ``connect_retries``: BEST says Plivo retries a
        failed connection twice; this emulator retries only the opening, not a drop."""
        if encoding not in (MULAW, L16):
            raise ValueError(f"encoding must be {MULAW} or {L16}")
        self.url = url
        self.call = call if call is not None else StreamCall(url)
        self.call_id = call_id or _query_call(url) or str(uuid.uuid4())
        self.stream_id = stream_id or str(uuid.uuid4())
        self.account_id = account_id
        self.extra_headers = extra_headers
        self.headers = dict(headers or {})
        self.auth_token = auth_token
        self.signed_url = signed_url
        self.encoding = encoding
        self.bidirectional = bidirectional
        self.open_timeout = open_timeout
        self.connect_retries = connect_retries
        self.retry_delay_s = retry_delay_s
        self.call.call_id, self.call.stream_id = self.call_id, self.stream_id
        self.stats = PeerStats()
        self.ws: ClientConnection | None = None
        self.request_headers: dict[str, str] = {}  # what the last upgrade request carried
        self._sequence = first_sequence
        self._queue = _PlaybackQueue()
        self._pending: collections.deque[tuple[int, CheckpointRecord]] = collections.deque()
        self._limit_bytes = int(QUEUE_LIMIT_S * SAMPLE_RATE * 2)
        self._hanging_up = False
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Gap bookkeeping (see Gap): the tick that went silent, and what came before it.
        self._audio_on = False
        self._gap_start: float | None = None
        self._gap_at_checkpoint = False
        self._cleared_since_audio = False
        self._last_checkpoint_position = -1

    # -- public ----------------------------------------------------------------------------

    @property
    def queued_ms(self) -> float:
        """Milliseconds of the bot's audio queued and not yet played."""
        return len(self._queue) / (SAMPLE_RATE * 2) * 1000.0

    async def run(self) -> None:
        """Connect, send ``start``, and play the stream until it closes."""
        call = self.call
        try:
            ws = await self._connect()
        except asyncio.CancelledError:
            self._ended("cancelled before the stream opened")
            raise
        if ws is None:
            self._ended(call.reason)
            return
        self.ws = ws
        now = time.monotonic()
        call.status_code, call.confirmed_at = 101, now
        self.stats.connected_at = now
        call.codecs.append(_codec_name(self.encoding))
        clock: asyncio.Task[None] | None = None
        try:
            # EVPROTO: start goes "immediately when the WebSocket connection is established".
            start = start_event(
                0,
                self.call_id,
                self.stream_id,
                account_id=self.account_id,
                encoding=self.encoding,
                extra_headers=self.extra_headers,
            )
            await self._send(start)
            call.media_up.set()
            call.confirmed.set()
            clock = asyncio.create_task(self._clock(), name="plivo-stream-clock")
            await self._receive(ws)
        finally:
            for task in [t for t in (clock, *self._tasks) if t is not None]:
                task.cancel()
            for task in [t for t in (clock, *self._tasks) if t is not None]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if ws.state is not State.CLOSED:
                ws.transport.abort()  # cancelled while still open: drop the connection
            if ws.close_code is None:
                how = "connection lost"
            else:
                how = f"close {ws.close_code} {ws.close_reason}".strip()
            who = "hung up" if self._hanging_up else "the bot closed the stream"
            self._ended(f"{who} ({how})")

    async def hangup(self, *, send_stop: bool = True, reason: str = STOP_REASON) -> None:
        """The caller hangs up: optionally a ``stop`` event, then the close (BEST: Plivo
        disconnects the WebSocket itself when the call ends)."""
        self._hanging_up = True
        self.call.hung_up_locally = True
        ws = self.ws
        if ws is None:
            return
        if send_stop:
            await self._send(stop_event(0, self.stream_id, reason, self.extra_headers))
        await ws.close(1000, "")

    def drop(self) -> None:
        """The connection vanishes: TCP closed with no stop event and no close frame."""
        self._hanging_up = True
        self.call.hung_up_locally = True
        if self.ws is not None:
            self.ws.transport.abort()

    async def send_dtmf(self, digits: str, gap_ms: int = DTMF_GAP_MS) -> None:
        """The caller presses ``digits``: one ``dtmf`` event per key, ``gap_ms`` apart."""
        keys = digits.upper()
        if not _DIGITS.match(keys):
            raise ValueError(f"keypad keys are 0-9, *, # and A-D (got {digits!r})")
        for i, key in enumerate(keys):
            if i:
                await asyncio.sleep(gap_ms / 1000.0)
            event = dtmf_event(0, self.stream_id, key, _unix_ms(time.time()), self.extra_headers)
            await self._send(event)

    def press(self, digits: str, gap_ms: int = DTMF_GAP_MS) -> None:
        """`send_dtmf` in the background (returns at once, as a phone's keypad does)."""
        task = asyncio.create_task(self.send_dtmf(digits, gap_ms), name="plivo-stream-dtmf")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_event(self, event: Mapping[str, Any]) -> bool:
        """Send one event of our own making, numbered in sequence (tests: a second start, a
        stop mid-call, …); False when the socket is closed."""
        return await self._send(dict(event))

    async def send_raw(self, message: str | bytes) -> bool:
        """Send one frame exactly as given (tests: malformed JSON, binary, …)."""
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(message)
        except ConnectionClosed:
            return False
        return True

    async def until(self, cond: Callable[[], bool], timeout: float) -> None:
        """Wait until ``cond()`` holds (checked after every message and every 20 ms tick);
        raises `TimeoutError` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    # -- connection ------------------------------------------------------------------------

    async def _connect(self) -> ClientConnection | None:
        call = self.call
        for attempt in range(self.connect_retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_delay_s)
            headers: dict[str, str] = {}
            if self.auth_token:
                headers.update(signature_headers(self.signed_url or self.url, self.auth_token))
            headers.update(self.headers)
            self.request_headers = headers
            try:
                return await connect(
                    self.url,
                    additional_headers=headers,
                    open_timeout=self.open_timeout,
                    max_size=_RECEIVE_LIMIT,
                    # [INFER] no page says Plivo negotiates permessage-deflate: plain frames.
                    compression=None,
                    proxy=None,
                )
            except InvalidStatus as exc:
                response = exc.response
                call.status_code = int(response.status_code)
                call.reason = f"upgrade refused: {response.status_code} {response.reason_phrase}"
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                call.status_code = 0
                call.reason = f"cannot connect: {exc}".strip()
            log.debug("plivo stream %s: %s", self.url, call.reason)
        return None

    def _ended(self, reason: str) -> None:
        call = self.call
        call.reason = reason
        call.ended_at = time.monotonic()
        call.playout.close()
        call.ended.set()
        self._changed.set()

    async def _send(self, event: dict[str, Any]) -> bool:
        """Number and send one event. The number is taken and the frame written in one
        step (websockets writes a whole text frame before its first await), so numbers
        rise in wire order across the clock, the receiver and the keypad."""
        ws = self.ws
        if ws is None:
            return False
        if "sequenceNumber" in event:
            event["sequenceNumber"] = self._sequence
            self._sequence += 1
        self.stats.events_out[str(event.get("event"))] += 1
        try:
            await ws.send(json.dumps(event, separators=(",", ":")))
        except ConnectionClosed:
            return False
        return True

    # -- the 20 ms clock -------------------------------------------------------------------

    async def _clock(self) -> None:
        """One tick every 20 ms on absolute times (no drift): a late tick runs at once and
        the ones after it keep their times, as Plivo buffers a slow connection rather than
        dropping audio (BEST)."""
        origin = time.monotonic()
        origin_unix = time.time()
        n = 0
        while True:
            n += 1
            due = origin + n * _FRAME_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.stats.late_ticks += 1
                self.stats.max_lateness_s = max(self.stats.max_lateness_s, -delay)
                await asyncio.sleep(0)
            await self._tick(n, due, _unix_ms(origin_unix + (n - 1) * _FRAME_S))

    async def _tick(self, chunk: int, now: float, timestamp_ms: str) -> None:
        queue = self._queue
        # Checkpoints whose audio has played: its last frame went out a tick ago.
        while self._pending and self._pending[0][0] <= queue.played:
            position, record = self._pending.popleft()
            record.played_at = now
            self._last_checkpoint_position = position
            await self._send(played_stream_event(0, self.stream_id, record.name))
        # One frame to the caller: the queue's head, else silence.
        pcm = queue.take(FRAME_BYTES)
        if pcm:
            if self._gap_start is not None:
                gap = Gap(self._gap_start, now, self._cleared_since_audio, self._gap_at_checkpoint)
                self.stats.gaps.append(gap)
            self._gap_start = None
            self._cleared_since_audio = False
            self._audio_on = True
            self.stats.frames_heard += 1
            if len(pcm) < FRAME_BYTES:
                pcm += bytes(FRAME_BYTES - len(pcm))
        else:
            if self._audio_on:
                self._audio_on = False
                self._gap_start = now
                self._gap_at_checkpoint = self._last_checkpoint_position == queue.played
            pcm = SILENCE_FRAME
        self.call.inbound.push(pcm)
        # One chunk of the caller's audio to the bot: continuous, silence included.
        said = self.call.playout.pop() or SILENCE_FRAME
        payload = ulaw_encode(said) if self.encoding == MULAW else said
        event = media_event(0, self.stream_id, chunk, timestamp_ms, payload, self.extra_headers)
        await self._send(event)
        self._changed.set()

    # -- what the bot sends ----------------------------------------------------------------

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                await self._handle(message)
                self._changed.set()
        except ConnectionClosed:
            pass

    def note_error(self, text: str) -> None:
        """Record a protocol error (the bot did something Plivo documents otherwise)."""
        self.stats.error_count += 1
        if len(self.stats.errors) < _MAX_NOTES:
            self.stats.errors.append(text)
        log.debug("plivo stream %s: %s", self.stream_id, text)

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.stats.events_in["<binary>"] += 1
            self.note_error("a binary frame (Plivo's messages are JSON text, GUIDE)")
            return
        size = len(message) if message.isascii() else len(message.encode("utf-8"))
        if size > MAX_MESSAGE_BYTES:
            self.stats.events_in["<too big>"] += 1
            self.note_error(f"a message of {size} bytes, over Plivo's 64 KB limit (GUIDE): dropped")
            return
        try:
            data = json.loads(message)
        except ValueError:
            self.stats.events_in["<not json>"] += 1
            self.note_error("a message that is not JSON")
            return
        event = data.get("event") if isinstance(data, dict) else None
        if not isinstance(event, str) or not event:
            self.stats.events_in["<no event>"] += 1
            self.note_error("a message with no event name")
            return
        self.stats.events_in[event] += 1
        if event in ("checkpoint", "clearAudio", "playAudio") and not self._own_stream(data):
            self.note_error(f"{event} for stream {data.get('streamId')!r}, not {self.stream_id}")
            return
        match event:
            case "playAudio":
                self._play_audio(data, size)
            case "checkpoint":
                self._checkpoint(data)
            case "clearAudio":
                await self._clear_audio()
            case "sendDTMF":
                self._send_dtmf(data)
            case _:
                # PROTOREF lists no other message to Plivo; noted, as Plivo would ignore it.
                self.stats.unknown_events[event] += 1

    def _own_stream(self, data: Mapping[str, Any]) -> bool:
        """``streamId`` absent (playAudio documents none) or this stream's."""
        stream = data.get("streamId")
        return stream is None or stream == self.stream_id

    def _play_audio(self, data: Mapping[str, Any], size: int) -> None:
        """Queue a playAudio (the play-audio-event page; PROTOREF): ``contentType`` without
        ``;rate=``, one of the documented pairs and the stream's own format ("must match
        what was specified in your Stream XML"); ``sampleRate`` a number (XMLNEW shows a
        string: both taken); ``payload`` raw audio in base64."""
        if not self.bidirectional:
            self.note_error("playAudio on a stream that is not bidirectional (XMLREF): ignored")
            return
        media = data.get("media")
        if not isinstance(media, dict):
            self.note_error("playAudio without a media object")
            return
        content_type, rate = media.get("contentType"), media.get("sampleRate")
        if isinstance(rate, str) and rate.isdigit():
            rate = int(rate)
        if (content_type, rate) not in PLAY_FORMATS:
            self.note_error(
                f"playAudio contentType/sampleRate {content_type!r}/{rate!r}: not documented"
            )
            return
        if (content_type, rate) != (self.encoding, SAMPLE_RATE):
            self.note_error(
                f"playAudio in {content_type}/{rate} on a {self.encoding}/{SAMPLE_RATE} stream"
            )
            return
        payload = media.get("payload")
        try:
            audio = base64.b64decode(payload, validate=True) if isinstance(payload, str) else None
        except (binascii.Error, ValueError):
            audio = None
        if audio is None:
            self.note_error("playAudio payload is not base64")
            return
        if self.encoding == L16 and len(audio) % 2:
            self.note_error("playAudio L16 payload of an odd number of bytes")
            audio = audio[:-1]
        pcm = ulaw_decode(audio) if self.encoding == MULAW else audio
        if len(self._queue) + len(pcm) > self._limit_bytes:
            self.note_error(f"playback queue over {QUEUE_LIMIT_S:.0f} s (GUIDE): playAudio dropped")
            return
        self._queue.append(pcm)
        arrival = PlayAudioArrival(time.monotonic(), size, len(pcm) / (SAMPLE_RATE * 2) * 1000.0)
        self.stats.play_audio.append(arrival)

    def _checkpoint(self, data: Mapping[str, Any]) -> None:
        """A checkpoint at the queue's end: played once the queue passes it (PROTOREF)."""
        name = data.get("name")
        if not isinstance(name, str):
            self.note_error("checkpoint without a name")
            return
        record = CheckpointRecord(name, time.monotonic())
        self.stats.checkpoints.append(record)
        self._pending.append((self._queue.queued, record))

    async def _clear_audio(self) -> None:
        """Drop the queue and the checkpoints waiting on it (the checkpoint page: a
        playedStream only when "the preceding events were played successfully"), then
        answer ``clearedAudio`` (PROTOREF)."""
        self._queue.clear()
        for _, record in self._pending:
            record.cleared = True
        self._pending.clear()
        self._cleared_since_audio = True
        self.stats.clears.append(time.monotonic())
        await self._send(cleared_audio_event(0, self.stream_id))

    def _send_dtmf(self, data: Mapping[str, Any]) -> None:
        """``sendDTMF`` ``{"dtmf": "<digits>"}`` (EVPROTO names it; the body is
        plivo-labs/agent-transport's): the keys are played into the call."""
        digits = data.get("dtmf")
        if not isinstance(digits, str) or not _DIGITS.match(digits.upper()):
            self.note_error(f"sendDTMF with keys {digits!r}")
            return
        now = time.monotonic()
        for key in digits.upper():
            self.call.dtmf_received.append((key, "stream", now))


# -- the answer_url --------------------------------------------------------------------------


class StreamAnswerError(RuntimeError):
    """The answer_url did not answer with a stream Plivo would open (``status``: HTTP)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StreamTarget:
    """The ``<Stream>`` of an answer: where Plivo connects and what it sends on start."""

    url: str
    extra_headers: str = ""
    encoding: str = MULAW
    bidirectional: bool = False
    keep_call_alive: bool = False
    call_id: str = ""  # the URL's ``call`` parameter, else the answer's CallUUID

    def peer(self, **kwargs: Any) -> PlivoStreamPeer:
        """A peer for this stream (``kwargs``: the rest of `PlivoStreamPeer`'s options)."""
        return PlivoStreamPeer(
            self.url,
            call_id=self.call_id or None,
            extra_headers=self.extra_headers,
            encoding=self.encoding,
            bidirectional=self.bidirectional,
            **kwargs,
        )


def answer_params(call_uuid: str, caller: str, called: str) -> dict[str, str]:
    """The answer_url request of an incoming call (https://docs.plivo.com/docs/voice/xml/
    request: CallUUID, From, To, Direction, CallStatus)."""
    return {
        "CallUUID": call_uuid,
        "From": caller,
        "To": called,
        "Direction": "inbound",
        "CallStatus": "ringing",
    }


def parse_stream_answer(xml: str, call_uuid: str = "") -> StreamTarget:
    """The first ``<Stream>`` of an answer (XMLREF, XMLNEW, GUIDE): the URL is its text;
    ``bidirectional`` and ``keepCallAlive`` default false; ``contentType`` defaults to
    ``audio/x-l16;rate=8000`` (XMLREF, XMLNEW and the API pages; GUIDE says μ-law: set it).
    Raises `StreamAnswerError` when there is none or it asks for what Plivo refuses."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise StreamAnswerError(f"the answer is not XML: {exc}") from None
    stream = next(root.iter("Stream"), None)
    if stream is None:
        raise StreamAnswerError(f"the answer has no <Stream>: {xml[:200]!r}")
    url = (stream.text or "").strip()
    if not url.lower().startswith(("ws://", "wss://")):
        raise StreamAnswerError(f"<Stream> URL is not a WebSocket URL: {url[:200]!r}")
    if len(url) > 2048:
        raise StreamAnswerError('<Stream> URL over 2048 characters (GUIDE "Limits")')
    bidirectional = stream.get("bidirectional", "false").strip().lower() == "true"
    track = stream.get("audioTrack", "inbound").strip()
    if bidirectional and track != "inbound":
        raise StreamAnswerError(f"audioTrack={track!r} with bidirectional (XMLREF: inbound only)")
    content_type = stream.get("contentType", f"{L16};rate=8000")
    encoding, _, rate = (p.strip().lower() for p in content_type.partition(";"))
    rate = rate.removeprefix("rate=") or "8000"
    if (encoding, rate) not in ((MULAW, "8000"), (L16, "8000")):
        raise StreamAnswerError(f"contentType {content_type!r}: the emulator plays 8 kHz only")
    return StreamTarget(
        url=url,
        extra_headers=stream.get("extraHeaders", ""),
        encoding=encoding,
        bidirectional=bidirectional,
        keep_call_alive=stream.get("keepCallAlive", "false").strip().lower() == "true",
        call_id=_query_call(url) or call_uuid,
    )


def fetch_stream_answer(
    answer_url: str,
    params: Mapping[str, str],
    auth_token: str = "",
    timeout: float = 10.0,
) -> StreamTarget:
    """POST the answer_url as Plivo does (form-encoded, signed with ``X-Plivo-Signature-V3``
    and its nonce when ``auth_token`` is given: https://docs.plivo.com/docs/voice/concepts/
    signature-validation/) and read the ``<Stream>`` of the XML (at most 100 KB,
    https://docs.plivo.com/docs/voice/xml/request). Blocking."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token:
        nonce = str(secrets.randbelow(10**20)).zfill(20)
        signature = expected_signature(auth_token, "POST", answer_url, params, nonce)
        headers.update({SIGNATURE_HEADER: signature.decode("ascii"), NONCE_HEADER: nonce})
    body = urllib.parse.urlencode(dict(params)).encode("ascii")
    req = urllib.request.Request(answer_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, xml = int(resp.status), resp.read(100 * 1024 + 1)
    except urllib.error.HTTPError as exc:
        with exc:
            text = exc.read(200).decode("utf-8", "replace")
        raise StreamAnswerError(
            f"answer_url refused: {exc.code} {text}".strip(), exc.code
        ) from None
    except (OSError, ValueError) as exc:
        raise StreamAnswerError(f"answer_url unreachable: {exc}") from None
    if len(xml) > 100 * 1024:
        raise StreamAnswerError("the answer is over Plivo's 100 KB", status)
    return parse_stream_answer(xml.decode("utf-8", "replace"), params.get("CallUUID", ""))


# -- the softphone's dialer ------------------------------------------------------------------


class StreamDialerError(RuntimeError):
    """A stream call cannot do that (message meant for the user)."""


class StreamDialer:
    """`gateway.sip.dialer.Dialer`'s interface over a Plivo stream, for `Softphone`: one
    `PlivoStreamPeer` on an asyncio loop on a thread of its own.

    ``dial(url)`` with a ``ws://``/``wss://`` URL connects there; with an ``http(s)://``
    URL it first plays the answer_url request (`fetch_stream_answer`) and connects to the
    ``<Stream>`` of the answer.
    """

    error: ClassVar[type[Exception]] = StreamDialerError

    def __init__(
        self,
        *,
        auth_token: str = "",
        extra_headers: str = "",
        send_stop: bool = True,
        caller: str = "+15550100001",
        called: str = "+15550100002",
        call_uuid: str = "",
    ) -> None:
        self.call_uuid = call_uuid  # the answer_url's CallUUID ("": a new one)
        self.auth_token = auth_token
        self.extra_headers = extra_headers
        self.send_stop = send_stop
        self.caller, self.called = caller, called
        self.transfers: list[Any] = []  # SIP REFERs only: a stream has none
        self.peer: PlivoStreamPeer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._flow: concurrent.futures.Future[None] | None = None

    @property
    def alive(self) -> bool:
        """Whether the dialer's thread still runs (after `stop`: it did not stop in time)."""
        return self._thread is not None and self._thread.is_alive()

    def summary(self) -> dict[str, Any]:
        """The stream as Plivo saw it, for the JSON report: events each way, clearAudio
        arrivals, protocol errors and the longest underrun inside a bot turn (ms)."""
        peer = self.peer
        if peer is None:
            return {}
        stats = peer.stats
        return {
            "events_in": dict(stats.events_in),
            "events_out": dict(stats.events_out),
            "clear_audio": len(stats.clears),
            "protocol_errors": stats.error_count,
            "max_underrun_ms": round(stats.max_underrun_s() * 1000.0, 1),
        }

    @property
    def notes(self) -> list[str]:
        """What the bot did wrong on the stream (protocol errors), for the report."""
        peer = self.peer
        if peer is None:
            return []
        stats = peer.stats
        out = [f"stream: {e}" for e in stats.errors]
        if stats.error_count > len(stats.errors):
            out.append(f"stream: {stats.error_count - len(stats.errors)} more protocol errors")
        for name, count in sorted(stats.unknown_events.items()):
            out.append(f"stream: the bot sent {count} {name!r} event(s) Plivo does not document")
        return out

    def start(self) -> None:
        """Start the loop thread."""
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            ready.set()
            await self._stopping.wait()
            await self._shutdown()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="plivo-stream")
        self._thread.start()
        if not ready.wait(5):
            raise StreamDialerError("the stream client's loop did not start")

    def dial(self, uri: str, headers: dict[str, str] | None = None) -> StreamCall:
        """Open the stream (returns at once with the call's state object)."""
        call = StreamCall(uri)
        self._flow = asyncio.run_coroutine_threadsafe(
            self._place(call, uri, dict(headers or {})), self._running_loop()
        )
        return call

    async def _place(self, call: StreamCall, uri: str, headers: dict[str, str]) -> None:
        answer_url = uri.lower().startswith(("http://", "https://"))
        target = StreamTarget(uri, self.extra_headers, bidirectional=True, keep_call_alive=True)
        try:
            if answer_url:
                call_uuid = self.call_uuid or str(uuid.uuid4())
                params = answer_params(call_uuid, self.caller, self.called)
                target = await asyncio.to_thread(fetch_stream_answer, uri, params, self.auth_token)
        except StreamAnswerError as exc:
            call.status_code, call.reason = exc.status, str(exc)
            call.ended_at = time.monotonic()
            call.ended.set()
            return
        except asyncio.CancelledError:
            call.reason, call.ended_at = "hung up before the stream opened", time.monotonic()
            call.ended.set()
            raise
        peer = target.peer(call=call, headers=headers, auth_token=self.auth_token)
        if not target.keep_call_alive:
            # XMLREF: without it the XML goes on at once (and a last <Stream> ends the call).
            peer.note_error('the <Stream> has no keepCallAlive="true": Plivo would not wait on it')
        self.peer = peer
        await peer.run()

    def hangup(self) -> None:
        """End the call: a ``stop`` event (unless ``send_stop`` is off), then the close."""

        async def job() -> None:
            if self.peer is not None and self.peer.ws is not None:
                await self.peer.hangup(send_stop=self.send_stop)
            elif self._flow is not None:
                self._flow.cancel()

        asyncio.run_coroutine_threadsafe(job(), self._running_loop()).result(10)

    def send_dtmf(
        self, digits: str, method: str = "rfc4733", duration_ms: int = DTMF_GAP_MS
    ) -> None:
        """Press keys: ``dtmf`` events one after another, ``duration_ms`` apart (returns at
        once). Plivo reports keys only as stream events: ``method`` "info" is refused."""
        if method == "info":
            raise StreamDialerError("SIP INFO keys: not on a Plivo stream")

        async def job() -> None:
            if self.peer is None or self.peer.ws is None:
                raise StreamDialerError("no stream to send keys on")
            self.peer.press(digits, duration_ms)

        asyncio.run_coroutine_threadsafe(job(), self._running_loop()).result(10)

    def hold(self) -> None:
        """SIP only."""
        raise StreamDialerError("hold: not on a Plivo stream")

    def unhold(self) -> None:
        """SIP only."""
        raise StreamDialerError("unhold: not on a Plivo stream")

    def switch_codec(self, codec: str) -> None:
        """SIP only."""
        raise StreamDialerError(f"re-INVITE to {codec}: not on a Plivo stream")

    def refresh(self) -> None:
        """SIP only."""
        raise StreamDialerError("UPDATE: not on a Plivo stream")

    def stop(self) -> None:
        """Close the stream if still open and stop the thread (waits up to ~10 s)."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(10)

    async def _shutdown(self) -> None:
        peer, flow = self.peer, self._flow
        if peer is not None and peer.ws is not None and not peer.call.ended.is_set():
            try:
                async with asyncio.timeout(3):
                    await peer.hangup(send_stop=self.send_stop)
            except TimeoutError:
                peer.drop()
        if flow is not None and not flow.done():
            flow.cancel()
        # Let the call's task finish before asyncio.run cancels what is left.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=3)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or not self.alive:
            raise StreamDialerError("the stream dialer is not started")
        return self._loop
