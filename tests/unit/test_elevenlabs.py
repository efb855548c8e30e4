"""Tests for gateway.providers.elevenlabs_tts against a loopback fake of ElevenLabs' HTTP API.

The provider uses the official SDK (`AsyncElevenLabs`) pointed at `tests.fakes.elevenlabs`,
a real HTTP/1.1 server on 127.0.0.1 that streams a tone in chunked transfer encoding and can
fail on demand (401, 500, stall, cut, malformed). Nothing reaches the internet.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.providers.base import ProviderError
from gateway.providers.elevenlabs_tts import ElevenLabsTts
from tests.fakes.elevenlabs import FakeElevenLabs

pytestmark = pytest.mark.timeout(20)

KEY = "sk-test-0123456789abcdef"
VOICE = "JBFqnCBsd6RMkjVDRZzb"
TEXT = "Hello, thanks for calling."  # 26 chars: 1.56 s of tone, 24960 bytes


def provider(fake: FakeElevenLabs, **options: Any) -> ElevenLabsTts:
    kwargs: dict[str, Any] = {"api_key": KEY, "voice_id": VOICE, "base_url": fake.base_url}
    kwargs.update(options)
    return ElevenLabsTts(**kwargs)


async def collect(tts: ElevenLabsTts, text: str) -> list[bytes]:
    return [chunk async for chunk in tts.synthesize(text)]


async def fail(tts: ElevenLabsTts, text: str = TEXT) -> tuple[ProviderError, float, list[bytes]]:
    """Run a synthesis that must fail: the error, the seconds it took and the audio before it."""
    got: list[bytes] = []
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        async for chunk in tts.synthesize(text):
            got.append(chunk)
    return info.value, time.monotonic() - started, got


def test_request_carries_format_model_voice_and_settings() -> None:
    async def main(fake: FakeElevenLabs) -> list[bytes]:
        tts = provider(
            fake,
            model_id="eleven_flash_v2_5",
            stability=0.4,
            similarity_boost=0.8,
            style=0.1,
            speed=1.1,
        )
        try:
            return await collect(tts, TEXT)
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY) as fake:
        chunks = asyncio.run(main(fake))
    assert b"".join(chunks) == FakeElevenLabs.audio_for(TEXT)
    [req] = fake.syntheses
    assert req.voice_id == VOICE
    assert req.api_key == KEY
    assert req.query["output_format"] == "pcm_8000"
    assert req.body["text"] == TEXT
    assert req.body["model_id"] == "eleven_flash_v2_5"
    assert req.body["voice_settings"] == {
        "stability": 0.4,
        "similarity_boost": 0.8,
        "style": 0.1,
        "speed": 1.1,
    }  # only the settings given: no nulls for the others
    assert req.outcome == "complete"


def test_default_request_sends_flash_model_and_no_voice_settings() -> None:
    async def main(fake: FakeElevenLabs) -> None:
        tts = provider(fake)
        try:
            await collect(tts, "Hi.")
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY) as fake:
        asyncio.run(main(fake))
    [req] = fake.syntheses
    assert req.body["model_id"] == "eleven_flash_v2_5"
    assert "voice_settings" not in req.body  # the voice's stored settings apply
    assert req.query["output_format"] == "pcm_8000"


def test_audio_streams_before_the_vendor_finishes(caplog: pytest.LogCaptureFixture) -> None:
    """A slow fake (50 ms between 100 ms chunks): the first chunk comes long before the end."""
    arrivals: list[tuple[float, int]] = []

    async def main(fake: FakeElevenLabs) -> None:
        tts = provider(fake)
        try:
            async for chunk in tts.synthesize(TEXT):
                arrivals.append((time.monotonic(), len(chunk)))
        finally:
            await tts.close()

    caplog.set_level(logging.DEBUG, logger="gateway.providers.elevenlabs_tts")
    with FakeElevenLabs(api_key=KEY, chunk_bytes=1600, chunk_delay_s=0.05) as fake:
        asyncio.run(main(fake))
    [req] = fake.syntheses
    assert req.ended_at is not None and req.first_byte_at is not None
    first_at = arrivals[0][0]
    # 16 chunks 50 ms apart: the vendor needs ~0.75 s; the first audio is out well before.
    assert first_at < req.ended_at - 0.4
    assert first_at - req.first_byte_at < 0.2
    assert sum(n for _, n in arrivals) == len(FakeElevenLabs.audio_for(TEXT)) == req.bytes_sent
    assert all(n > 0 and n % 2 == 0 for _, n in arrivals)
    assert len(arrivals) > 10  # streamed in pieces, not buffered whole
    assert any("first audio after" in r.getMessage() for r in caplog.records)
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_realtime_factor_paces_the_audio_faster_than_real_time() -> None:
    """1.56 s of audio generated 4 times faster than real time, after an 80 ms first byte:
    the chunks come over ~0.37 s, not all at once and not at playback speed."""
    arrivals: list[float] = []

    async def main(fake: FakeElevenLabs) -> float:
        tts = provider(fake)
        try:
            started = time.monotonic()
            async for _ in tts.synthesize(TEXT):
                arrivals.append(time.monotonic())
            return started
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, first_byte_delay_s=0.08, realtime_factor=4.0) as fake:
        started = asyncio.run(main(fake))
    [req] = fake.syntheses
    assert req.first_byte_at is not None and req.ended_at is not None
    assert req.first_byte_at - req.started >= 0.08
    assert arrivals[0] - started < 0.3
    audio_s = len(FakeElevenLabs.audio_for(TEXT)) / 16000
    last_chunk_s = 0.1  # 1600-byte chunks: the last one leaves at its start
    assert req.ended_at - req.first_byte_at == pytest.approx(
        (audio_s - last_chunk_s) / 4.0, abs=0.08
    )
    assert len(arrivals) > 5


def test_aclose_mid_stream_stops_the_server_stream() -> None:
    text = "x" * 200  # 12 s of tone: 120 chunks, ~6 s at the fake's pace

    async def main(fake: FakeElevenLabs) -> float:
        tts = provider(fake)
        try:
            stream = tts.synthesize(text)
            assert isinstance(stream, AsyncIterator)
            for _ in range(3):
                await anext(stream)
            closed_at = time.monotonic()
            await stream.aclose()  # type: ignore[attr-defined]
            return closed_at
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, chunk_delay_s=0.05) as fake:
        closed_at = asyncio.run(main(fake))
        assert fake.wait_for(lambda: fake.aborted == 1, timeout_s=2.0)
        [req] = fake.syntheses
        assert req.ended_at is not None
        assert req.ended_at - closed_at < 0.5
        assert req.bytes_sent < len(FakeElevenLabs.audio_for(text)) // 4


def test_cancelling_the_speak_task_stops_the_server_stream() -> None:
    """Barge-in cancels the task that iterates the stream: the HTTP stream stops too."""
    text = "x" * 200

    async def main(fake: FakeElevenLabs) -> float:
        tts = provider(fake)
        got = asyncio.Event()

        async def speak() -> None:
            async for _ in tts.synthesize(text):
                got.set()

        try:
            task = asyncio.create_task(speak())
            await got.wait()
            cancelled_at = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return cancelled_at
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, chunk_delay_s=0.05) as fake:
        cancelled_at = asyncio.run(main(fake))
        assert fake.wait_for(lambda: fake.aborted == 1, timeout_s=2.0)
        [req] = fake.syntheses
        assert req.ended_at is not None and req.ended_at - cancelled_at < 0.5


def test_connection_is_reused_and_close_leaves_nothing_open() -> None:
    async def main(fake: FakeElevenLabs) -> None:
        tts = provider(fake)
        await collect(tts, TEXT)
        await collect(tts, "Second reply.")
        assert fake.open_connections == 1
        await tts.close()
        await tts.close()  # twice is fine

    with FakeElevenLabs(api_key=KEY) as fake:
        baseline = threading.active_count()
        asyncio.run(main(fake))
        assert fake.wait_for(lambda: fake.open_connections == 0, timeout_s=2.0)
        assert fake.wait_for(lambda: threading.active_count() == baseline, timeout_s=2.0)
        first, second = fake.syntheses
        assert first.client_port == second.client_port  # one connection for both replies
    assert threading.active_count() == baseline - 1  # the fake's server thread is gone too


def test_wrong_key_is_auth_error_without_the_key() -> None:
    async def main(fake: FakeElevenLabs) -> ProviderError:
        tts = provider(fake, api_key="sk-wrong-secret-42")
        try:
            err, _, _ = await fail(tts)
            return err
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY) as fake:
        err = asyncio.run(main(fake))
    assert (err.provider, err.kind, err.status) == ("elevenlabs", "auth", 401)
    assert "invalid_api_key" in str(err)
    assert "sk-wrong-secret-42" not in str(err)
    assert "sk-wrong-secret-42" not in repr(err.args)


def test_401_mode_is_auth_error() -> None:
    async def main(fake: FakeElevenLabs) -> ProviderError:
        tts = provider(fake)
        try:
            err, _, _ = await fail(tts)
            return err
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, mode="401") as fake:
        err = asyncio.run(main(fake))
    assert (err.kind, err.status) == ("auth", 401)
    assert KEY not in str(err)


def test_500_is_http_error_with_status() -> None:
    async def main(fake: FakeElevenLabs) -> ProviderError:
        tts = provider(fake)
        try:
            err, _, _ = await fail(tts)
            return err
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, mode="500") as fake:
        err = asyncio.run(main(fake))
    assert (err.kind, err.status) == ("http", 500)
    assert "internal_error" in str(err)
    assert len(fake.syntheses) == 1  # no retries: the failover layer decides


def test_first_byte_stall_times_out() -> None:
    async def main(fake: FakeElevenLabs) -> tuple[ProviderError, float]:
        tts = provider(fake, first_byte_timeout_s=0.5)
        try:
            err, took, _ = await fail(tts)
            return err, took
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, mode="stall") as fake:
        err, took = asyncio.run(main(fake))
        assert fake.wait_for(lambda: fake.aborted == 1, timeout_s=2.0)
    assert err.kind == "timeout"
    assert 0.45 <= took < 0.5 + 0.4


def test_first_byte_delay_counts_from_the_request() -> None:
    """Headers and audio arrive together after 0.3 s: inside a 0.6 s first-byte budget."""

    async def main(fake: FakeElevenLabs) -> list[bytes]:
        tts = provider(fake, first_byte_timeout_s=0.6)
        try:
            return await collect(tts, TEXT)
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, first_byte_delay_s=0.3) as fake:
        chunks = asyncio.run(main(fake))
    assert b"".join(chunks) == FakeElevenLabs.audio_for(TEXT)


def test_mid_stream_stall_times_out_after_chunk_timeout() -> None:
    async def main(fake: FakeElevenLabs) -> tuple[ProviderError, float, list[bytes]]:
        tts = provider(fake, chunk_timeout_s=0.3)
        try:
            return await fail(tts)
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, mode="stall_mid") as fake:
        err, took, got = asyncio.run(main(fake))
        assert fake.wait_for(lambda: fake.aborted == 1, timeout_s=2.0)
    assert err.kind == "timeout"
    assert sum(map(len, got)) > 0  # the audio before the stall was delivered
    assert took < 0.3 + 0.4


def test_cut_stream_is_disconnect() -> None:
    async def main(fake: FakeElevenLabs) -> tuple[ProviderError, float, list[bytes]]:
        tts = provider(fake)
        try:
            return await fail(tts)
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, mode="cut") as fake:
        err, _, got = asyncio.run(main(fake))
    assert err.kind == "disconnect"
    assert 0 < sum(map(len, got)) < len(FakeElevenLabs.audio_for(TEXT))
    assert fake.syntheses[0].outcome == "cut"


@pytest.mark.parametrize("mode", ["odd", "json200"])
def test_malformed_body_is_malformed(mode: str) -> None:
    async def main(fake: FakeElevenLabs) -> tuple[ProviderError, float, list[bytes]]:
        tts = provider(fake)
        try:
            return await fail(tts)
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY, mode=mode, chunk_bytes=999) as fake:
        err, _, got = asyncio.run(main(fake))
    assert err.kind == "malformed"
    assert all(len(chunk) % 2 == 0 for chunk in got)
    if mode == "odd":  # all whole samples were delivered; only the stray byte is missing
        assert b"".join(got) == FakeElevenLabs.audio_for(TEXT)


def test_empty_text_sends_nothing() -> None:
    async def main(fake: FakeElevenLabs) -> list[bytes]:
        tts = provider(fake)
        try:
            return await collect(tts, "   ")
        finally:
            await tts.close()

    with FakeElevenLabs(api_key=KEY) as fake:
        assert asyncio.run(main(fake)) == []
    assert fake.syntheses == []


def test_bad_configuration_is_config_error() -> None:
    with pytest.raises(ProviderError) as info:
        ElevenLabsTts(api_key="", voice_id=VOICE)
    assert info.value.kind == "config"
    with pytest.raises(ProviderError) as info:
        ElevenLabsTts(api_key=KEY, voice_id=VOICE, chunk_timeout_s=0)
    assert info.value.kind == "config"
