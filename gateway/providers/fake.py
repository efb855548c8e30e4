"""Deterministic providers for tests and benchmarks: no models, configurable delays.

`FakeStt` reports the utterance length as its transcript, `FakeTts` speaks a tone whose
length follows the text, `FakeBrain` echoes. Delays model a cloud vendor's latency
(STT final, LLM first token, TTS first byte) without any network.
"""

from __future__ import annotations

import asyncio
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


class FakeSttStream(SttStream):
    """Counts audio; the transcript is "utterance of N milliseconds"."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.bytes = 0

    async def feed(self, pcm: bytes) -> None:
        """Count the audio."""
        self.bytes += len(pcm)

    async def finish(self) -> str:
        """Wait the configured delay, then describe the utterance."""
        await asyncio.sleep(self.delay_s)
        return f"utterance of {self.bytes * 1000 // (SAMPLE_RATE * 2)} milliseconds"

    async def cancel(self) -> None:
        """Nothing to release."""


class FakeStt(SttProvider):
    """Speech-to-text stand-in."""

    name = "fake"

    def __init__(self, final_delay_s: float = 0.0) -> None:
        self.final_delay_s = final_delay_s

    async def open_stream(self) -> FakeSttStream:
        """A new counting stream."""
        return FakeSttStream(self.final_delay_s)


class FakeTts(TtsProvider):
    """A 440 Hz tone, 60 ms per character (at most 20 s), in 200 ms chunks."""

    name = "fake"

    def __init__(self, first_byte_delay_s: float = 0.0, realtime: bool = False) -> None:
        self.first_byte_delay_s = first_byte_delay_s
        self.realtime = realtime

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield the tone after the first-byte delay."""
        await asyncio.sleep(self.first_byte_delay_s)
        n = min(len(text) * 60, 20000) * SAMPLE_RATE // 1000
        t = np.arange(n) / SAMPLE_RATE
        pcm = (np.sin(2 * np.pi * 440.0 * t) * 8000).astype("<i2").tobytes()
        step = SAMPLE_RATE * 2 // 5
        for i in range(0, len(pcm), step):
            yield pcm[i : i + step]
            if self.realtime:
                await asyncio.sleep(0.2)


class FakeBrain(Brain):
    """Echoes the caller after a delay; hangs up when told "goodbye"."""

    name = "fake"

    def __init__(self, first_token_delay_s: float = 0.0) -> None:
        self.first_token_delay_s = first_token_delay_s

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
