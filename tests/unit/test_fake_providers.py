"""The fake providers' latencies and pacing, and the settings that configure them."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gateway.audio.pcm import FRAME_BYTES, SAMPLE_RATE, split_frames
from gateway.providers.base import CallContext
from gateway.providers.fake import (
    TONE_MS_PER_CHAR,
    FakeBrain,
    FakeStt,
    FakeTts,
    tone_pcm,
)
from gateway.providers.registry import build_providers
from sip_config import ConfigError, load_settings

CTX = CallContext(call_id="test")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SIPAGENT_* variables and no stray .env."""
    for name in list(os.environ):
        if name.upper().startswith("SIPAGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


async def _collect(tts: FakeTts, text: str) -> tuple[float, list[tuple[float, bytes]]]:
    """(start, [(arrival, chunk)]) of one synthesis."""
    start = time.monotonic()
    chunks = [(time.monotonic(), c) async for c in tts.synthesize(text)]
    return start, chunks


# --- latencies ---------------------------------------------------------------------------


def test_stt_final_waits_the_configured_delay() -> None:
    async def run() -> tuple[float, str]:
        stream = await FakeStt(final_delay_s=0.15).open_stream()
        await stream.feed(bytes(SAMPLE_RATE * 2))  # one second
        t0 = time.monotonic()
        text = await stream.finish()
        return time.monotonic() - t0, text

    took, text = asyncio.run(run())
    assert 0.14 <= took < 0.5
    assert text == "utterance of 1000 milliseconds"


def test_brain_reply_waits_the_first_token_delay_but_the_greeting_does_not() -> None:
    brain = FakeBrain(first_token_delay_s=0.12)

    async def run() -> tuple[float, float, str]:
        t0 = time.monotonic()
        await brain.greeting(CTX)
        t1 = time.monotonic()
        reply = await brain.respond("hello", CTX)
        return t1 - t0, time.monotonic() - t1, reply.text

    greet, respond, text = asyncio.run(run())
    assert greet < 0.05
    assert 0.11 <= respond < 0.5
    assert text == "You said hello."


def test_tts_first_byte_delay() -> None:
    start, chunks = asyncio.run(_collect(FakeTts(first_byte_delay_s=0.08), "abc"))
    assert 0.07 <= chunks[0][0] - start < 0.4


def test_no_delays_by_default() -> None:
    async def run() -> float:
        t0 = time.monotonic()
        stream = await FakeStt().open_stream()
        await stream.finish()
        await FakeBrain().respond("x", CTX)
        async for _ in FakeTts().synthesize("a long reply " * 20):
            pass
        return time.monotonic() - t0

    assert asyncio.run(run()) < 0.1


@pytest.mark.parametrize(
    "make",
    [
        lambda: FakeStt(final_delay_s=-0.1),
        lambda: FakeBrain(first_token_delay_s=61.0),
        lambda: FakeTts(first_byte_delay_s=-1.0),
        lambda: FakeTts(speed=0.5),
        lambda: FakeTts(speed=101.0),
        lambda: FakeTts(chunk_ms=30),
    ],
)
def test_bad_arguments_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


# --- the tone ----------------------------------------------------------------------------


def test_tone_is_continuous_and_as_long_as_the_text() -> None:
    text = "You said utterance of 1200 milliseconds."
    _, chunks = asyncio.run(_collect(FakeTts(), text))
    pcm = b"".join(c for _, c in chunks)
    assert len(pcm) == len(text) * TONE_MS_PER_CHAR * SAMPLE_RATE * 2 // 1000
    assert pcm == tone_pcm(len(text) * TONE_MS_PER_CHAR)
    frames = split_frames(pcm)
    peaks = [
        int(np.abs(np.frombuffer(f, dtype="<i2").astype(np.int32)).max())
        for f in frames
        if len(f) == FRAME_BYTES
    ]
    assert min(peaks) > 4000  # no silent frame anywhere: a gap heard later is an underrun


def test_tone_is_capped_at_20_seconds() -> None:
    assert len(tone_pcm(25_000)) == 20 * SAMPLE_RATE * 2
    assert tone_pcm(0) == b""


def test_unpaced_tts_yields_everything_at_once() -> None:
    start, chunks = asyncio.run(_collect(FakeTts(), "x" * 50))  # 3 s of audio
    assert len(chunks) == 15
    assert chunks[-1][0] - start < 0.05


class _VirtualTime:
    """The clock FakeTts paces itself by, moved only by its sleeps; the sleep after chunk
    ``i`` oversleeps by ``late[i]`` seconds (a loaded machine), so a test sees where the
    next chunks land without waiting on, or being disturbed by, the wall clock."""

    def __init__(self, late: dict[int, float]) -> None:
        self.now = 1000.0
        self.sleeps = 0
        self.late = late

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += max(delay, 0.0) + self.late.get(self.sleeps, 0.0)
        self.sleeps += 1


@pytest.mark.parametrize(("speed", "chunk_ms"), [(1.0, 100), (2.0, 200), (4.0, 200)])
def test_paced_tts_keeps_ahead_of_real_time_on_an_absolute_schedule(
    speed: float, chunk_ms: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.providers.fake as fake

    # Sleep 0 is the first-byte delay; sleep 2 (before the third chunk) runs 70 ms late.
    clock = _VirtualTime({2: 0.07})
    monkeypatch.setattr(fake, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(fake, "asyncio", SimpleNamespace(sleep=clock.sleep))

    async def collect() -> list[tuple[float, bytes]]:
        return [
            (clock.monotonic(), c)
            async for c in FakeTts(speed=speed, chunk_ms=chunk_ms).synthesize("x" * 20)
        ]  # 1.2 s of audio

    start = clock.now
    chunks = asyncio.run(collect())
    n = 1200 // chunk_ms
    assert len(chunks) == n
    interval = chunk_ms / 1000.0 / speed
    late_chunk = 2
    for i, (at, chunk) in enumerate(chunks):
        assert len(chunk) == chunk_ms * SAMPLE_RATE * 2 // 1000
        expected = i * interval
        if i >= late_chunk:  # what the late chunk's schedule had passed goes out at once
            expected = max(expected, late_chunk * interval + 0.07)
        # On the schedule: the late chunk is late, the ones after it catch up (no drift).
        assert at - start == pytest.approx(expected, abs=1e-9), i
        # the audio delivered so far always covers the time elapsed since the first chunk
        assert (i + 1) * chunk_ms / 1000.0 >= at - start


def test_realtime_flag_means_speed_one() -> None:
    assert FakeTts(realtime=True).speed == 1.0
    assert FakeTts(realtime=True).realtime
    assert not FakeTts().realtime


# --- settings and the registry -----------------------------------------------------------


def test_latency_settings_default_to_zero() -> None:
    p = load_settings(env_file=None).providers
    assert (p.fake_stt_final_ms, p.fake_llm_first_token_ms, p.fake_tts_first_byte_ms) == (0, 0, 0)
    assert p.fake_tts_speed == 0.0


def test_registry_gives_the_fakes_their_latencies(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "STT": "fake",
        "TTS": "fake",
        "BRAIN": "fake",
        "FAKE_STT_FINAL_MS": "200",
        "FAKE_LLM_FIRST_TOKEN_MS": "150",
        "FAKE_TTS_FIRST_BYTE_MS": "80",
        "FAKE_TTS_SPEED": "2",
    }.items():
        monkeypatch.setenv(f"SIPAGENT_PROVIDERS__{key}", value)
    providers = build_providers(load_settings(env_file=None))
    assert isinstance(providers.stt, FakeStt)
    assert isinstance(providers.tts, FakeTts)
    assert isinstance(providers.brain, FakeBrain)
    assert providers.stt.final_delay_s == pytest.approx(0.2)
    assert providers.brain.first_token_delay_s == pytest.approx(0.15)
    assert providers.tts.first_byte_delay_s == pytest.approx(0.08)
    assert providers.tts.speed == 2.0


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("fake_stt_final_ms", -1, "providers.fake_stt_final_ms: Input should be greater than"),
        ("fake_llm_first_token_ms", 10001, "providers.fake_llm_first_token_ms: Input should"),
        ("fake_tts_first_byte_ms", "soon", "providers.fake_tts_first_byte_ms: "),
        ("fake_tts_speed", 0.5, "providers.fake_tts_speed: must be 0 (unpaced) or at least 1"),
        ("fake_tts_speed", 101, "providers.fake_tts_speed: Input should be less than"),
    ],
)
def test_bad_latency_settings_name_the_field(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=None, overrides={"providers": {key: value}})
    assert str(info.value).startswith(expected), str(info.value)
