"""Brains that relay the conversation to the customer's own bot over HTTP.

`BotBrain` is the shared machinery: the HTTP client, the reply contract below, audio
replies, and replies the bot pushes later.  Two modes build on it:

* ``providers.brain = "webhook"`` - `WebhookBrain` (this module): request/response.  Each
  request is answered with what the agent says next (or ``"pending": true`` and the answer
  pushed later).
* ``providers.brain = "external"`` - `gateway.providers.ocs_brain.OcsBrain`: sipagent is
  the DCS (Dialer Connector Service) of an Ori-style OCS; the caller's words go to
  ``ocs_url`` and OCS answers by POSTing to the app's ``/dcs/response``.

Webhook JSON contract (every request is ``POST`` with ``Content-Type: application/json``
and the configured ``headers``, e.g. an auth header, sent as they are):

* Call start - ``POST start_url``::

      {"call_id": "<SIP Call-ID>", "call_uuid": "<Plivo CallUUID>",
       "from": "+14155550100", "to": "+442071234567",
       "headers": {"X-PH-Customer": "gold", ...},
       "reply_url": "https://agent.example/bot/calls/<call_id>/reply"}

  ``from``/``to`` are the numbers Plivo saw (the SIP URIs when unknown); ``headers`` holds
  the call's ``X-PH-*`` headers.  The reply (below) is the greeting.  Without a
  ``start_url`` nothing is posted and the configured ``greeting`` is spoken.

* Each caller turn - ``POST turn_url``::

      {"call_id": "...", "call_uuid": "...", "text": "<transcript, maybe empty>", "turn": 1,
       "reply_url": "..."}

  ``turn`` counts the caller's turns from 1; ``reply_url`` is only sent when configured.

* Reply (the answer to either request, and the body of an asynchronous push)::

      {"text": "Your balance is ten dollars.",      # optional: text to speak
       "audio_url": "https://bot.example/a.wav",    # optional: audio to play instead
       "actions": ["hangup"],                       # optional (or "end_call": true)
       "intent": "balance",                         # optional, for the call records
       "pending": true}                             # optional, see below

  Other fields are ignored.  ``audio_url`` (``http``/``https``) is fetched - with the
  configured headers only when it is on the same origin as one of the configured URLs -
  and must be a WAV (PCM 8/16/24/32 bit) or an MP3 file of at most ``max_audio_bytes``; it
  is downmixed to mono and resampled to 8 kHz.  A ``text`` without ``audio_url`` is spoken
  by the gateway's TTS, or, with a ``tts_url``, by ``POST tts_url {"text": "..."}``, whose
  answer is audio: WAV, MP3 or raw PCM as ``audio/L16;rate=8000`` (big-endian per RFC
  2586; ``;endianness=little-endian`` for little-endian; ``channels=N`` allowed).  Audio
  replies are `AudioReply` objects: ``text`` is kept for the records, ``audio`` is what to
  play.

* Asynchronous replies - a bot that needs time answers ``"pending": true``, alone (the
  caller hears nothing yet) or with a holding line in ``text``/``audio_url`` ("one moment,
  please"), and later POSTs the real reply - the same JSON, not pending - to the gateway's
  app at ``reply_url`` (sent in every request when configured: ``POST
  /bot/calls/<call_id>/reply``), which hands it to `BotBrain.deliver`.  The pending reply
  comes back at once as a `BrainReply` with ``pending_s = pending_timeout_s``; the
  conversation plays pushed replies as agent turns (`BotBrain.wait_pushed`, after the turn
  in progress) and apologises when none comes in time.  Pushed replies are kept in a small
  per-call queue (the newest `MAX_PUSHED`) until taken.

Errors are ``ProviderError(<brain name>, kind, ...)``: ``auth`` (401/403), ``http`` (other
non-2xx statuses, ``status`` set), ``timeout`` (no answer within ``timeout_s``, audio not
fetched within ``audio_timeout_s``), ``disconnect`` (cannot connect, or the connection
dropped), ``malformed`` (not JSON, not the contract above, audio that does not
decode or is larger than ``max_audio_bytes``).  Nothing is retried here: that is the
failover layer's job.  Messages never contain the configured header values.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import wave
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import miniaudio  # type: ignore[import-untyped]
import numpy as np

from gateway.audio.pcm import SAMPLE_RATE, resample
from gateway.providers.base import Brain, BrainReply, CallContext, ProviderError
from sip_config import Settings

__all__ = [
    "MAX_PUSHED",
    "AudioReply",
    "BotBrain",
    "BotReply",
    "WebhookBrain",
    "decode_audio",
    "parse_reply",
]

log = logging.getLogger(__name__)

PROVIDER = "bot"
"""The provider named in errors of the reply and audio parsers (the brains use their own)."""
MAX_PUSHED = 8
"""Pushed replies kept per call while nobody takes them (the oldest are dropped)."""
MAX_JSON_BYTES = 1_000_000
"""The largest JSON answer accepted from the bot."""
_MAX_ACTION_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class AudioReply(BrainReply):
    """A reply to play as audio: `audio` is 8 kHz 16-bit mono PCM; `text` is for records."""

    audio: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class BotReply:
    """One validated reply of the bot, before its audio is fetched or synthesised."""

    text: str = ""
    audio_url: str | None = None
    actions: tuple[str, ...] = ()
    intent: str | None = None
    pending: bool = False

    @property
    def has_content(self) -> bool:
        return bool(self.text or self.audio_url)


def _malformed(message: str) -> ProviderError:
    return ProviderError(PROVIDER, "malformed", message)


def parse_reply(payload: object) -> BotReply:
    """Validate a reply object of the contract; raises ``ProviderError(kind="malformed")``."""
    if not isinstance(payload, dict):
        raise _malformed("the reply is not a JSON object")
    text = payload.get("text")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise _malformed("'text' is not a string")
    audio_url = payload.get("audio_url")
    if audio_url is not None:
        if not isinstance(audio_url, str) or urlsplit(audio_url).scheme not in ("http", "https"):
            raise _malformed("'audio_url' is not an http(s) URL")
        if not urlsplit(audio_url).hostname:
            raise _malformed("'audio_url' has no host")
    raw_actions = payload.get("actions", [])
    if raw_actions is None:
        raw_actions = []
    if not isinstance(raw_actions, list):
        raise _malformed("'actions' is not a list")
    actions: list[str] = []
    for action in raw_actions:
        if (
            not isinstance(action, str)
            or not action
            or len(action) > _MAX_ACTION_CHARS
            or _CONTROL.search(action)
        ):
            raise _malformed("an action is not a short string")
        if action not in actions:
            actions.append(action)
    end_call = payload.get("end_call", False)
    if not isinstance(end_call, bool):
        raise _malformed("'end_call' is not a boolean")
    if end_call and "hangup" not in actions:
        actions.append("hangup")
    intent = payload.get("intent")
    if intent is not None and not isinstance(intent, str):
        raise _malformed("'intent' is not a string")
    pending = payload.get("pending", False)
    if not isinstance(pending, bool):
        raise _malformed("'pending' is not a boolean")
    return BotReply(
        text=text.strip(),
        audio_url=audio_url or None,
        actions=tuple(actions),
        intent=intent or None,
        pending=pending,
    )


# -- audio ------------------------------------------------------------------------------------


def _to_8k_mono(samples: np.ndarray, channels: int, rate: int) -> bytes:
    """int32 interleaved samples -> 8 kHz int16 mono PCM."""
    if channels < 1 or rate <= 0:
        raise _malformed("bad channel count or sample rate")
    usable = samples.size - samples.size % channels
    if usable == 0:
        raise _malformed("the audio holds no samples")
    if channels > 1:
        samples = samples[:usable].reshape(-1, channels).mean(axis=1).round().astype(np.int32)
    mono = np.clip(samples, -32768, 32767).astype("<i2").tobytes()
    return resample(mono, rate, SAMPLE_RATE)


def _decode_wav(data: bytes) -> bytes:
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate = wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, ValueError) as exc:
        raise _malformed(f"unreadable WAV: {exc}") from None
    raw = raw[: len(raw) - len(raw) % width] if width else b""
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.int32) - 128) * 256
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.int32)
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        samples = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8) >> 16
    elif width == 4:
        samples = (np.frombuffer(raw, dtype="<i4") >> 16).astype(np.int32)
    else:
        raise _malformed(f"unsupported WAV sample width {width * 8} bits")
    return _to_8k_mono(samples, channels, rate)


def _decode_mp3(data: bytes) -> bytes:
    try:
        decoded = miniaudio.mp3_read_s16(data)
    except Exception as exc:  # miniaudio.DecodeError and friends
        raise _malformed(f"unreadable MP3: {exc}") from None
    samples = np.frombuffer(decoded.samples, dtype=np.int16).astype(np.int32)
    return _to_8k_mono(samples, int(decoded.nchannels), int(decoded.sample_rate))


def _decode_l16(data: bytes, params: Mapping[str, str]) -> bytes:
    try:
        rate = int(params.get("rate", SAMPLE_RATE))
        channels = int(params.get("channels", "1"))
    except ValueError:
        raise _malformed("bad audio/L16 parameters") from None
    little = params.get("endianness", "").lower() in ("little-endian", "little", "le")
    raw = data[: len(data) - len(data) % 2]
    samples = np.frombuffer(raw, dtype="<i2" if little else ">i2").astype(np.int32)
    return _to_8k_mono(samples, channels, rate)


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = content_type.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            params[name.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def _looks_like_mp3(data: bytes) -> bool:
    return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


def decode_audio(data: bytes, content_type: str = "") -> bytes:
    """Decode a WAV, MP3 or ``audio/L16`` body into 8 kHz 16-bit mono PCM.

    The bytes decide between WAV and MP3 (servers often say ``application/octet-stream``);
    raw PCM is recognised by its ``audio/L16`` content type only.  Raises
    ``ProviderError(kind="malformed")`` for anything else or audio without samples.
    """
    kind, params = _media_type(content_type)
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return _decode_wav(data)
    if kind == "audio/l16":
        return _decode_l16(data, params)
    if _looks_like_mp3(data) or kind in ("audio/mpeg", "audio/mp3"):
        return _decode_mp3(data)
    raise _malformed(f"unsupported audio ({kind or 'no content type'})")


# -- per-call state -----------------------------------------------------------------------------


@dataclass
class _Call:
    loop: asyncio.AbstractEventLoop
    turns: int = 0
    pushed: deque[asyncio.Task[BrainReply]] = field(default_factory=deque)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


def _retrieve(task: asyncio.Task[BrainReply]) -> None:
    """Mark a render's failure as seen (it is raised to whoever takes the reply)."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("pushed reply could not be prepared: %s", task.exception())


class BotBrain(Brain):
    """What the bot brains share: HTTP to the bot, rendering replies, pushed replies.

    Subclasses implement `greeting` and `respond`; see the module docstring.
    """

    streams = False
    pushes = True

    def __init__(
        self,
        *,
        urls: Mapping[str, str | None],
        tts_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
        pending_timeout_s: float = 10.0,
        max_audio_bytes: int = 20_000_000,
        audio_timeout_s: float = 20.0,
        no_input_prompts: tuple[str, str] = (
            "Sorry, I didn't catch that. Are you still there?",
            "I can't hear you, so I'll hang up now. Goodbye.",
        ),
        max_calls: int = 1024,
    ) -> None:
        """`urls` names the bot's endpoints (for error messages); the configured headers
        go to their origins and `tts_url`'s only.

        Raises ``ProviderError(kind="config")`` for unusable settings.
        """
        for label, url in {**urls, "tts_url": tts_url}.items():
            if url is not None and url != "" and urlsplit(url).scheme not in ("http", "https"):
                raise ProviderError(self.name, "config", f"{label} is not an http(s) URL")
        if min(timeout_s, pending_timeout_s, audio_timeout_s) <= 0:
            raise ProviderError(self.name, "config", "timeouts must be positive")
        if max_audio_bytes < 1 or max_calls < 1:
            raise ProviderError(self.name, "config", "limits must be positive")
        self.tts_url = tts_url or None
        self._headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.pending_timeout_s = pending_timeout_s
        self.max_audio_bytes = max_audio_bytes
        self.audio_timeout_s = audio_timeout_s
        self.no_input_prompts = no_input_prompts
        self.max_calls = max_calls
        self._origins = {_origin(u) for u in (*urls.values(), self.tts_url) if u}
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- HTTP -----------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._http = httpx.AsyncClient(follow_redirects=True)
            self._loop = loop
        return self._http

    async def close(self) -> None:
        """Close the HTTP client."""
        http, self._http, self._loop = self._http, None, None
        if http is not None:
            with contextlib.suppress(Exception):
                await http.aclose()

    def _scrub(self, text: str) -> str:
        for value in self._headers.values():
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text

    async def _fetch(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        limit: int,
        total_s: float,
        what: str,
    ) -> tuple[str, bytes]:
        """One request; returns (content type, body) or raises `ProviderError`."""
        headers = self._headers if _origin(url) in self._origins else {}
        name = self.name
        try:
            async with asyncio.timeout(total_s):
                async with self._client().stream(
                    method, url, json=body, headers=headers, timeout=self.timeout_s
                ) as response:
                    status = response.status_code
                    if status in (401, 403):
                        raise ProviderError(name, "auth", f"{what}: HTTP {status}", status=status)
                    if not 200 <= status < 300:
                        raise ProviderError(name, "http", f"{what}: HTTP {status}", status=status)
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise _malformed(f"{what}: {declared} bytes is more than {limit}")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise _malformed(f"{what}: more than {limit} bytes")
                        chunks.append(chunk)
                    return response.headers.get("content-type", ""), b"".join(chunks)
        except ProviderError:
            raise
        except (TimeoutError, httpx.TimeoutException):
            raise ProviderError(name, "timeout", f"{what}: no answer in time") from None
        except httpx.TransportError as exc:
            message = self._scrub(f"{what}: {type(exc).__name__}: {exc}")
            raise ProviderError(name, "disconnect", message) from None

    async def _post(self, url: str, body: Mapping[str, Any], what: str) -> bytes:
        """POST JSON; the answer's body (at most `MAX_JSON_BYTES`)."""
        _, raw = await self._fetch(
            "POST", url, body=dict(body), limit=MAX_JSON_BYTES, total_s=self.timeout_s, what=what
        )
        return raw

    async def _post_json(self, url: str, body: Mapping[str, Any], what: str) -> BotReply:
        raw = await self._post(url, body, what)
        try:
            payload = json.loads(raw)
        except ValueError:
            raise _malformed(f"{what}: the answer is not JSON") from None
        return parse_reply(payload)

    async def _audio(self, method: str, url: str, body: Any, what: str) -> bytes:
        content_type, data = await self._fetch(
            method,
            url,
            body=body,
            limit=self.max_audio_bytes,
            total_s=self.audio_timeout_s,
            what=what,
        )
        return await asyncio.to_thread(decode_audio, data, content_type)

    async def render(self, bot: BotReply) -> BrainReply:
        """Turn a validated bot reply into a `BrainReply` (an `AudioReply` with audio)."""
        if bot.audio_url:
            audio = await self._audio("GET", bot.audio_url, None, "audio_url")
        elif bot.text and self.tts_url:
            audio = await self._audio("POST", self.tts_url, {"text": bot.text}, "HTTP TTS")
        else:
            return BrainReply(text=bot.text, actions=bot.actions, intent=bot.intent)
        return AudioReply(text=bot.text, actions=bot.actions, intent=bot.intent, audio=audio)

    async def _reply_of(self, bot: BotReply) -> BrainReply:
        """Render `bot`; a pending one says how long to wait for the pushed answer."""
        reply = await self.render(bot) if bot.has_content else BrainReply("", bot.actions)
        if bot.pending:
            reply = replace(reply, pending_s=self.pending_timeout_s)
        return reply

    # -- calls ----------------------------------------------------------------------------

    def _call(self, call_id: str) -> _Call:
        state = self._calls.get(call_id)
        loop = asyncio.get_running_loop()
        if state is None or state.loop is not loop:
            if state is not None:
                self._drop(call_id)
            state = _Call(loop=loop)
            self._calls[call_id] = state
            while len(self._calls) > self.max_calls:
                self._drop(next(iter(self._calls)))
        else:
            self._calls.move_to_end(call_id)
        return state

    async def no_input(self, ctx: CallContext, attempt: int) -> BrainReply:
        """Re-prompt after the first silence, say goodbye and hang up after the second."""
        reprompt, goodbye = self.no_input_prompts
        if attempt <= 1:
            return BrainReply(text=reprompt, intent="reprompt")
        return BrainReply(text=goodbye, actions=("hangup",), intent="no_input")

    def forget(self, call_id: str) -> None:
        """The call is over: drop its queues (see `_drop`)."""
        self._drop(call_id)

    def _drop(self, call_id: str) -> None:
        """Drop the call's queues; a pending turn of it fails, `wait_pushed` returns None."""
        state = self._calls.pop(call_id, None)
        if state is None:
            return
        tasks = list(state.pushed)
        state.pushed.clear()

        def wake() -> None:
            for task in tasks:
                task.cancel()
            state.changed.set()

        _on_loop(state.loop, wake)

    # -- pushed replies -------------------------------------------------------------------

    def deliver(self, call_id: str, payload: Mapping[str, Any]) -> bool:
        """Accept a reply the bot pushed for `call_id`; False when the call is unknown.

        Raises ``ProviderError(kind="malformed")`` when `payload` breaks the contract (or
        is itself pending).  Safe to call from any thread: the reply is prepared (audio
        fetched or synthesised) on the call's event loop, then handed to the turn waiting
        for it or queued for `take_pushed`/`wait_pushed`.
        """
        bot = parse_reply(dict(payload) if isinstance(payload, Mapping) else payload)
        if bot.pending:
            raise _malformed("a pushed reply cannot be pending")
        state = self._calls.get(call_id)
        if state is None or state.loop.is_closed():
            return False
        return _on_loop(state.loop, lambda: self._accept(call_id, state, bot))

    def _accept(self, call_id: str, state: _Call, bot: BotReply) -> None:
        if self._calls.get(call_id) is not state:
            return
        task = state.loop.create_task(self.render(bot))
        task.add_done_callback(_retrieve)
        self._push(state, task)
        state.changed.set()

    def _push(self, state: _Call, task: asyncio.Task[BrainReply]) -> None:
        state.pushed.append(task)
        while len(state.pushed) > MAX_PUSHED:
            dropped = state.pushed.popleft()
            dropped.cancel()
            log.warning("dropped an old pushed reply nobody took")

    def take_pushed(self, call_id: str) -> BrainReply | None:
        """The oldest pushed reply of `call_id` that is ready, or None.

        A reply whose audio is still being fetched is not ready yet (and holds back the
        ones after it, to keep their order).  Raises the `ProviderError` of a pushed reply
        whose audio could not be fetched or decoded (it is dropped).
        """
        state = self._calls.get(call_id)
        if state is None or not state.pushed or not state.pushed[0].done():
            return None
        task = state.pushed.popleft()
        if task.cancelled():
            return self.take_pushed(call_id)
        return task.result()

    async def wait_pushed(self, call_id: str, timeout_s: float | None = None) -> BrainReply | None:
        """Wait for the next pushed reply of `call_id` (None: the call was forgotten, or
        `timeout_s` passed).  An unknown call becomes known: a conversation starts waiting
        before its greeting has been asked for.

        Raises like `take_pushed`.
        """
        state = self._call(call_id)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    if self._calls.get(call_id) is not state:
                        return None
                    if state.pushed:
                        task = state.pushed[0]
                        await asyncio.wait({task})
                        if state.pushed and state.pushed[0] is task:
                            state.pushed.popleft()
                        if task.cancelled():
                            continue
                        return task.result()
                    state.changed.clear()
                    await state.changed.wait()
        except TimeoutError:
            return None


class WebhookBrain(BotBrain):
    """``providers.brain = "webhook"``: each turn is a request to the customer's bot, the
    answer is what the agent says (or pending, pushed later); see the module docstring."""

    name = "webhook"

    def __init__(
        self,
        *,
        start_url: str | None,
        turn_url: str,
        tts_url: str | None = None,
        greeting: str = "Hello.",
        reply_url: str | None = None,
        **options: Any,
    ) -> None:
        """Configure the brain; nothing connects until the first request.

        `reply_url` is where the bot pushes asynchronous replies (``{call_id}`` is replaced
        by the call's id); it is sent to the bot in every request when set.  `options` are
        `BotBrain`'s.

        Raises ``ProviderError(kind="config")`` for unusable settings.
        """
        if not turn_url:
            raise ProviderError(self.name, "config", "no turn_url")
        super().__init__(
            urls={"start_url": start_url, "turn_url": turn_url}, tts_url=tts_url, **options
        )
        self.start_url = start_url or None
        self.turn_url = turn_url
        self.greeting_text = greeting
        self.reply_url = reply_url or None

    def __repr__(self) -> str:
        return f"WebhookBrain(start_url={self.start_url!r}, turn_url={self.turn_url!r})"

    async def _exchange(
        self, ctx: CallContext, url: str, body: Mapping[str, Any], what: str
    ) -> BrainReply:
        """POST `body` and render the reply (a pending one says how long to wait)."""
        self._call(ctx.call_id)
        if self.reply_url:
            body = {
                **body,
                "reply_url": self.reply_url.replace("{call_id}", quote(ctx.call_id, safe="")),
            }
        return await self._reply_of(await self._post_json(url, body, what))

    async def greeting(self, ctx: CallContext) -> BrainReply:
        """The bot's answer to the call start, or the configured greeting without a start
        URL."""
        if self.start_url is None:
            self._call(ctx.call_id)
            return BrainReply(text=self.greeting_text, intent="greeting")
        body = {
            "call_id": ctx.call_id,
            "call_uuid": ctx.call_uuid,
            "from": ctx.from_number or ctx.from_uri,
            "to": ctx.to_number or ctx.to_uri,
            "headers": plivo_headers(ctx),
        }
        reply = await self._exchange(ctx, self.start_url, body, "bot call start")
        if reply.intent is None:
            reply = _with_intent(reply, "greeting")
        return reply

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        """Post the caller's turn to the turn URL and return the bot's reply."""
        state = self._call(ctx.call_id)
        state.turns += 1
        body = {
            "call_id": ctx.call_id,
            "call_uuid": ctx.call_uuid,
            "text": text,
            "turn": state.turns,
        }
        return await self._exchange(ctx, self.turn_url, body, "bot turn")


def plivo_headers(ctx: CallContext) -> dict[str, str]:
    """The call's ``X-PH-*`` headers (rebuilt from the decoded context when the INVITE's
    are not known)."""
    headers = {k: v for k, v in ctx.headers.items() if k.lower().startswith("x-ph-")}
    return headers or {f"X-PH-{k}": v for k, v in ctx.plivo.items()}


def _with_intent(reply: BrainReply, intent: str) -> BrainReply:
    return replace(reply, intent=intent)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> bool:
    """Run `fn` now when on `loop`'s thread, else schedule it there; False if it cannot run."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        fn()
        return True
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed
        return False
    return True


def build(s: Settings) -> WebhookBrain:
    """The provider as the settings configure it (the registry's factory for it)."""
    w = s.webhook
    assert w.turn_url is not None  # checked when the settings were loaded
    return WebhookBrain(
        start_url=w.start_url,
        turn_url=w.turn_url,
        tts_url=w.tts_url,
        greeting=w.greeting,
        headers=dict(w.headers),
        timeout_s=w.timeout_s,
        pending_timeout_s=w.pending_timeout_s,
        reply_url=w.reply_url if w.push_token else None,
    )
