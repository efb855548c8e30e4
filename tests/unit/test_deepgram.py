"""Tests for gateway.providers.deepgram_stt against a loopback fake of Deepgram's live API.

The provider talks to `tests.fakes.deepgram.FakeDeepgram` through the official SDK (the
fake's URL is the SDK environment's WebSocket base).  The fake transcribes a segment as
"<n> bytes", so a transcript tells how much audio the fake received on that socket.
Audio is fed as fast as the test can (the provider does not pace it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from gateway.providers.base import ProviderError
from tests.fakes.deepgram import FakeDeepgram
from tests.helpers.deepgram import KEY, provider, wait_until

pytestmark = pytest.mark.timeout(30)

FRAME = b"\x10\x00" * 160  # 20 ms of 8 kHz 16-bit mono PCM
T = TypeVar("T")


@pytest.fixture
def fake() -> Iterator[FakeDeepgram]:
    with FakeDeepgram(KEY) as server:
        yield server


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


def test_query_parameters_and_auth_header(fake: FakeDeepgram) -> None:
    async def main() -> str:
        stt = provider(fake)
        try:
            stream = await stt.open_stream()
            await stream.feed(FRAME)
            return await stream.finish()
        finally:
            await stt.close()

    assert run(main) == "320 bytes"
    conn = fake.connections[0]
    assert conn.path == "/v1/listen"
    assert conn.authorization == f"Token {KEY}"
    q = conn.query
    assert q["encoding"] == "linear16"
    assert q["sample_rate"] == "8000"
    assert q["channels"] == "1"
    assert q["interim_results"] == "true"
    assert q["model"] == "nova-3"
    assert q["language"] == "en-US"
    assert q["endpointing"] == "300"
    assert q["utterance_end_ms"] == "1000"


def test_one_second_utterance_with_interims(fake: FakeDeepgram) -> None:
    interims: list[str] = []

    async def main() -> str:
        stt = provider(fake)
        try:
            stream = await stt.open_stream()
            stream.on_interim = interims.append
            for _ in range(50):
                await stream.feed(FRAME)
            return await stream.finish()
        finally:
            await stt.close()

    assert run(main) == "16000 bytes"
    conn = fake.connections[0]
    assert conn.audio_bytes == 16000
    assert conn.audio_messages == 50
    assert conn.finalizes == 1
    assert conn.close_streams == 1
    assert interims and interims[0] == "3200 bytes"


def test_final_segments_are_joined(fake: FakeDeepgram) -> None:
    fake.final_every = 20  # endpointing finals after 400 ms and 800 ms of audio

    async def main() -> str:
        stt = provider(fake)
        try:
            stream = await stt.open_stream()
            for _ in range(50):
                await stream.feed(FRAME)
            return await stream.finish()
        finally:
            await stt.close()

    assert run(main) == "6400 bytes 6400 bytes 3200 bytes"


def test_finalize_without_answer_after_final_results(fake: FakeDeepgram) -> None:
    fake.final_every = 10  # the last audio message closes a segment: nothing left to flush

    async def main() -> tuple[str, float]:
        stt = provider(fake, final_timeout_s=2.0)
        try:
            stream = await stt.open_stream()
            for _ in range(50):
                await stream.feed(FRAME)
            start = time.monotonic()
            text = await stream.finish()
            return text, time.monotonic() - start
        finally:
            await stt.close()

    text, elapsed = run(main)
    assert text == " ".join(["3200 bytes"] * 5)
    assert elapsed < 1.5  # a short grace, not the whole final_timeout_s (2 s)
    assert not any(m.get("from_finalize") for m in fake.connections[0].sent)


def test_empty_utterance_sends_no_finalize(fake: FakeDeepgram) -> None:
    async def main() -> str:
        stt = provider(fake)
        try:
            stream = await stt.open_stream()
            return await stream.finish()
        finally:
            await stt.close()

    assert run(main) == ""
    assert fake.connections[0].finalizes == 0


def test_warm_socket_reused_and_kept_alive(fake: FakeDeepgram) -> None:
    fake.idle_timeout_s = 0.5  # the fake closes a socket silent this long (Deepgram: 10 s)

    async def main() -> str:
        stt = provider(fake, warm_sockets=1, keepalive_s=0.15)
        try:
            await stt.warm_up()
            await wait_until(lambda: len(fake.connections) == 1)
            await asyncio.sleep(1.2)  # the agent speaks; no audio goes to Deepgram
            assert fake.connections[0].open
            assert fake.connections[0].keepalives >= 4
            assert stt.warm_count == 1
            stream = await stt.open_stream()  # takes the warm socket, warms a replacement
            for _ in range(5):
                await stream.feed(FRAME)
            text = await stream.finish()
            await wait_until(lambda: len(fake.connections) == 2)
            return text
        finally:
            await stt.close()

    assert run(main) == "1600 bytes"
    assert fake.connections[0].audio_bytes == 1600
    assert fake.connections[1].audio_bytes == 0


def test_idle_sockets_are_closed(fake: FakeDeepgram) -> None:
    async def main() -> None:
        stt = provider(fake, warm_sockets=2, max_idle_s=0.3, keepalive_s=0.1)
        try:
            await stt.warm_up()
            assert stt.warm_count == 2
            await wait_until(lambda: fake.open_connections() == 0)
            assert stt.warm_count == 0
        finally:
            await stt.close()

    run(main)


def test_socket_closed_by_server_while_idle_is_replaced(fake: FakeDeepgram) -> None:
    fake.idle_timeout_s = 0.3  # and no KeepAlive in time: the fake closes the warm socket

    async def main() -> str:
        stt = provider(fake, warm_sockets=1, keepalive_s=30.0)
        try:
            await stt.warm_up()
            await wait_until(lambda: fake.open_connections() == 0)
            await wait_until(lambda: stt.warm_count == 0)
            fake.idle_timeout_s = 10.0
            stream = await stt.open_stream()
            await stream.feed(FRAME)
            return await stream.finish()
        finally:
            await stt.close()

    assert run(main) == "320 bytes"
    assert fake.connections[1].audio_bytes == 320


def test_drop_mid_utterance_reconnects_and_resends(fake: FakeDeepgram) -> None:
    fake.drop_after = 10  # abort the first connection at its 10th audio message
    fake.final_every = 5  # finals on the first socket must not be counted twice

    async def main() -> tuple[str, bool]:
        stt = provider(fake)
        try:
            stream = await stt.open_stream()
            for _ in range(50):
                await stream.feed(FRAME)
            return await stream.finish(), stream.reconnected
        finally:
            await stt.close()

    text, reconnected = run(main)
    assert reconnected
    assert len(fake.connections) == 2
    assert fake.connections[0].audio_messages == 10
    assert fake.connections[1].audio_bytes == 16000  # the whole utterance on the new socket
    # Segments of the dropped socket are discarded, those of the new one cover all audio once.
    assert sum(int(n) for n in text.split()[::2]) == 16000


def test_second_drop_fails_with_disconnect(fake: FakeDeepgram) -> None:
    fake.drop_after = 3
    fake.drops = 2

    async def main() -> None:
        stt = provider(fake)
        try:
            stream = await stt.open_stream()
            for _ in range(50):
                await stream.feed(FRAME)
            with pytest.raises(ProviderError) as info:
                await stream.finish()
            assert info.value.kind == "disconnect"
        finally:
            await stt.close()

    run(main)
    assert len(fake.connections) == 2


def test_bad_key_is_auth_error_without_the_key(fake: FakeDeepgram) -> None:
    secret = "wrong-secret-key-987"

    async def main() -> None:
        stt = provider(fake, api_key=secret)
        try:
            with pytest.raises(ProviderError) as info:
                await stt.open_stream()
            assert info.value.kind == "auth"
            assert info.value.status == 401
            assert info.value.provider == "deepgram"
            assert secret not in str(info.value)
        finally:
            await stt.close()

    run(main)
    assert fake.rejected == [401]


def test_server_error_is_http_error(fake: FakeDeepgram) -> None:
    fake.reject_status = 500

    async def main() -> None:
        stt = provider(fake)
        try:
            with pytest.raises(ProviderError) as info:
                await stt.open_stream()
            assert info.value.kind == "http"
            assert info.value.status == 500
        finally:
            await stt.close()

    run(main)


def test_no_upgrade_answer_is_connect_timeout(fake: FakeDeepgram) -> None:
    fake.hang_handshake_s = 1.5

    async def main() -> float:
        stt = provider(fake, connect_timeout_s=0.3)
        try:
            start = time.monotonic()
            with pytest.raises(ProviderError) as info:
                await stt.open_stream()
            assert info.value.kind == "timeout"
            return time.monotonic() - start
        finally:
            await stt.close()

    assert run(main) < 1.0


def test_no_final_answer_is_timeout(fake: FakeDeepgram) -> None:
    fake.silent = True

    async def main() -> float:
        stt = provider(fake, final_timeout_s=0.5)
        try:
            stream = await stt.open_stream()
            for _ in range(10):
                await stream.feed(FRAME)
            start = time.monotonic()
            with pytest.raises(ProviderError) as info:
                await stream.finish()
            assert info.value.kind == "timeout"
            return time.monotonic() - start
        finally:
            await stt.close()

    elapsed = run(main)
    assert 0.45 < elapsed < 2.0  # the 0.5 s timeout, with slack for a loaded machine
    assert fake.connections[0].finalizes == 1


@pytest.mark.parametrize("mode", ["malformed", "malformed_results"])
def test_malformed_message(fake: FakeDeepgram, mode: str) -> None:
    setattr(fake, mode, True)

    async def main() -> None:
        stt = provider(fake)
        try:
            stream = await stt.open_stream()
            for _ in range(5):
                await stream.feed(FRAME)
            with pytest.raises(ProviderError) as info:
                await stream.finish()
            assert info.value.kind == "malformed"
        finally:
            await stt.close()

    run(main)
    assert len(fake.connections) == 1  # no reconnect for a bad payload


def test_cancel_is_idempotent_and_closes_only_its_socket(fake: FakeDeepgram) -> None:
    async def main() -> str:
        stt = provider(fake)
        try:
            first = await stt.open_stream()
            second = await stt.open_stream()
            for _ in range(5):
                await first.feed(FRAME)
                await second.feed(FRAME)
            await wait_until(lambda: len(fake.connections) == 2)
            await first.cancel()
            await first.cancel()
            await wait_until(lambda: not fake.connections[0].open)
            assert fake.connections[1].open
            await second.feed(FRAME)
            text = await second.finish()
            await first.cancel()
            return text
        finally:
            await stt.close()

    assert run(main) == "1920 bytes"
    assert fake.connections[0].finalizes == 0
    assert fake.connections[0].close_streams == 1


def test_close_leaves_no_sockets_tasks_or_threads(fake: FakeDeepgram) -> None:
    threads_before = threading.active_count()

    async def main() -> None:
        stt = provider(fake, warm_sockets=3, keepalive_s=0.1)
        await stt.warm_up()
        stream = await stt.open_stream()
        await stream.feed(FRAME)
        await stt.close()
        await wait_until(lambda: fake.open_connections() == 0)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(ProviderError):
            await stt.open_stream()

    run(main)
    assert len(fake.connections) >= 3  # the replacement warming may be cancelled before it
    assert threading.active_count() == threads_before
