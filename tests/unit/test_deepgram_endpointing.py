"""Deepgram's own end of utterance (endpointing ``speech_final`` and ``UtteranceEnd``) through
the official SDK, against the fake in listening mode: it hears words in frames louder than
-30 dBFS and sound (for its endpointing VAD) above -45 dBFS, so noise at -40 dBFS holds
endpointing off but not UtteranceEnd, as Deepgram documents.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from gateway.providers.deepgram_stt import DeepgramStt, DeepgramSttStream
from tests.fakes.deepgram import FakeDeepgram
from tests.helpers.deepgram import KEY, provider, wait_until

pytestmark = pytest.mark.timeout(30)

SILENCE = b"\x00\x00" * 160


def tone(ms: int) -> list[bytes]:
    """A loud 300 Hz tone (-13 dBFS): words to the fake."""
    t = np.arange(ms * 8) / 8000
    pcm = (np.sin(2 * np.pi * 300 * t) * 7000).astype("<i2").tobytes()
    return [pcm[i : i + 320] for i in range(0, len(pcm), 320)]


def noise(ms: int, dbfs: float = -40.0, seed: int = 3) -> list[bytes]:
    rng = np.random.default_rng(seed)
    pcm = (rng.normal(0, 32768 * 10 ** (dbfs / 20), ms * 8)).astype("<i2").tobytes()
    return [pcm[i : i + 320] for i in range(0, len(pcm), 320)]


@pytest.fixture
def fake() -> Iterator[FakeDeepgram]:
    with FakeDeepgram(KEY) as server:
        server.word_dbfs = -30.0
        server.vad_dbfs = -45.0
        server.interim_every = 10
        yield server


async def feed(stream: DeepgramSttStream, frames: list[bytes]) -> None:
    for f in frames:
        await stream.feed(f)


def test_endpointing_speech_final_ends_the_utterance_without_a_finalize_wait(
    fake: FakeDeepgram,
) -> None:
    fake.final_delay_s = 1.0  # a Finalize answer would take a second

    async def main() -> tuple[float | None, bool | None, float | None, str, float]:
        stt = provider(fake, endpointing_ms=300)
        try:
            stream = await stt.open_stream()
            words = stream.heard_words()  # nothing heard yet
            await feed(stream, tone(600))
            await wait_until(lambda: stream.heard_words() is True)  # interims with words
            before = stream.utterance_end()
            await feed(stream, [SILENCE] * 20)  # 400 ms: endpointing at 300
            await wait_until(lambda: stream.utterance_end() is not None)
            end = stream.utterance_end()
            t0 = time.monotonic()
            text = await stream.finish()
            return before, words, end, text, time.monotonic() - t0
        finally:
            await stt.close()

    before, words, end, text, elapsed = asyncio.run(main())
    assert before is None
    assert words is False
    # 400 ms of silence fed after the last word.
    assert end == pytest.approx(400.0, abs=1.0)
    # The speech_final segment: the tone plus the 300 ms of silence that ended it.
    assert text == f"{(600 + 300) * 16} bytes"
    assert elapsed < 0.8  # no wait for the from_finalize answer (1 s away)
    sent = fake.connections[0].sent
    assert [m["speech_final"] for m in sent if m.get("is_final")][:1] == [True]
    assert fake.connections[0].query["endpointing"] == "300"


def test_noise_holds_endpointing_off_and_utterance_end_ends_the_utterance(
    fake: FakeDeepgram,
) -> None:
    async def main() -> tuple[float | None, float | None, str]:
        stt = provider(fake, endpointing_ms=300, utterance_end_ms=1000)
        try:
            stream = await stt.open_stream()
            await feed(stream, noise(300) + tone(500))
            await feed(stream, noise(900))
            await asyncio.sleep(0.2)
            early = stream.utterance_end()  # 900 ms of noise: no end yet
            await feed(stream, noise(200))
            await wait_until(lambda: stream.utterance_end() is not None)
            return early, stream.utterance_end(), await stream.finish()
        finally:
            await stt.close()

    early, end, text = asyncio.run(main())
    assert early is None
    assert end == pytest.approx(1100.0, abs=1.0)
    conn = fake.connections[0]
    assert conn.utterance_ends == 1
    assert not any(m.get("speech_final") for m in conn.sent if m["type"] == "Results")
    types = [m["type"] for m in conn.sent]
    assert "UtteranceEnd" in types
    # The words' segment was sent final just before UtteranceEnd; its timing is the words'.
    final = conn.sent[types.index("UtteranceEnd") - 1]
    assert final["is_final"] and final["channel"]["alternatives"][0]["transcript"]
    assert final["channel"]["alternatives"][0]["words"][-1]["end"] == pytest.approx(0.8)
    assert text == final["channel"]["alternatives"][0]["transcript"]


def test_words_after_the_end_take_it_back(fake: FakeDeepgram) -> None:
    async def main() -> list[float | None]:
        stt = provider(fake, endpointing_ms=200)
        try:
            stream = await stt.open_stream()
            await feed(stream, tone(400) + [SILENCE] * 15)
            await wait_until(lambda: stream.utterance_end() is not None)
            seen = [stream.utterance_end()]
            await feed(stream, tone(400))  # interims with words follow
            await wait_until(lambda: stream.utterance_end() is None)
            seen.append(stream.utterance_end())
            await feed(stream, [SILENCE] * 15)
            await wait_until(lambda: stream.utterance_end() is not None)
            seen.append(stream.utterance_end())
            await stream.cancel()
            return seen
        finally:
            await stt.close()

    first, middle, last = asyncio.run(main())
    assert first == pytest.approx(300.0, abs=1.0)
    assert middle is None
    assert last == pytest.approx(300.0, abs=1.0)


def test_noise_alone_is_no_words_and_no_end(fake: FakeDeepgram) -> None:
    async def main() -> tuple[bool | None, float | None, str]:
        stt = provider(fake, endpointing_ms=300, utterance_end_ms=1000)
        try:
            stream = await stt.open_stream()
            await feed(stream, noise(2000) + [SILENCE] * 30)
            await asyncio.sleep(0.3)
            return stream.heard_words(), stream.utterance_end(), await stream.finish()
        finally:
            await stt.close()

    words, end, text = asyncio.run(main())
    assert (words, end, text) == (False, None, "")
    assert fake.connections[0].utterance_ends == 0


def test_a_late_utterance_end_of_the_previous_utterance_is_ignored(fake: FakeDeepgram) -> None:
    # One socket serves both utterances (refilling the pool fails, so the used socket goes
    # back to it).  The first utterance is finalised right after its words, so Deepgram's
    # UtteranceEnd for them comes during the second utterance's audio.
    async def main() -> tuple[int, bool | None, float | None, str]:
        stt: DeepgramStt = provider(fake, warm_sockets=1, utterance_end_ms=1000)
        try:
            await stt.warm_up()
            fake.reject_status = 500
            first = await stt.open_stream()
            await wait_until(lambda: bool(fake.rejected))
            await feed(first, tone(500))
            assert await first.finish()
            await wait_until(lambda: stt.warm_count == 1)
            second = await stt.open_stream()
            await feed(second, noise(1500))
            await wait_until(lambda: fake.connections[0].utterance_ends == 1)
            await asyncio.sleep(0.1)
            result = (len(fake.connections), second.heard_words(), second.utterance_end())
            return (*result, await second.finish())
        finally:
            await stt.close()

    sockets, words, end, text = asyncio.run(main())
    assert sockets == 1
    assert (words, end, text) == (False, None, "")


def test_dropped_socket_after_words_still_gets_the_end(fake: FakeDeepgram) -> None:
    fake.drop_after = 30  # the first socket dies 600 ms in, during the words

    async def main() -> tuple[bool, float | None, str]:
        stt = provider(fake, endpointing_ms=300)
        try:
            stream = await stt.open_stream()
            await feed(stream, tone(800))
            # Paced like a call (the drop is noticed on a later frame), until the end.
            for _ in range(100):
                await stream.feed(SILENCE)
                await asyncio.sleep(0.01)
                if stream.utterance_end() is not None:
                    break
            return stream.reconnected, stream.utterance_end(), await stream.finish()
        finally:
            await stt.close()

    reconnected, end, text = asyncio.run(main())
    assert reconnected
    assert end is not None and 300.0 <= end <= 600.0
    assert text == f"{(800 + 300) * 16} bytes"  # everything resent on the new socket
    assert len(fake.connections) == 2
