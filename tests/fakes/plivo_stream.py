"""Plivo's side of an audio stream, for tests that play Plivo on the wire.

The emulator itself is `gateway.devtools.plivo_stream` (also behind `sipagent call ws://…`):
`PlivoStreamPeer` connects like Plivo, sends the documented events and plays the bot's
audio in real time; each behaviour there names the Plivo page it follows. This module adds
what only tests need:

* `plivo_stream`: a running peer for the length of an ``async with`` (hung up and awaited
  on exit), for a test on its own asyncio loop;
* `open_raw`: a bare connection, signed or not, on which a test sends whatever it likes
  (malformed JSON, binary frames, a ``start`` for another call, nothing at all);
* `start_message` / `media_message`: numbered events to send on a raw connection;
* `heard`: the frames the caller heard so far (drains `StreamCall.inbound`).

A driven call through the softphone is ``run_softphone("ws://…", CallScript(...))``
(`gateway.devtools.softphone`), or ``sipagent call ws://… --json`` in a subprocess as the
SIP wire tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from gateway.audio.g711 import ulaw_encode
from gateway.audio.pcm import SILENCE_FRAME, rms_dbfs
from gateway.devtools.plivo_stream import (
    MULAW,
    PlivoStreamPeer,
    StreamCall,
    media_event,
    signature_headers,
    start_event,
)

__all__ = ["heard", "media_message", "open_raw", "plivo_stream", "start_message", "voiced"]


@contextlib.asynccontextmanager
async def plivo_stream(
    url: str, *, timeout: float = 5.0, **peer_kwargs: Any
) -> AsyncIterator[PlivoStreamPeer]:
    """A `PlivoStreamPeer` for ``url`` (``peer_kwargs``: its options), running from the
    moment its stream opened (or failed: check ``peer.call.confirmed``) to the end of the
    block; then hung up (a stop event and the close) if still up, and awaited."""
    peer = PlivoStreamPeer(url, **peer_kwargs)
    task = asyncio.create_task(peer.run(), name="plivo-stream-peer")
    try:
        await peer.until(lambda: peer.call.confirmed.is_set() or peer.call.ended.is_set(), timeout)
        yield peer
    finally:
        if peer.ws is not None and not peer.call.ended.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await peer.hangup()
        if not task.done():
            try:
                async with asyncio.timeout(timeout):
                    await task
            except TimeoutError:
                peer.drop()
                await task


async def open_raw(
    url: str,
    *,
    auth_token: str = "",
    signed_url: str | None = None,
    nonce: str | None = None,
    headers: Mapping[str, str] | None = None,
    open_timeout: float = 5.0,
) -> ClientConnection:
    """A WebSocket to ``url`` with nothing sent on it: signed like Plivo's upgrade when
    ``auth_token`` is given (over ``signed_url``, default ``url``; ``nonce`` to replay
    one), unsigned otherwise; ``headers`` are added last (to forge a signature). Raises
    what `websockets` raises when the upgrade is refused (``InvalidStatus``)."""
    extra: dict[str, str] = {}
    if auth_token:
        extra.update(signature_headers(signed_url or url, auth_token, nonce))
    extra.update(headers or {})
    return await connect(
        url, additional_headers=extra, open_timeout=open_timeout, compression=None, proxy=None
    )


def start_message(
    call_id: str,
    stream_id: str,
    *,
    sequence: int = 1,
    extra_headers: str = "",
    encoding: str = MULAW,
    **fields: Any,
) -> str:
    """A ``start`` as Plivo sends it, as text; ``fields`` replace top-level fields."""
    event = start_event(
        sequence, call_id, stream_id, encoding=encoding, extra_headers=extra_headers
    )
    event.update(fields)
    return json.dumps(event)


def media_message(
    stream_id: str,
    chunk: int,
    *,
    sequence: int,
    pcm: bytes = SILENCE_FRAME,
    extra_headers: str = "",
) -> str:
    """A ``media`` of 20 ms μ-law (``pcm``: 320 bytes of 16-bit PCM), as text."""
    event = media_event(
        sequence, stream_id, chunk, str(chunk * 20), ulaw_encode(pcm), extra_headers
    )
    return json.dumps(event)


def heard(call: StreamCall) -> list[bytes]:
    """The 20 ms frames the caller heard since the last call (silence included)."""
    frames: list[bytes] = []
    while (frame := call.inbound.pop()) is not None:
        frames.append(frame)
    return frames


def voiced(frames: list[bytes], threshold_dbfs: float = -45.0) -> int:
    """How many of ``frames`` carry sound."""
    return sum(1 for f in frames if rms_dbfs(f) > threshold_dbfs)
