"""Deterministic providers for tests and benchmarks: no models, configurable delays.

`FakeStt` reports the utterance length as its transcript, `FakeTts` speaks a tone whose
length follows the text, `FakeBrain` echoes. Delays model a cloud vendor's latency (STT
final, LLM first token, TTS first byte) without any network; `providers.fake_*` settings
set them for `sipagent serve` (see `scripts/bench/capacity.py`).

The tone is continuous (one phase-continuous sine for the whole reply), so any silent frame
a listener hears inside a reply is an underrun somewhere on the agent's path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from gateway.audio.pcm import SAMPLE_RATE
from gateway.providers.base import (
    Brain,
    BrainReply,
    CallContext,
    SttProvider,
    SttStream,
    TtsProvider,
)
from sip_config import Settings

TONE_HZ = 440.0
TONE_MS_PER_CHAR = 60
TONE_MAX_MS = 20000
_TONE_AMPLITUDE = 8000


def _check_delay(name: str, value: float) -> float:
    if not 0.0 <= value <= 60.0:
        raise ValueError(f"{name} must be between 0 and 60 seconds, got {value}")
    return value


class FakeSttStream(SttStream):
    """Counts audio; the transcript is "utterance of N milliseconds"."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.bytes = 0

    async def feed(self, pcm: bytes) -> None:
        """Count the audio."""
        self.bytes += len(pcm)

    async def finish(self) -> str:
        """Wait the configured delay (the vendor's final-transcript latency), then describe
        the utterance."""
        await asyncio.sleep(self.delay_s)
        return f"utterance of {self.bytes * 1000 // (SAMPLE_RATE * 2)} milliseconds"

    async def cancel(self) -> None:
        """Nothing to release."""


class FakeStt(SttProvider):
    """Speech-to-text stand-in; `final_delay_s` models the time from the end of the audio
    to the final transcript."""

    name = "fake"

    def __init__(self, final_delay_s: float = 0.0) -> None:
        self.final_delay_s = _check_delay("final_delay_s", final_delay_s)

    async def open_stream(self, expect: str | None = None) -> FakeSttStream:
        """A new counting stream (it hears no words, so it expects nothing)."""
        return FakeSttStream(self.final_delay_s)


_tone_cache: bytes | None = None


def tone_pcm(ms: int) -> bytes:
    """The first `ms` milliseconds (at most `TONE_MAX_MS`) of the 440 Hz tone, 8 kHz PCM."""
    global _tone_cache
    if _tone_cache is None:
        t = np.arange(TONE_MAX_MS * SAMPLE_RATE // 1000) / SAMPLE_RATE
        _tone_cache = (np.sin(2 * np.pi * TONE_HZ * t) * _TONE_AMPLITUDE).astype("<i2").tobytes()
    n = max(0, min(ms, TONE_MAX_MS)) * SAMPLE_RATE // 1000
    return _tone_cache[: n * 2]


class FakeTts(TtsProvider):
    """A 440 Hz tone, 60 ms per character (at most 20 s), in `chunk_ms` chunks.

    `first_byte_delay_s` passes before the first chunk. `speed` paces the stream: 0 yields
    every chunk at once; ``s >= 1`` yields chunk ``i`` at ``first + i * chunk_ms / s`` (an
    absolute schedule, so it never drifts slower than the pace), i.e. `s` times faster than
    real time, like a streaming vendor that synthesises ahead of playback.
    """

    name = "fake"

    def __init__(
        self,
        first_byte_delay_s: float = 0.0,
        realtime: bool = False,
        *,
        speed: float | None = None,
        chunk_ms: int = 200,
    ) -> None:
        self.first_byte_delay_s = _check_delay("first_byte_delay_s", first_byte_delay_s)
        if speed is None:
            speed = 1.0 if realtime else 0.0
        if speed != 0.0 and not 1.0 <= speed <= 100.0:
            raise ValueError(f"speed must be 0 (unpaced) or between 1 and 100, got {speed}")
        if chunk_ms < 20 or chunk_ms % 20:
            raise ValueError(f"chunk_ms must be a positive multiple of 20, got {chunk_ms}")
        self.speed = speed
        self.chunk_ms = chunk_ms

    @property
    def realtime(self) -> bool:
        """Whether the stream is paced at all."""
        return self.speed > 0.0

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield the tone after the first-byte delay, paced by `speed`."""
        await asyncio.sleep(self.first_byte_delay_s)
        pcm = tone_pcm(len(text) * TONE_MS_PER_CHAR)
        step = SAMPLE_RATE * 2 * self.chunk_ms // 1000
        interval = self.chunk_ms / 1000.0 / self.speed if self.speed else 0.0
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(pcm), step)):
            if interval:
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield pcm[offset : offset + step]


class FakeBrain(Brain):
    """Echoes the caller after a delay (an LLM's first-token latency); hangs up when told
    "goodbye"."""

    name = "fake"

    def __init__(self, first_token_delay_s: float = 0.0) -> None:
        self.first_token_delay_s = _check_delay("first_token_delay_s", first_token_delay_s)

    async def greeting(self, ctx: CallContext) -> BrainReply:
        """A fixed greeting."""
        return BrainReply("Hello, this is a test agent.", intent="greeting")

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        """Echo after the configured delay."""
        await asyncio.sleep(self.first_token_delay_s)
        if "goodbye" in text.lower():
            return BrainReply("Goodbye.", ("hangup",), "goodbye")
        return BrainReply(f"You said {text}.", intent="echo")

    async def no_input(self, ctx: CallContext, attempt: int) -> BrainReply:
        """Re-prompt once, then goodbye."""
        if attempt >= 2:
            return BrainReply("Goodbye.", ("hangup",), "no_input")
        return BrainReply("Are you still there?", intent="no_input")


def build_stt(s: Settings) -> FakeStt:
    """The fake STT as the settings configure it (the registry's factory for it)."""
    return FakeStt(final_delay_s=s.providers.fake_stt_final_ms / 1000.0)


def build_tts(s: Settings) -> FakeTts:
    """The fake TTS as the settings configure it (the registry's factory for it)."""
    p = s.providers
    return FakeTts(first_byte_delay_s=p.fake_tts_first_byte_ms / 1000.0, speed=p.fake_tts_speed)


def build_brain(s: Settings) -> FakeBrain:
    """The fake brain as the settings configure it (the registry's factory for it)."""
    return FakeBrain(first_token_delay_s=s.providers.fake_llm_first_token_ms / 1000.0)
