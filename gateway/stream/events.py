"""Plivo's audio-stream messages (pure: no I/O): the events Plivo sends, checked and parsed,
and the messages the app sends back, built.

Every shape here follows Plivo's pages; docs/plivo-audio-streams.md gives the page and the
places where Plivo's two documentation sets disagree (accepted both ways here):

- `start`, `media`, `dtmf`, `playedStream`, `clearedAudio`: the protocol reference,
  https://plivo.com/docs/voice-agents/audio-streaming/concepts/audio-streaming-reference
  (``extra_headers`` at the top level; ``mediaFormat.encoding`` without ``;rate=``).
- `stop` is not in the reference but in Plivo's Java stream SDK and its guide's "handle
  start, media, dtmf, stop"; the WebSocket's close is what ends a stream.
- `playAudio`, `checkpoint`, `clearAudio`: https://docs.plivo.com/docs/voice/xml/
  the-stream-element/play-audio-event, …/checkpoint-event, and the clear-audio page.
- `sendDTMF`: named in Plivo's "Stream Event Protocol" page; the body
  (``{"event": "sendDTMF", "dtmf": "<digits>"}``) is the one plivo-labs/agent-transport sends.

Anything from the network is checked here: a message that is not JSON, names no event,
or carries a malformed field raises `StreamProtocolError` naming it; events Plivo may send
that the gateway does not use (``playFailed``, ``error``, ``muteStream``…) parse as `Other`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ENCODINGS",
    "MAX_MESSAGE_BYTES",
    "MULAW",
    "ClearedAudio",
    "Dtmf",
    "Event",
    "Media",
    "Other",
    "PlayedStream",
    "Start",
    "Stop",
    "StreamProtocolError",
    "checkpoint",
    "clear_audio",
    "parse_event",
    "parse_extra_headers",
    "play_audio",
    "send_dtmf",
]

MULAW: Final = "audio/x-mulaw"
L16: Final = "audio/x-l16"
# (encoding, sample rate) pairs the gateway takes: what its XML asks for (μ-law 8 kHz) and
# Plivo's documented default, 8 kHz L16 (little-endian, as plivo-labs decodes it).
ENCODINGS: Final = frozenset({(MULAW, 8000), (L16, 8000)})
MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Plivo's limit on one WebSocket message (the guide's "Limits")."""
# A media payload decodes to at most this many bytes (Plivo sends ~20 ms: 160 B μ-law).
MAX_MEDIA_BYTES: Final = 16 * 1024
_DIGIT = re.compile(r"^[0-9*#A-Da-d]$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_HEADER_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_EXTRA_HEADERS_BYTES: Final = 2048


class StreamProtocolError(ValueError):
    """A message that is not a well-formed Plivo stream event (the text says what is wrong)."""


@dataclass(frozen=True)
class Start:
    """The stream began: which call, which stream, which audio, the XML's extraHeaders."""

    call_id: str
    stream_id: str
    account_id: str
    encoding: str
    sample_rate: int
    tracks: tuple[str, ...]
    extra_headers: Mapping[str, str]


@dataclass(frozen=True)
class Media:
    """About 20 ms of the caller's audio, still encoded as the stream's format says."""

    payload: bytes
    track: str
    chunk: int


@dataclass(frozen=True)
class Dtmf:
    """The caller pressed a key."""

    digit: str


@dataclass(frozen=True)
class PlayedStream:
    """Everything queued before the checkpoint `name` was played to the caller."""

    name: str


@dataclass(frozen=True)
class ClearedAudio:
    """Plivo dropped the audio it had queued (the answer to `clearAudio`)."""


@dataclass(frozen=True)
class Stop:
    """The stream ends (the WebSocket closes next)."""

    reason: str


@dataclass(frozen=True)
class Other:
    """An event the gateway does not act on (logged by the caller)."""

    event: str


Event = Start | Media | Dtmf | PlayedStream | ClearedAudio | Stop | Other


def parse_event(message: str | bytes) -> Event:
    """One message from Plivo; raises `StreamProtocolError` when it is malformed."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise StreamProtocolError(f"message of {len(message)} bytes (limit {MAX_MESSAGE_BYTES})")
    try:
        data = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        raise StreamProtocolError("message is not JSON") from None
    if not isinstance(data, dict):
        raise StreamProtocolError("message is not a JSON object")
    event = data.get("event")
    if not isinstance(event, str) or not event:
        raise StreamProtocolError("message has no event name")
    match event:
        case "media":
            return _media(data)
        case "start":
            return _start(data)
        case "dtmf":
            body = _object(data, "dtmf")
            digit = body.get("digit")
            if not isinstance(digit, str) or not _DIGIT.match(digit):
                raise StreamProtocolError("dtmf.digit must be one of 0-9 * # A-D")
            return Dtmf(digit.upper())
        case "playedStream" | "played":  # "played": Plivo's support article's spelling
            name = data.get("name")
            if not isinstance(name, str):
                raise StreamProtocolError("playedStream.name must be a string")
            return PlayedStream(name)
        case "clearedAudio":
            return ClearedAudio()
        case "stop":
            reason = data.get("reason", "")
            if not reason and isinstance(data.get("stop"), dict):
                reason = data["stop"].get("reason", "")
            return Stop(str(reason)[:200])
        case _:
            return Other(event[:64])


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    body = data.get(key)
    if not isinstance(body, dict):
        raise StreamProtocolError(f"{key} must be a JSON object")
    return body


def _media(data: Mapping[str, Any]) -> Media:
    body = _object(data, "media")
    payload = body.get("payload")
    if not isinstance(payload, str):
        raise StreamProtocolError("media.payload must be a base64 string")
    if len(payload) > MAX_MEDIA_BYTES * 4 // 3 + 4:
        raise StreamProtocolError("media.payload is too long")
    try:
        # Checked in C (b64decode's validate runs a regular expression per message).
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise StreamProtocolError("media.payload is not base64") from None
    track = body.get("track", "inbound")
    chunk = body.get("chunk", 0)
    if not isinstance(track, str):
        raise StreamProtocolError("media.track must be a string")
    if isinstance(chunk, str) and chunk.isdigit():
        chunk = int(chunk)
    if not isinstance(chunk, int) or isinstance(chunk, bool):
        raise StreamProtocolError("media.chunk must be a number")
    return Media(audio, track[:16], chunk)


def _start(data: Mapping[str, Any]) -> Start:
    body = _object(data, "start")
    call_id = body.get("callId")
    stream_id = body.get("streamId")
    for name, value in (("start.callId", call_id), ("start.streamId", stream_id)):
        if not isinstance(value, str) or not _ID.match(value):
            raise StreamProtocolError(f"{name} must be an id (letters, digits, -_.:)")
    account = body.get("accountId", "")
    fmt = body.get("mediaFormat", {})
    if not isinstance(fmt, dict):
        raise StreamProtocolError("start.mediaFormat must be a JSON object")
    encoding = fmt.get("encoding", MULAW)
    rate = fmt.get("sampleRate", 8000)
    if isinstance(rate, str) and rate.isdigit():
        rate = int(rate)
    if not isinstance(encoding, str) or not isinstance(rate, int) or isinstance(rate, bool):
        raise StreamProtocolError("start.mediaFormat needs an encoding and a sampleRate")
    encoding = encoding.split(";", 1)[0].strip().lower()
    tracks = body.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise StreamProtocolError("start.tracks must be a list of names")
    return Start(
        call_id=call_id,  # type: ignore[arg-type]  # checked above
        stream_id=stream_id,  # type: ignore[arg-type]
        account_id=str(account)[:64],
        encoding=encoding,
        sample_rate=rate,
        tracks=tuple(t[:16] for t in tracks[:4]),
        extra_headers=parse_extra_headers(data.get("extra_headers", "")),
    )


def parse_extra_headers(value: object) -> dict[str, str]:
    """The XML's ``extraHeaders`` as Plivo hands them back on ``start``: ``k=v,k=v`` (the
    XML reference), ``k=v;k=v`` (the newer guide), a JSON object, or nothing. Pairs whose
    key is not a plain name are skipped; never raises on text."""
    if value is None or value == "":
        return {}
    items: Iterable[tuple[object, object]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, str):
        text = value.strip()[:MAX_EXTRA_HEADERS_BYTES]
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                return {}
            if not isinstance(parsed, dict):
                return {}
            items = parsed.items()
        else:
            pairs = (p.partition("=") for p in re.split(r"[;,]", text))
            items = ((k.strip(), v.strip()) for k, sep, v in pairs if sep)
    else:
        raise StreamProtocolError("extra_headers must be a string")
    return {
        str(k): str(v)[:256]
        for k, v in items
        if isinstance(k, str) and _HEADER_KEY.match(k) and isinstance(v, str | int)
    }


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def play_audio(audio: bytes, encoding: str = MULAW, sample_rate: int = 8000) -> str:
    """``playAudio``: audio (raw, no header) for Plivo to queue and play to the caller."""
    payload = base64.b64encode(audio).decode("ascii")
    return _dumps(
        {
            "event": "playAudio",
            "media": {"contentType": encoding, "sampleRate": sample_rate, "payload": payload},
        }
    )


def checkpoint(stream_id: str, name: str) -> str:
    """``checkpoint``: Plivo answers ``playedStream`` with ``name`` once the audio queued
    before it has played."""
    return _dumps({"event": "checkpoint", "streamId": stream_id, "name": name})


def clear_audio(stream_id: str) -> str:
    """``clearAudio``: drop the audio Plivo has queued (barge-in); it answers
    ``clearedAudio``."""
    return _dumps({"event": "clearAudio", "streamId": stream_id})


def send_dtmf(digits: str) -> str:
    """``sendDTMF``: play keypad tones into the call."""
    return _dumps({"event": "sendDTMF", "dtmf": digits})
