"""One Plivo audio stream as the conversation's `CallTransport`, and the pacer that sends
the agent's audio to Plivo.

Plivo queues whatever ``playAudio`` it is sent and plays it in order (docs/plivo-audio-
streams.md §3.1: a playback queue of ~60 s). Sending a whole reply at once would make the
gateway's own queue empty while the caller still hears the agent: barge-in would not know
the agent is speaking, and the no-input timer would start early. So the agent's audio goes
into a `StreamPlayout` (a `PlayoutRing`, as on SIP) and the `Pacer` takes it out at the
call's pace, keeping Plivo only ``send_ahead`` frames ahead of what it plays (enough to
ride out a late tick, small enough that ``clearAudio`` drops little and the position is
exact to within that window).

The end of a turn is Plivo's word, not an estimate: `StreamPlayout.played_out` sends a
``checkpoint`` after the turn's last frame and returns when Plivo answers ``playedStream``
(§2.4, §3.2), when the audio was cleared, or, should the answer never come,
``checkpoint_timeout_s`` after the audio would have played.

Everything here runs on the stream worker's event loop (one thread).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

from gateway.audio.g711 import ulaw_decode, ulaw_encode
from gateway.audio.pcm import FRAME_MS, FRAME_SAMPLES
from gateway.audio.ring import InboundRing, PlayoutRing
from gateway.pipeline.transport import KeyQueue
from gateway.policy.transfer import Transferrer
from gateway.providers.base import CallContext
from gateway.stream import events

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000


class Outbox(Protocol):
    """Where a stream's messages to Plivo go (its WebSocket)."""

    def send(self, message: str) -> bool:
        """Queue ``message``; False when the connection cannot take it now (closed, or
        its write buffer full: the peer does not read)."""
        ...


class StreamPlayout(PlayoutRing):
    """The agent's audio on a stream: a `PlayoutRing` the `Pacer` empties into
    ``playAudio``; `clear` also clears Plivo's queue and `played_out` waits for Plivo's
    ``playedStream``."""

    def __init__(
        self,
        outbox: Outbox,
        stream_id: str,
        *,
        send_ahead: int,
        checkpoint_timeout_s: float,
        encoding: str = events.MULAW,
    ) -> None:
        super().__init__(capacity=150, clock=time.monotonic)
        self.outbox = outbox
        self.stream_id = stream_id
        self.send_ahead = send_ahead
        self.checkpoint_timeout_s = checkpoint_timeout_s
        self.encoding = encoding
        # Frames Plivo holds that it has not played yet, by our reckoning (it plays one per
        # 20 ms from when they arrive): what the pacer keeps at most `send_ahead`.
        self.queued_at_plivo = 0.0
        self._last_tick = 0.0
        # Audio went out since the last checkpoint Plivo answered (clear must tell Plivo).
        self.unheard = False
        self._names = itertools.count(1)
        self._waiting: tuple[str, asyncio.Future[None]] | None = None
        self.checkpoints_sent = 0
        self.checkpoints_answered = 0
        self.checkpoints_missed = 0
        self.clears_sent = 0
        self.messages_sent = 0
        # No connection to send on (waiting for Plivo's reconnect): the audio waits.
        self.paused = False

    # -- the pacer's side ------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Send what is due at ``now``: one pop per 20 ms elapsed (a pop of an empty ring
        is a silent frame for the recorder), plus what keeps Plivo `send_ahead` ahead."""
        if not self._last_tick:
            self._last_tick = now
            return
        elapsed = round((now - self._last_tick) / FRAME_S)
        if elapsed <= 0:
            return
        self._last_tick += elapsed * FRAME_S
        self.queued_at_plivo = max(0.0, self.queued_at_plivo - elapsed)
        if self.paused:
            for _ in range(min(elapsed, 50)):
                self.idle_tick()  # silence for the recorder; the queue waits
            return
        out: list[bytes] = []
        for _ in range(min(elapsed, 50)):
            frame = self.pop()  # empty: a silent frame for the recorder's tap
            if frame is not None:
                out.append(frame)
                self.queued_at_plivo += 1
        while self.queued_at_plivo < self.send_ahead and len(self) > 0:
            frame = self.pop()
            if frame is None:
                break
            out.append(frame)
            self.queued_at_plivo += 1
        if out:
            self._send_audio(b"".join(out))

    def _send_audio(self, pcm: bytes) -> None:
        audio = ulaw_encode(pcm) if self.encoding == events.MULAW else pcm
        if self.outbox.send(events.play_audio(audio, self.encoding)):
            self.messages_sent += 1
            self.unheard = True

    # -- the conversation's side -----------------------------------------------------------
    def clear(self) -> int:
        """Barge-in: drop our queue and Plivo's (``clearAudio``)."""
        dropped = super().clear()
        if dropped or self.unheard:
            self.outbox.send(events.clear_audio(self.stream_id))
            self.clears_sent += 1
            self.unheard = False
            self.queued_at_plivo = 0.0
        self._resolve_checkpoint()
        return dropped

    async def played_out(self) -> None:
        """Return once the caller heard everything queued: our queue is empty and Plivo
        answered the checkpoint sent after it (or the call is gone, or the audio was
        cleared, or Plivo did not answer in time)."""
        await super().played_out()
        if self.closed or not self.unheard:
            return
        name = f"turn-{next(self._names)}"
        if not self.outbox.send(events.checkpoint(self.stream_id, name)):
            return
        self.checkpoints_sent += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting = (name, future)
        limit = self.queued_at_plivo * FRAME_S + self.checkpoint_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(future), limit)
        except TimeoutError:
            self.checkpoints_missed += 1
            log.warning(
                "stream %s: no playedStream for checkpoint %s within %.1f s; taken as heard",
                self.stream_id,
                name,
                limit,
            )
        finally:
            if self._waiting is not None and self._waiting[1] is future:
                self._waiting = None
        self.unheard = False

    def played(self, name: str) -> None:
        """Plivo's ``playedStream``: the audio before checkpoint ``name`` was heard."""
        waiting = self._waiting
        if waiting is not None and waiting[0] == name:
            self.checkpoints_answered += 1
            self.queued_at_plivo = 0.0
            # Heard from this moment: a key or a word right after it cuts nothing off,
            # even before the waiting turn resumes.
            self.unheard = False
            self._resolve_checkpoint()

    def reconnect(self, outbox: Outbox, stream_id: str) -> None:
        """Plivo reconnected the stream: what it held went with the old connection (the
        turn waiting for it is taken as heard), and audio goes to ``outbox``, for stream
        ``stream_id``, from now."""
        self.outbox = outbox
        self.stream_id = stream_id
        self.queued_at_plivo = 0.0
        self.unheard = False
        self._resolve_checkpoint()

    def close(self) -> None:
        """The stream ended: waiters return."""
        super().close()
        self._resolve_checkpoint()

    def _resolve_checkpoint(self) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting[1].done():
            waiting[1].set_result(None)
        self._waiting = None


class Pacer:
    """Every 20 ms, on absolute time (no drift), each live stream's `StreamPlayout.tick`:
    one task for all the streams of a worker."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.streams: set[StreamPlayout] = set()
        self.clock = clock
        self.late_ticks = 0  # ticks that ran more than a frame late
        self.max_lateness = 0.0

    async def run(self) -> None:
        """Tick until cancelled."""
        next_at = self.clock()
        while True:
            next_at += FRAME_S
            delay = next_at - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            now = self.clock()
            lateness = now - next_at
            if lateness > FRAME_S:
                self.late_ticks += 1
                self.max_lateness = max(self.max_lateness, lateness)
                # Far behind (a stalled loop): resume from now, the streams catch up by
                # their own elapsed time.
                if lateness > 10 * FRAME_S:
                    next_at = now
            for playout in list(self.streams):
                try:
                    playout.tick(now)
                except Exception:  # one broken stream must not stop the others' audio
                    log.exception("stream %s: sending audio failed", playout.stream_id)
                    self.streams.discard(playout)


class StreamCall:
    """A Plivo audio stream as the conversation's `CallTransport`."""

    def __init__(
        self,
        start: events.Start,
        context: CallContext,
        playout: StreamPlayout,
        *,
        hangup: Callable[[str], None],
        transfer: Transferrer | None = None,
    ) -> None:
        self.start = start
        self.context = context
        self._playout = playout
        self._inbound = InboundRing()
        self._keys = KeyQueue()
        self._hangup = hangup
        self.cold_transfer = transfer
        self.warm_legs = None
        self.answered_at = time.monotonic()
        self.on_hold = False
        self.hangup_reason = ""
        self.stopped = ""  # Plivo's stop event arrived (its reason): the stream is over
        self.reconnects = 0
        self._partial = b""
        self.media_frames = 0
        self.bad_messages = 0

    @property
    def call_id(self) -> str:
        return self.start.call_id

    @property
    def inbound(self) -> InboundRing:
        return self._inbound

    @property
    def playout(self) -> StreamPlayout:
        return self._playout

    @property
    def keys(self) -> KeyQueue:
        return self._keys

    def hangup(self, reason: str) -> None:
        if not self.hangup_reason:
            self.hangup_reason = reason or "agent hung up"
            self._hangup(self.hangup_reason)

    def send_dtmf(self, keys: str) -> None:
        self._playout.outbox.send(events.send_dtmf(keys))

    # -- from Plivo ------------------------------------------------------------------------
    def media(self, payload: bytes) -> None:
        """Caller audio from a ``media`` event: re-cut into 20 ms PCM frames."""
        data = self._partial + payload
        if self.start.encoding == events.MULAW:
            step = FRAME_SAMPLES
            decode: Callable[[bytes], bytes] = ulaw_decode
        else:
            step = FRAME_SAMPLES * 2
            decode = bytes
        whole = len(data) - len(data) % step
        for i in range(0, whole, step):
            self._inbound.push(decode(data[i : i + step]))
            self.media_frames += 1
        self._partial = data[whole:]

    def key(self, digit: str) -> None:
        """A ``dtmf`` event."""
        self._keys.push(digit, "stream")

    def ended(self) -> None:
        """The WebSocket is gone: no more audio goes out."""
        self._playout.close()


def stream_context(start: events.Start, decoded: dict[str, str]) -> CallContext:
    """What the brain may know about a stream call: Plivo's CallUUID (the stream's callId),
    and the call context the app put in extraHeaders (`decoded` by
    `gateway.plivo.callcontext.decode_call_context`)."""
    plivo = dict(decoded)
    plivo.pop("call_uuid", None)
    from_number = plivo.pop("from", "")
    to_number = plivo.pop("to", "")
    return CallContext(
        call_id=start.call_id,
        from_uri=from_number,
        to_uri=to_number,
        headers={f"X-PH-{k}": v for k, v in start.extra_headers.items()},
        call_uuid=start.call_id,
        from_number=from_number,
        to_number=to_number,
        plivo=plivo,
        record_id=plivo.get("record_id", ""),
    )
