"""The agent's voice on a call: TTS (or ready-made audio) into the call's audio sink.

`Speaker` knows whether the agent is speaking (the barge-in question), stops it (barge-in:
the sink is cleared and the reply task cancelled by its owner), and measures what the
caller heard: when the first audio went out and the longest gap between frames. Waiting
for room in the sink and for the audio to play out is the sink's event, never a poll.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np

from gateway.audio.pcm import FRAME_MS, SAMPLE_RATE
from gateway.pipeline import clock
from gateway.pipeline.record import ms
from gateway.pipeline.transport import AudioSink
from gateway.providers.base import TtsProvider

Synthesize = Callable[[str], AsyncIterator[bytes]]


class Speaker:
    """Speaks on one call's sink; see the module docstring."""

    def __init__(self, sink: AudioSink, tts: TtsProvider) -> None:
        self.sink = sink
        self.tts = tts
        # Speaking from the first piece of a reply on until it played out or was cut off.
        self.speaking = False
        self.last_gap_ms = 0.0  # the longest gap of the last speech that played out
        # Called each time audio is queued, with the seconds of it still to play (the
        # reply's silence deadline moves past them); once all of a speech is queued (no
        # vendor can keep the caller waiting any more); and when a speech is over (the
        # caller's silence is counted from there). `on_start`: a speech began (its first
        # piece is there).
        self.on_audio: Callable[[float], None] = _queued
        self.on_synthesised: Callable[[], None] = _nothing
        self.on_start: Callable[[], None] = _nothing
        self.on_done: Callable[[], None] = _nothing

    def busy(self) -> bool:
        """True while agent audio is being produced or still queued for the wire."""
        return self.speaking or len(self.sink) > 0

    def stop(self) -> int:
        """Barge-in: drop the audio not yet played; returns how many frames it was."""
        self.speaking = False
        return self.sink.clear()

    @property
    def first_audio_at(self) -> float:
        """When the speech in progress (or the last one) first went out (0.0: not yet)."""
        return self.sink.marked_at

    async def speak(
        self, text: str | AsyncIterator[str], synthesize: Synthesize | None = None
    ) -> tuple[float, float]:
        """Stream TTS of `text` (or of each piece, in order, as the pieces arrive) into the
        sink and wait until it played out; return (first chunk time, first on-wire time)."""
        sink = self.sink
        first_chunk_at = 0.0
        first_wire_at = 0.0
        try:
            async for piece in _pieces(text):
                if not self.speaking:
                    # Speaking from the first piece on (a streamed reply may take a while
                    # to start; until then the caller's speech is a new turn, not a
                    # barge-in).  The sink is empty: the next frame out is this reply's.
                    self.speaking = True
                    sink.mark()
                    self.on_start()
                chunks = (synthesize or self.tts.synthesize)(piece)
                try:
                    async for pcm in chunks:
                        if not first_chunk_at:
                            first_chunk_at = clock.now()
                            sink.max_gap = 0.0
                        await sink.capture(pcm)
                        self.on_audio(len(sink) * FRAME_MS / 1000)
                finally:
                    await close_stream(chunks)
            self.on_synthesised()
            # Let the queued audio play out; barge-in cancels us here too.
            await sink.played_out()
            first_wire_at = sink.marked_at if first_chunk_at else 0.0
            self.last_gap_ms = ms(sink.max_gap)
        finally:
            self.speaking = False
            self.on_done()
        return first_chunk_at, first_wire_at

    async def speak_pcm(self, pcm: bytes) -> tuple[float, float]:
        """Play ready-made audio like a reply (barge-in, timings, gap measurement)."""

        async def chunks(_: str) -> AsyncIterator[bytes]:
            yield pcm

        return await self.speak(" ", synthesize=chunks)

    async def play_loop(self, pcm: bytes) -> None:
        """Play `pcm` over and over until cancelled (not speech: no barge-in)."""
        while True:
            await self.sink.capture(pcm)


async def speak_on(sink: AudioSink, tts: TtsProvider, text: str) -> bool:
    """Speak `text` on another call's sink (the human's leg of a warm transfer) and wait
    until it played; False if that call ended first."""
    chunks = tts.synthesize(text)
    try:
        async for pcm in chunks:
            if not await sink.capture(pcm):
                return False
    finally:
        await close_stream(chunks)
    await sink.played_out()
    return True


async def said_nothing() -> tuple[float, float]:
    """The (first chunk, first on-wire) times of a turn with nothing to say yet."""
    return 0.0, 0.0


def ringback() -> bytes:
    """One cadence of ringback: 440 + 480 Hz for 2 s, then 4 s of silence (8 kHz PCM)."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 480 * t)) * 3000
    return tone.astype("<i2").tobytes() + bytes(2 * 4 * SAMPLE_RATE)


def _nothing() -> None:
    pass


def _queued(_: float) -> None:
    pass


async def _pieces(text: str | AsyncIterator[str]) -> AsyncIterator[str]:
    if isinstance(text, str):
        yield text
    else:
        async for piece in text:
            yield piece


async def close_stream(chunks: AsyncIterator[bytes]) -> None:
    """Stop a synthesis now, not when its generator is garbage-collected (an iterator
    without `aclose` has nothing to stop)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
