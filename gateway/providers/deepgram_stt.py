"""Deepgram streaming speech-to-text over the live ``/v1/listen`` WebSocket (official SDK).

Audio goes out raw: ``encoding=linear16``, ``sample_rate=8000``, ``channels=1``, exactly the
call's 8 kHz 16-bit mono PCM, no resampling.  ``interim_results=true`` (required for
``utterance_end_ms``) gives interim transcripts, exposed through `DeepgramSttStream.on_interim`.

Latency: opening a WebSocket to Deepgram costs a TLS handshake and an HTTP upgrade, too slow
to do when the caller starts speaking.  `DeepgramStt` keeps up to `warm_sockets` connections
open ahead of time (per process, shared by the calls of the process).  Deepgram closes a
socket after about 10 s without audio, so every socket that sent nothing for `keepalive_s`
sends ``{"type": "KeepAlive"}`` (Deepgram asks for one every 3-5 s); this is what keeps the
next utterance's socket alive while the agent speaks.  Sockets idle longer than
`max_idle_s`, and broken ones, are closed; `close()` closes all.

One utterance (`DeepgramSttStream`): audio is sent as it is fed and also kept.  `finish()`
sends ``{"type": "Finalize"}`` and waits up to `final_timeout_s` for the ``Results`` with
``from_finalize: true``; the final segments (``is_final: true``) of the utterance are joined.
If the socket drops mid-utterance the stream reconnects once and resends the kept audio, so
no word is lost (finals of the dropped socket are discarded: the resent audio covers them);
if that fails too, `finish()` raises `ProviderError` kind ``"disconnect"``.

The base URL is set the way the SDK means it: a `DeepgramClientEnvironment` whose
``production`` entry is the WebSocket base (``wss://api.deepgram.com`` by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.api_error import ApiError
from deepgram.listen.v1 import ListenV1Error, ListenV1Results, ListenV1UtteranceEnd
from deepgram.listen.v1.socket_client import AsyncV1SocketClient

from gateway.providers.base import ProviderError, SttProvider, SttStream
from sip_config import Settings, vendor_key

__all__ = ["DeepgramStt", "DeepgramSttStream"]

log = logging.getLogger(__name__)

PROVIDER = "deepgram"
SAMPLE_RATE = 8000
RESEND_CHUNK_BYTES = 3200  # 100 ms of 8 kHz 16-bit audio per message when resending
CLOSE_TIMEOUT_S = 2.0  # CloseStream + close handshake, then give up waiting
WARM_RETRY_S = 5.0
FINALIZE_GRACE_S = 0.5  # wait for from_finalize this long when every result was final
BYTES_PER_S = SAMPLE_RATE * 2
# finish() trusts an end of utterance (no Finalize) only if at most this much audio was fed
# after it arrived: later audio may hold words whose results are still on their way.
END_FRESH_BYTES = BYTES_PER_S // 10  # 100 ms


def _error(kind: str, message: str, status: int | None = None) -> ProviderError:
    return ProviderError(PROVIDER, kind, message, status=status)


def _environment(base_url: str | None) -> DeepgramClientEnvironment:
    """The SDK environment for `base_url` (``ws[s]://host[:port]``; http[s] is accepted)."""
    if base_url is None:
        return DeepgramClientEnvironment.PRODUCTION
    url = base_url.rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("ws", "wss", "http", "https"):
        raise _error(
            "config", f"base_url must start with ws://, wss://, http:// or https://: {url!r}"
        )
    secure = scheme in ("wss", "https")
    ws = ("wss://" if secure else "ws://") + rest
    http = ("https://" if secure else "http://") + rest
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


@dataclass(frozen=True)
class _Results:
    """What the stream needs of a ``Results`` message."""

    text: str
    is_final: bool
    speech_final: bool
    from_finalize: bool
    last_word_end: float | None  # socket audio time (s) of the last word's end, if any
    end: float | None  # socket audio time (s) where the transcribed audio ends, if given


def _parse_results(msg: Any) -> _Results:
    """The parts of a ``Results`` message the stream uses, or ProviderError."""
    channel = getattr(msg, "channel", None)
    alternatives = getattr(channel, "alternatives", None)
    if not isinstance(alternatives, list) or not alternatives:
        raise _error("malformed", "Results message without channel.alternatives")
    transcript = getattr(alternatives[0], "transcript", None)
    if not isinstance(transcript, str):
        raise _error("malformed", "Results message without channel.alternatives[0].transcript")
    ends = [getattr(w, "end", None) for w in getattr(alternatives[0], "words", None) or []]
    word_ends = [float(e) for e in ends if isinstance(e, int | float)]
    return _Results(
        transcript.strip(),
        bool(getattr(msg, "is_final", False)),
        bool(getattr(msg, "speech_final", False)),
        bool(getattr(msg, "from_finalize", False)),
        max(word_ends) if word_ends else None,
        _seconds(msg, "start") + _seconds(msg, "duration")
        if isinstance(getattr(msg, "start", None), int | float)
        else None,
    )


def _seconds(msg: Any, name: str) -> float:
    value = getattr(msg, name, 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


class _Conn:
    """One open live socket: a reader task, a KeepAlive task, maybe an attached stream."""

    def __init__(
        self,
        owner: DeepgramStt,
        cm: AbstractAsyncContextManager[AsyncV1SocketClient],
        sock: AsyncV1SocketClient,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.owner = owner
        self.cm = cm
        self.sock = sock
        self.stream: DeepgramSttStream | None = None
        self.error: ProviderError | None = None  # why the socket is unusable
        self.lost = asyncio.Event()  # set once the socket cannot be used any more
        self.closing = False
        self.last_sent = loop.time()
        self.idle_since = loop.time()
        self.audio_bytes = 0  # audio sent on this socket: Deepgram's times count from its start
        self.reader = asyncio.create_task(self._read(), name="deepgram-reader")
        self.keeper = asyncio.create_task(self._keep_alive(), name="deepgram-keepalive")

    @property
    def usable(self) -> bool:
        return not self.lost.is_set() and not self.closing

    def mark_lost(self, error: ProviderError) -> None:
        if self.lost.is_set():
            return
        self.error = error
        self.lost.set()
        if self.stream is not None:
            self.stream._wake.set()
        elif not self.closing:
            self.owner._discard(self)

    async def send_audio(self, pcm: bytes) -> None:
        self.last_sent = asyncio.get_running_loop().time()
        await self.sock.send_media(pcm)
        self.audio_bytes += len(pcm)

    async def send_finalize(self) -> None:
        self.last_sent = asyncio.get_running_loop().time()
        await self.sock.send_finalize()

    async def _read(self) -> None:
        error = _error("disconnect", "the connection closed")
        try:
            while True:
                msg = await self.sock.recv()
                kind = getattr(msg, "type", None)
                if isinstance(msg, ListenV1Results) or kind == "Results":
                    results = _parse_results(msg)
                    if self.stream is not None:
                        self.stream._on_results(results)
                elif isinstance(msg, ListenV1UtteranceEnd) or kind == "UtteranceEnd":
                    last = getattr(msg, "last_word_end", None)
                    if self.stream is not None and isinstance(last, int | float):
                        self.stream._on_utterance_end(float(last))
                elif isinstance(msg, ListenV1Error):
                    error = _error("disconnect", f"server error: {msg.variant}: {msg.description}")
                    log.warning("deepgram: %s", error)
                else:
                    # Metadata, SpeechStarted, unknown types: nothing to do.
                    log.debug("deepgram: ignoring %s message", type(msg).__name__)
        except ProviderError as exc:
            error = exc
        except ValueError:  # json.JSONDecodeError
            error = _error("malformed", "a message that is not JSON")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # websockets' ConnectionClosed and transport errors
            error = _error("disconnect", f"the connection dropped ({type(exc).__name__})")
        finally:
            self.mark_lost(error)

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        keepalive_s = self.owner.keepalive_s
        while self.usable:
            now = loop.time()
            if self.stream is None and now - self.idle_since >= self.owner.max_idle_s:
                log.debug("deepgram: closing a socket idle for %.0f s", now - self.idle_since)
                self.owner._discard(self)
                return
            wait = self.last_sent + keepalive_s - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.last_sent = now
            try:
                await self.sock.send_keep_alive()
            except Exception as exc:
                self.mark_lost(_error("disconnect", f"KeepAlive failed ({type(exc).__name__})"))
                return

    async def aclose(self) -> None:
        """Close the socket: CloseStream if it still works, then the close handshake."""
        if self.closing:
            return
        self.closing = True
        self.stream = None
        if asyncio.current_task() is not self.keeper:
            self.keeper.cancel()
        if not self.lost.is_set():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.sock.send_close_stream()
                    await self.lost.wait()  # Metadata, then Deepgram closes the socket
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.cm.__aexit__(None, None, None)
        self.reader.cancel()
        tasks = [t for t in (self.reader, self.keeper) if t is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)


class DeepgramSttStream(SttStream):
    """One caller utterance on a Deepgram socket.  Set `on_interim` for interim transcripts."""

    def __init__(self, owner: DeepgramStt, conn: _Conn) -> None:
        self.on_interim: Callable[[str], None] | None = None
        self._owner = owner
        self._conn: _Conn | None = conn
        self._audio = bytearray()  # the whole utterance, for a resend after a drop
        self._segments: list[str] = []  # final segments, in order
        self._finalizing = False
        self._final_seen = False
        self._heard = False  # a Results arrived on the current socket
        self._pending_interim = False  # an interim arrived after the last final
        self._interim_text = ""  # words of that interim
        self._base_s = conn.audio_bytes / BYTES_PER_S  # socket time of our first byte
        self._last_word_s: float | None = None  # our time of the last word's end
        self._ended_at: int | None = None  # len(_audio) when Deepgram ended the utterance
        self._reconnected = False
        self._failed: ProviderError | None = None
        self._done = False
        self._wake = asyncio.Event()
        conn.stream = self

    @property
    def reconnected(self) -> bool:
        """True when the socket dropped and the utterance went on over a new one."""
        return self._reconnected

    def heard_words(self) -> bool:
        """True once a transcript of this utterance (interim or final) had words."""
        return bool(self._segments or self._interim_text)

    def utterance_end(self) -> float | None:
        """Deepgram's end of the utterance: ``speech_final`` (endpointing) or ``UtteranceEnd``
        after words, and no word since.  The value is how many milliseconds of the audio fed
        so far follow the last word (Deepgram's own wait); None until then."""
        if self._ended_at is None:
            return None
        if self._last_word_s is None:
            return 0.0
        return max(0.0, len(self._audio) * 1000 / BYTES_PER_S - self._last_word_s * 1000)

    def _ended(self) -> None:
        if self.heard_words() and self._ended_at is None:
            self._ended_at = len(self._audio)

    def _on_results(self, r: _Results) -> None:
        if r.end is not None and r.end <= self._base_s and self._base_s > 0:
            return  # the tail of an earlier utterance on this socket, flushed late
        self._heard = True
        self._pending_interim = not r.is_final
        if r.text:
            self._ended_at = None  # words after an end: the caller went on
            if r.last_word_end is not None:
                self._last_word_s = r.last_word_end - self._base_s
        if self._finalizing:
            self._wake.set()  # finish() re-checks whether the transcript is complete
        if r.is_final:
            self._interim_text = ""
            if r.text:
                self._segments.append(r.text)
            if r.from_finalize and self._finalizing:
                self._final_seen = True
                self._wake.set()
            elif r.speech_final:
                self._ended()
        else:
            self._interim_text = r.text
            if self.on_interim is not None:
                try:
                    self.on_interim(" ".join([*self._segments, r.text]).strip())
                except Exception:
                    log.exception("deepgram: on_interim callback failed")

    def _on_utterance_end(self, last_word_end: float) -> None:
        if last_word_end < self._base_s:
            return  # about words of an earlier utterance on this socket
        self._ended()

    async def feed(self, pcm: bytes) -> None:
        """Send a piece of the utterance (and keep it for a resend after a drop)."""
        if self._done or not pcm:
            return
        self._audio += pcm
        if self._failed is not None:
            return
        conn = self._conn
        if conn is None or not conn.usable:
            await self._recover()
            return
        try:
            await conn.send_audio(pcm)
        except Exception as exc:
            conn.mark_lost(_error("disconnect", f"send failed ({type(exc).__name__})"))
            await self._recover()

    async def _recover(self) -> None:
        """The socket is gone: reconnect once and resend the utterance so far."""
        old = self._conn
        if old is not None and old.error is not None and old.error.kind == "malformed":
            self._failed = old.error
            return
        if self._reconnected:
            self._failed = _error("disconnect", "the connection dropped again after a reconnect")
            return
        self._reconnected = True
        if old is not None:
            self._conn = None
            self._owner._schedule_close(old)
        self._segments.clear()  # the resent audio will produce them again
        self._heard = self._pending_interim = False
        self._interim_text = ""
        self._last_word_s = self._ended_at = None
        log.info("deepgram: connection dropped mid-utterance; reconnecting")
        try:
            conn = await self._owner._acquire()
        except ProviderError as exc:
            self._failed = _error("disconnect", f"reconnect failed: {exc.kind}", status=exc.status)
            return
        if self._done:  # cancelled meanwhile
            self._owner._schedule_close(conn)
            return
        conn.stream = self
        self._conn = conn
        self._base_s = conn.audio_bytes / BYTES_PER_S
        self._wake.clear()
        try:
            data = bytes(self._audio)
            for i in range(0, len(data), RESEND_CHUNK_BYTES):
                await conn.send_audio(data[i : i + RESEND_CHUNK_BYTES])
            if self._finalizing:
                await conn.send_finalize()
        except Exception as exc:
            conn.mark_lost(_error("disconnect", f"resend failed ({type(exc).__name__})"))
            self._failed = _error("disconnect", "the connection dropped again after a reconnect")

    async def finish(self) -> str:
        """Finalize and return the utterance's transcript ("" when nothing was heard)."""
        if self._done:
            raise RuntimeError("the stream is already finished or cancelled")
        try:
            text = await self._finish()
        except BaseException:
            self._done = True
            self._release(reuse=False)
            raise
        self._done = True
        self._release(reuse=True)
        return text

    async def _finish(self) -> str:
        loop = asyncio.get_running_loop()
        if not self._audio:
            return ""  # nothing to finalize; Deepgram would not answer
        if (
            self._ended_at is not None
            and not self._interim_text
            and len(self._audio) - self._ended_at <= END_FRESH_BYTES
        ):
            # Deepgram ended the utterance just now and every word is final: no Finalize
            # round trip.  One is still sent, not awaited, so the audio fed after the end
            # is cut off before the socket serves the next utterance.
            conn = self._conn
            if conn is not None and conn.usable:
                with contextlib.suppress(Exception):
                    await conn.send_finalize()
            return " ".join(self._segments)
        self._finalizing = True
        if self._failed is None:
            conn = self._conn
            if conn is None or not conn.usable:
                await self._recover()
            else:
                try:
                    await conn.send_finalize()
                except Exception as exc:
                    conn.mark_lost(_error("disconnect", f"send failed ({type(exc).__name__})"))
        timeout_s = self._owner.final_timeout_s
        started = loop.time()
        while True:
            if self._failed is not None:
                raise self._failed
            if self._final_seen:
                return " ".join(self._segments)
            conn = self._conn
            if conn is None or conn.lost.is_set():
                await self._recover()
                started = loop.time()
                continue
            # Deepgram does not promise a from_finalize answer when it had nothing left to
            # flush.  When it did answer and the last answer was final, the transcript is
            # complete: wait only a short grace for from_finalize, then return it.
            complete = self._heard and not self._pending_interim
            limit = min(timeout_s, FINALIZE_GRACE_S) if complete else timeout_s
            remaining = started + limit - loop.time()
            if remaining <= 0:
                if complete:
                    return " ".join(self._segments)
                raise _error("timeout", f"no final transcript within {timeout_s:g} s")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    def _release(self, *, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.stream = None
        if reuse:
            self._owner._give_back(conn)
        else:
            self._owner._schedule_close(conn)

    async def cancel(self) -> None:
        """Drop the utterance; its socket is closed.  Safe to call more than once."""
        if self._done:
            return
        self._done = True
        self._wake.set()
        self._release(reuse=False)


class DeepgramStt(SttProvider):
    """Deepgram live STT with a small pool of warm, kept-alive sockets (see module docs)."""

    name = "deepgram"

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        model: str = "nova-3",
        language: str = "en-US",
        endpointing_ms: int = 300,
        utterance_end_ms: int = 1000,
        connect_timeout_s: float = 3.0,
        final_timeout_s: float = 2.0,
        keepalive_s: float = 4.0,
        warm_sockets: int = 4,
        *,
        max_idle_s: float = 60.0,
        smart_format: bool = True,
    ) -> None:
        if not api_key:
            raise _error("config", "an API key is required")
        self.model = model
        self.language = language
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.connect_timeout_s = connect_timeout_s
        self.final_timeout_s = final_timeout_s
        self.keepalive_s = keepalive_s
        self.warm_sockets = max(0, warm_sockets)
        self.max_idle_s = max_idle_s
        self.smart_format = smart_format
        self._client = AsyncDeepgramClient(api_key=api_key, environment=_environment(base_url))
        self._idle: list[_Conn] = []  # warm sockets, oldest first
        self._conns: set[_Conn] = set()  # every open socket
        self._warming: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._warm_after = 0.0  # loop time before which no warm-up is started (after failures)
        self._closed = False

    # -- public API ------------------------------------------------------------------------

    async def open_stream(self, expect: str | None = None) -> DeepgramSttStream:
        """A stream on a warm socket if one is ready (else a new one); refills the pool.
        `expect` is not used: the socket was opened, with its options, before the turn."""
        if self._closed:
            raise _error("config", "the provider is closed")
        conn = await self._acquire()
        stream = DeepgramSttStream(self, conn)
        self._top_up()
        return stream

    async def warm_up(self) -> None:
        """Open the pool's sockets now and wait for them (e.g. when the worker starts)."""
        self._warm_after = 0.0
        self._top_up()
        if self._warming:
            await asyncio.gather(*self._warming, return_exceptions=True)

    @property
    def warm_count(self) -> int:
        """How many warm sockets are ready."""
        return sum(1 for c in self._idle if c.usable)

    async def close(self) -> None:
        """Close every socket and stop warming; the provider cannot be used afterwards."""
        self._closed = True
        for task in list(self._warming):
            task.cancel()
        if self._warming:
            await asyncio.gather(*self._warming, return_exceptions=True)
        self._idle.clear()
        for conn in list(self._conns):
            self._schedule_close(conn)
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- the pool --------------------------------------------------------------------------

    async def _acquire(self) -> _Conn:
        if self._closed:
            raise _error("config", "the provider is closed")
        while self._idle:
            conn = self._idle.pop(0)
            if conn.usable:
                return conn
            self._schedule_close(conn)
        return await self._connect()

    def _top_up(self) -> None:
        loop = asyncio.get_running_loop()
        if self._closed or loop.time() < self._warm_after:
            return
        for _ in range(self.warm_sockets - len(self._idle) - len(self._warming)):
            task = asyncio.create_task(self._warm_one(), name="deepgram-warm")
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    async def _warm_one(self) -> None:
        try:
            conn = await self._connect()
        except ProviderError as exc:
            log.warning("deepgram: warming a socket failed: %s", exc)
            self._warm_after = asyncio.get_running_loop().time() + WARM_RETRY_S
            return
        if self._closed:
            self._schedule_close(conn)
        else:
            self._idle.append(conn)

    def _give_back(self, conn: _Conn) -> None:
        """A stream is done with `conn`: keep it warm if the pool has room, else close it."""
        room = self.warm_sockets - len(self._idle) - len(self._warming)
        if self._closed or not conn.usable or room <= 0:
            self._schedule_close(conn)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        """An idle socket broke or idled too long: drop it from the pool and close it."""
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        self._schedule_close(conn)

    def _schedule_close(self, conn: _Conn) -> None:
        if conn.closing or conn not in self._conns:
            return
        self._conns.discard(conn)
        task = asyncio.create_task(conn.aclose(), name="deepgram-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _connect(self) -> _Conn:
        cm = self._client.listen.v1.connect(
            model=self.model,
            language=self.language,
            encoding="linear16",
            sample_rate=SAMPLE_RATE,
            channels=1,
            interim_results="true",
            endpointing=self.endpointing_ms,
            utterance_end_ms=self.utterance_end_ms,
            vad_events="true",
            punctuate="true",
            smart_format="true" if self.smart_format else "false",
        )
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                sock = await cm.__aenter__()
        except TimeoutError:
            raise _error("timeout", f"no connection within {self.connect_timeout_s:g} s") from None
        except ApiError as exc:
            status = exc.status_code
            if status in (401, 403):
                raise _error("auth", f"the API key was refused (HTTP {status})", status) from None
            raise _error("http", f"the WebSocket upgrade failed (HTTP {status})", status) from None
        except OSError as exc:
            raise _error("disconnect", f"cannot connect ({type(exc).__name__})") from None
        except Exception as exc:  # websockets' InvalidHandshake and friends
            raise _error("http", f"the WebSocket upgrade failed ({type(exc).__name__})") from None
        conn = _Conn(self, cm, sock)
        self._conns.add(conn)
        if self._closed:
            self._schedule_close(conn)
            raise _error("config", "the provider is closed")
        return conn


def build(s: Settings) -> DeepgramStt:
    """The provider as the settings configure it (the registry's factory for it)."""
    d = s.deepgram
    return DeepgramStt(
        api_key=vendor_key(s, "deepgram"),
        base_url=d.base_url,
        model=d.model,
        language=d.language,
        endpointing_ms=d.endpointing_ms,
        utterance_end_ms=d.utterance_end_ms,
        final_timeout_s=s.providers.stt_timeout_s,
        warm_sockets=s.sip.max_calls,
    )
