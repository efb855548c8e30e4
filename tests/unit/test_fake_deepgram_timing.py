"""The Deepgram fake's timing and realistic mode, seen from a raw WebSocket client.

These check the fake itself (what the gateway's tests and benches rely on): results come a
processing latency after their audio without stopping the receive loop, in order; in
realistic mode interims come once per second of word audio, cumulative, and the
transcript is the test's punctuated sentence.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.fakes.deepgram import FakeDeepgram

pytestmark = pytest.mark.timeout(30)

KEY = "dg-timing-key"
SILENCE = b"\x00\x00" * 160
QUERY = "?encoding=linear16&sample_rate=8000&interim_results=true&endpointing=300"


def tone_frames(ms: int) -> list[bytes]:
    """A -13 dBFS tone in 20 ms frames: words to the fake in listening mode."""
    t = np.arange(ms * 8) / 8000
    pcm = (np.sin(2 * np.pi * 300 * t) * 7000).astype("<i2").tobytes()
    return [pcm[i : i + 320] for i in range(0, len(pcm), 320)]


@pytest.fixture
def fake() -> Iterator[FakeDeepgram]:
    with FakeDeepgram(KEY) as server:
        yield server


async def open_ws(fake: FakeDeepgram, query: str = QUERY) -> ClientConnection:
    return await connect(
        f"{fake.url}/v1/listen{query}", additional_headers={"Authorization": f"Token {KEY}"}
    )


async def receive(ws: ClientConnection, until: str, timeout: float = 5.0) -> list[Any]:
    """(arrival time, message) pairs up to and including the first whose type/flag is
    `until` ("interim", "final", "from_finalize", "Metadata")."""
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = json.loads(await ws.recv())
            out.append((time.monotonic(), msg))
            kind = msg["type"]
            if msg["type"] == "Results":
                kind = "final" if msg["is_final"] else "interim"
                if msg.get("from_finalize"):
                    kind = "from_finalize"
            if kind == until:
                return out


def text(msg: dict[str, Any]) -> str:
    return str(msg["channel"]["alternatives"][0]["transcript"])


def test_results_come_a_latency_after_their_audio_and_finalize_does_not_block_reading(
    fake: FakeDeepgram,
) -> None:
    fake.interim_every = 5
    fake.latency_s = 0.2
    fake.final_delay_s = 0.4

    async def main() -> tuple[float, list[Any], int, float, float]:
        async with await open_ws(fake) as ws:
            sent_at = time.monotonic()
            for _ in range(5):
                await ws.send(SILENCE)
            interim = await receive(ws, "interim")
            await ws.send(json.dumps({"type": "Finalize"}))
            finalize_at = time.monotonic()
            await ws.send(SILENCE)  # read while the Finalize answer is still on its way
            conn = fake.connections[0]
            deadline = time.monotonic() + 2.0
            while conn.audio_bytes < 6 * 320 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            read_after = time.monotonic() - finalize_at
            answer = await receive(ws, "from_finalize")
            answer_s = answer[-1][0] - finalize_at
            return interim[-1][0] - sent_at, answer, conn.audio_bytes, read_after, answer_s

    interim_s, answer, audio_bytes, read_after, answer_s = asyncio.run(main())
    assert 0.19 <= interim_s < 0.6  # the interim waited for its processing latency
    assert audio_bytes == 6 * 320
    assert read_after < 0.2  # the audio after the Finalize was read at once
    assert 0.39 <= answer_s < 0.8  # final_delay_s after the Finalize
    msg = answer[-1][1]
    assert msg["from_finalize"] is True
    assert text(msg) == f"{5 * 320} bytes"  # the audio before the Finalize, not after it


def test_order_is_kept_behind_a_slow_finalize_answer(fake: FakeDeepgram) -> None:
    fake.interim_every = 1
    fake.final_delay_s = 0.3

    async def main() -> list[str]:
        async with await open_ws(fake) as ws:
            await ws.send(SILENCE)
            await receive(ws, "interim")
            await ws.send(json.dumps({"type": "Finalize"}))
            await ws.send(SILENCE)  # its interim is ready long before the Finalize answer
            got = await receive(ws, "interim")
            return [
                "from_finalize" if m.get("from_finalize") else "interim"
                for _, m in got
                if m["type"] == "Results"
            ]

    assert asyncio.run(main()) == ["from_finalize", "interim"]


def test_close_stream_flushes_pending_results_before_metadata(fake: FakeDeepgram) -> None:
    fake.interim_every = 1
    fake.latency_s = 0.3

    async def main() -> list[str]:
        async with await open_ws(fake) as ws:
            await ws.send(SILENCE)
            await ws.send(json.dumps({"type": "CloseStream"}))
            got = await receive(ws, "Metadata")
            return [m["type"] for _, m in got]

    assert asyncio.run(main()) == ["Results", "Metadata"]


def test_realistic_interims_once_a_second_cumulative_with_the_scripted_sentence(
    fake: FakeDeepgram,
) -> None:
    fake.realistic(latency_s=0.05, script=["What are your opening hours?", "Thanks."])
    fake.phrase_gap_s = 0.2

    async def main() -> tuple[list[Any], list[Any]]:
        async with await open_ws(fake) as ws:
            for frame in tone_frames(2500) + [SILENCE] * 20:  # endpointing at 300 ms
                await ws.send(frame)
            first = await receive(ws, "final")
            await asyncio.sleep(0.3)  # the caller's next utterance
            for frame in tone_frames(400) + [SILENCE] * 20:
                await ws.send(frame)
            second = await receive(ws, "final")
            return first, second

    first, second = asyncio.run(main())
    interims = [m for _, m in first if not m["is_final"]]
    # One interim per second of audio, each from the segment's start (cumulative).
    assert [(m["start"], m["duration"]) for m in interims] == [(0.0, 1.0), (0.0, 2.0)]
    # A prefix of the sentence in proportion to the words heard (2.5 words a second).
    assert [text(m) for m in interims] == ["What are your", "What are your opening hours?"]
    final = first[-1][1]
    assert final["speech_final"] is True
    assert text(final) == "What are your opening hours?"
    assert text(second[-1][1]) == "Thanks."
    assert fake.connections[0].query["endpointing"] == "300"


def test_a_marked_pause_splits_the_sentence_between_finals(fake: FakeDeepgram) -> None:
    fake.realistic(latency_s=0.0, script=["Do you sell | croissants?"])

    async def main() -> tuple[str, str]:
        async with await open_ws(fake) as ws:
            for frame in tone_frames(600) + [SILENCE] * 5:
                await ws.send(frame)
            await ws.send(json.dumps({"type": "Finalize"}))  # at the caller's pause
            early = await receive(ws, "from_finalize")
            for frame in tone_frames(500) + [SILENCE] * 5:  # the caller goes on
                await ws.send(frame)
            await ws.send(json.dumps({"type": "Finalize"}))
            late = await receive(ws, "from_finalize")
            return text(early[-1][1]), text(late[-1][1])

    assert asyncio.run(main()) == ("Do you sell", "croissants?")


def test_unscripted_listening_mode_keeps_the_byte_transcript(fake: FakeDeepgram) -> None:
    fake.realistic(latency_s=0.0)

    async def main() -> str:
        async with await open_ws(fake) as ws:
            for frame in tone_frames(400) + [SILENCE] * 20:
                await ws.send(frame)
            got = await receive(ws, "final")
            return text(got[-1][1])

    assert asyncio.run(main()) == f"{(400 + 300) * 16} bytes"
