"""Tests for gateway.providers.webhook_brain.WebhookBrain against a loopback fake bot.

`tests.fakes.bot.FakeBot` plays the customer's dialog service (call start and per-turn
endpoints), an audio file server and an HTTP TTS on 127.0.0.1; each test scripts it, runs
the brain inside ``asyncio.run`` and checks the replies and what the bot received.
"""

from __future__ import annotations

import asyncio
import io
import math
import socket
import threading
import wave
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest

from gateway.providers.base import BrainReply, CallContext, ProviderError
from gateway.providers.webhook_brain import AudioReply, WebhookBrain, decode_audio
from tests.fakes.bot import FakeBot
from tests.fakes.http import Hang, Raw, Reply

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
CTX = CallContext(
    call_id="sip-call-1",
    from_uri="sip:+14155550100@plivo",
    to_uri="sip:agent@worker",
    headers={"X-PH-Customer": "gold", "X-Other": "no"},
    call_uuid="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    from_number="+14155550100",
    to_number="+442071234567",
    plivo={"customer": "gold"},
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def bot() -> Iterator[FakeBot]:
    with FakeBot() as server:
        yield server


def make_brain(bot: FakeBot, **options: Any) -> WebhookBrain:
    settings: dict[str, Any] = {
        "start_url": bot.url("/bot/start"),
        "turn_url": bot.url("/bot/turn"),
        "headers": {"Authorization": "Bearer bot-secret"},
        "timeout_s": 2.0,
    }
    settings.update(options)
    return WebhookBrain(**settings)


def sine(rate: int, seconds: float, channels: int = 1, freq: float = 440.0) -> bytes:
    n = int(rate * seconds)
    tone = (np.sin(2 * math.pi * freq * np.arange(n) / rate) * 12000).astype("<i2")
    return np.repeat(tone, channels).astype("<i2").tobytes()


def wav_bytes(rate: int, seconds: float, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(sine(rate, seconds, channels))
    return out.getvalue()


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


async def in_call(brain: WebhookBrain, coro: Coroutine[Any, Any, T]) -> T:
    try:
        return await coro
    finally:
        await brain.close()


# -- call start ----------------------------------------------------------------------------


def test_call_start_posts_context_and_speaks_the_bot_greeting(bot: FakeBot) -> None:
    bot.on_start(Reply({"text": "Welcome to Acme."}))
    brain = make_brain(bot)
    reply = run(in_call(brain, brain.greeting(CTX)))
    assert type(reply) is BrainReply
    assert reply.text == "Welcome to Acme."
    assert reply.intent == "greeting"
    (request,) = [r for r in bot.requests if r.path == "/bot/start"]
    assert request.headers["authorization"] == "Bearer bot-secret"
    assert request.body == {
        "call_id": "sip-call-1",
        "call_uuid": CTX.call_uuid,
        "from": "+14155550100",
        "to": "+442071234567",
        "headers": {"X-PH-Customer": "gold"},
    }


def test_without_start_url_the_configured_greeting_is_used(bot: FakeBot) -> None:
    brain = make_brain(bot, start_url=None, greeting="Hi there.")
    reply = run(in_call(brain, brain.greeting(CTX)))
    assert reply.text == "Hi there."
    assert bot.requests == []


# -- turns ---------------------------------------------------------------------------------


def test_text_reply_and_turn_numbers(bot: FakeBot) -> None:
    bot.on_turn(Reply({"text": "Ten dollars.", "intent": "balance"}), Reply({"text": "Bye."}))
    brain = make_brain(bot)

    async def main() -> tuple[BrainReply, BrainReply]:
        return await brain.respond("my balance", CTX), await brain.respond("thanks", CTX)

    first, second = run(in_call(brain, main()))
    assert first == BrainReply("Ten dollars.", (), "balance")
    assert second.text == "Bye."
    assert bot.bodies("/bot/turn") == [
        {"call_id": "sip-call-1", "call_uuid": CTX.call_uuid, "text": "my balance", "turn": 1},
        {"call_id": "sip-call-1", "call_uuid": CTX.call_uuid, "text": "thanks", "turn": 2},
    ]


def test_text_reply_spoken_through_ai_tts_url(bot: FakeBot) -> None:
    bot.on_turn(Reply({"text": "Hello from TTS."}))
    bot.tts_audio = (wav_bytes(16000, 0.5), "audio/wav")
    brain = make_brain(bot, tts_url=bot.url("/tts"))
    reply = run(in_call(brain, brain.respond("hi", CTX)))
    assert isinstance(reply, AudioReply)
    assert reply.text == "Hello from TTS."
    assert abs(len(reply.audio) // 2 - 4000) <= 4  # 0.5 s at 8 kHz
    assert rms(reply.audio) > 5000
    assert bot.bodies("/tts") == [{"text": "Hello from TTS."}]
    (tts,) = [r for r in bot.requests if r.path == "/tts"]
    assert tts.headers["authorization"] == "Bearer bot-secret"  # same origin as the bot


def test_ai_tts_raw_l16(bot: FakeBot) -> None:
    bot.on_turn(Reply({"text": "Raw."}))
    big_endian = np.frombuffer(sine(8000, 0.25), dtype="<i2").astype(">i2").tobytes()
    bot.tts_audio = (big_endian, "audio/L16;rate=8000")
    brain = make_brain(bot, tts_url=bot.url("/tts"))
    reply = run(in_call(brain, brain.respond("hi", CTX)))
    assert isinstance(reply, AudioReply)
    assert reply.audio == sine(8000, 0.25)


def test_audio_url_wav_16k_stereo_becomes_8k_mono(bot: FakeBot) -> None:
    bot.files["a.wav"] = (wav_bytes(16000, 1.0, channels=2), "application/octet-stream")
    bot.on_turn(Reply({"audio_url": bot.url("/audio/a.wav"), "text": "a tone"}))
    brain = make_brain(bot)
    reply = run(in_call(brain, brain.respond("play", CTX)))
    assert isinstance(reply, AudioReply)
    assert reply.text == "a tone"
    assert abs(len(reply.audio) // 2 - 8000) <= 4  # 1 s at 8 kHz, mono
    assert rms(reply.audio) > 5000


def test_audio_url_mp3(bot: FakeBot) -> None:
    lameenc = pytest.importorskip(
        "lameenc", reason="lameenc (an MP3 encoder) is needed to make the test MP3"
    )
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(32)
    encoder.set_in_sample_rate(16000)
    encoder.set_channels(1)
    encoder.set_quality(7)
    mp3 = bytes(encoder.encode(sine(16000, 1.0)) + encoder.flush())
    bot.files["a.mp3"] = (mp3, "audio/mpeg")
    bot.on_turn(Reply({"audio_url": bot.url("/audio/a.mp3")}))
    brain = make_brain(bot)
    reply = run(in_call(brain, brain.respond("play", CTX)))
    assert isinstance(reply, AudioReply)
    assert 7600 <= len(reply.audio) // 2 <= 9000  # ~1 s (+ encoder padding)
    assert rms(reply.audio) > 3000


def test_hangup_action_and_end_call(bot: FakeBot) -> None:
    bot.on_turn(Reply({"text": "Goodbye.", "actions": ["hangup"]}), Reply({"end_call": True}))
    brain = make_brain(bot)

    async def main() -> tuple[BrainReply, BrainReply]:
        return await brain.respond("bye", CTX), await brain.respond("bye", CTX)

    first, second = run(in_call(brain, main()))
    assert first.actions == ("hangup",)
    assert second == BrainReply("", ("hangup",))


# -- asynchronous replies ------------------------------------------------------------------


def test_pending_reply_returns_at_once_and_the_push_follows(bot: FakeBot) -> None:
    bot.on_turn(Reply({"pending": True}))
    brain = make_brain(bot, pending_timeout_s=7.5, reply_url="http://agent.test/r/{call_id}")

    async def main() -> tuple[BrainReply, BrainReply | None]:
        reply = await brain.respond("question", CTX)
        # From another thread, as the gateway's HTTP app would.
        results: list[bool] = []
        pusher = threading.Thread(
            target=lambda: results.append(
                brain.deliver("sip-call-1", {"text": "The answer.", "actions": ["hangup"]})
            )
        )
        pusher.start()
        pusher.join()
        assert results == [True]
        return reply, await brain.wait_pushed("sip-call-1", timeout_s=5)

    reply, pushed = run(in_call(brain, main()))
    assert reply == BrainReply("", pending_s=7.5)
    assert pushed == BrainReply("The answer.", ("hangup",))
    body = bot.bodies("/bot/turn")[-1]
    assert body["reply_url"] == "http://agent.test/r/sip-call-1"


def test_reply_url_is_quoted_and_sent_only_when_configured(bot: FakeBot) -> None:
    bot.on_start(Reply({"text": "Hi."}), Reply({"text": "Hi."}))
    odd = CallContext(call_id="a b/c@host")
    plain = make_brain(bot)
    run(in_call(plain, plain.greeting(odd)))
    assert "reply_url" not in bot.bodies("/bot/start")[-1]
    brain = make_brain(bot, reply_url="http://agent.test/bot/calls/{call_id}/reply")
    run(in_call(brain, brain.greeting(odd)))
    assert bot.bodies("/bot/start")[-1]["reply_url"] == (
        "http://agent.test/bot/calls/a%20b%2Fc%40host/reply"
    )


def test_pushed_reply_without_a_waiting_turn(bot: FakeBot) -> None:
    bot.on_start(Reply({"text": "Hi."}))
    bot.tts_audio = (wav_bytes(8000, 0.2), "audio/wav")
    brain = make_brain(bot, tts_url=bot.url("/tts"))

    async def main() -> None:
        await brain.greeting(CTX)
        assert brain.deliver("unknown-call", {"text": "x"}) is False
        with pytest.raises(ProviderError) as info:
            brain.deliver("sip-call-1", {"text": 5})
        assert info.value.kind == "malformed"
        assert brain.take_pushed("sip-call-1") is None
        assert brain.deliver("sip-call-1", {"text": "First."}) is True
        assert brain.deliver("sip-call-1", {"text": "Second."}) is True
        first = await brain.wait_pushed("sip-call-1", timeout_s=5)
        assert isinstance(first, AudioReply) and first.text == "First."
        assert len(first.audio) == 3200
        for _ in range(200):
            if (second := brain.take_pushed("sip-call-1")) is not None:
                break
            await asyncio.sleep(0.01)
        assert second is not None and second.text == "Second."
        assert await brain.wait_pushed("sip-call-1", timeout_s=0.05) is None
        waiter = asyncio.ensure_future(brain.wait_pushed("sip-call-1"))
        await asyncio.sleep(0.01)
        brain.forget("sip-call-1")
        assert await waiter is None
        assert brain.deliver("sip-call-1", {"text": "late"}) is False

    run(in_call(brain, main()))


def test_pending_with_text_answers_now_and_pushes_later(bot: FakeBot) -> None:
    bot.on_turn(Reply({"text": "One moment, please.", "pending": True}))
    brain = make_brain(bot)

    async def main() -> tuple[BrainReply, BrainReply | None]:
        now = await brain.respond("question", CTX)
        brain.deliver("sip-call-1", {"text": "Here it is."})
        return now, await brain.wait_pushed("sip-call-1", timeout_s=5)

    now, later = run(in_call(brain, main()))
    assert now.text == "One moment, please." and now.pending_s == 10.0
    assert later is not None and later.text == "Here it is."


# -- errors --------------------------------------------------------------------------------


def error_kind(bot: FakeBot, **options: Any) -> ProviderError:
    brain = make_brain(bot, **options)
    with pytest.raises(ProviderError) as info:
        run(in_call(brain, brain.respond("hi", CTX)))
    assert "bot-secret" not in str(info.value)
    return info.value


def test_bot_500_is_http(bot: FakeBot) -> None:
    bot.on_turn(Reply({"error": "boom"}, status=500))
    err = error_kind(bot)
    assert (err.kind, err.status, err.provider) == ("http", 500, "webhook")


def test_bot_401_is_auth(bot: FakeBot) -> None:
    bot.on_turn(Reply({"error": "who are you"}, status=401))
    assert error_kind(bot).kind == "auth"


def test_invalid_json_is_malformed(bot: FakeBot) -> None:
    bot.on_turn(Raw(b"{not json"))
    assert error_kind(bot).kind == "malformed"


def test_wrong_shape_is_malformed(bot: FakeBot) -> None:
    bot.on_turn(Reply({"text": "x", "audio_url": "file:///etc/passwd"}))
    assert error_kind(bot).kind == "malformed"


def test_unreachable_bot_is_disconnect(bot: FakeBot) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = error_kind(bot, turn_url=f"http://127.0.0.1:{port}/bot/turn")
    assert err.kind == "disconnect"


def test_slow_bot_is_timeout(bot: FakeBot) -> None:
    bot.on_turn(Hang(3.0))
    assert error_kind(bot, timeout_s=0.3).kind == "timeout"


def test_oversize_audio_is_malformed(bot: FakeBot) -> None:
    bot.files["big.wav"] = (wav_bytes(8000, 1.0), "audio/wav")
    bot.on_turn(Reply({"audio_url": bot.url("/audio/big.wav")}))
    assert error_kind(bot, max_audio_bytes=10_000).kind == "malformed"
    bot.chunked = True  # no Content-Length: the limit holds while reading
    bot.on_turn(Reply({"audio_url": bot.url("/audio/big.wav")}))
    assert error_kind(bot, max_audio_bytes=10_000).kind == "malformed"


def test_undecodable_audio_and_missing_file(bot: FakeBot) -> None:
    bot.files["junk.bin"] = (b"this is not audio" * 10, "application/octet-stream")
    bot.on_turn(Reply({"audio_url": bot.url("/audio/junk.bin")}))
    assert error_kind(bot).kind == "malformed"
    bot.on_turn(Reply({"audio_url": bot.url("/audio/missing.wav")}))
    err = error_kind(bot)
    assert (err.kind, err.status) == ("http", 404)


def test_decode_audio_rejects_empty_wav() -> None:
    with pytest.raises(ProviderError) as info:
        decode_audio(wav_bytes(8000, 0.0))
    assert info.value.kind == "malformed"
