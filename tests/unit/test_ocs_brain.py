"""Tests for gateway.providers.ocs_brain.OcsBrain (sipagent as an OCS's DCS) against the
loopback `tests.fakes.ocs.FakeOcs`: the events it receives, how acknowledgements become
pending or immediate replies, replies delivered later, and errors."""

from __future__ import annotations

import asyncio
import io
import math
import wave
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import pytest

from gateway.providers.base import BrainReply, CallContext, ProviderError
from gateway.providers.ocs_brain import OcsBrain, ocs_call_id
from gateway.providers.webhook_brain import AudioReply
from tests.fakes.bot import FakeBot
from tests.fakes.http import Raw, Reply
from tests.fakes.ocs import FakeOcs

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CTX = CallContext(
    call_id="sip-call-1",
    from_uri="sip:+14155550100@plivo",
    to_uri="sip:agent@worker",
    headers={"X-PH-Customer": "gold", "X-Other": "no"},
    call_uuid=UUID,
    from_number="+14155550100",
    to_number="+442071234567",
    plivo={"customer": "gold"},
)
IDS = {"call_id": UUID, "call_uuid": UUID, "sip_call_id": "sip-call-1"}


@pytest.fixture
def ocs() -> Iterator[FakeOcs]:
    with FakeOcs() as server:
        yield server


def make_brain(ocs: FakeOcs, **options: Any) -> OcsBrain:
    settings: dict[str, Any] = {
        "ocs_url": ocs.url,
        "headers": {"Authorization": "Bearer ocs-secret"},
        "timeout_s": 2.0,
        "pending_timeout_s": 7.5,
    }
    settings.update(options)
    return OcsBrain(**settings)


def run(brain: OcsBrain, coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        try:
            return await coro
        finally:
            await brain.close()

    return asyncio.run(main())


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    n = int(rate * seconds)
    tone = (np.sin(2 * math.pi * 440 * np.arange(n) / rate) * 12000).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(tone.tobytes())
    return out.getvalue()


def test_the_call_id_is_the_one_ocs_can_address() -> None:
    assert ocs_call_id(CallContext(call_id="sip-1")) == "sip-1"
    assert ocs_call_id(CallContext(call_id="sip-1", call_uuid=UUID)) == UUID
    placed = CallContext(call_id="sip-1", call_uuid=UUID, record_id="rec-1")
    assert ocs_call_id(placed) == "rec-1"


def test_start_event_and_a_greeting_that_waits_for_ocs(ocs: FakeOcs) -> None:
    brain = make_brain(ocs)
    reply = run(brain, brain.greeting(CTX))
    assert reply == BrainReply("", intent="greeting", pending_s=7.5)
    assert ocs.events == [
        {
            "event": "start",
            **IDS,
            "from": "+14155550100",
            "to": "+442071234567",
            "headers": {"X-PH-Customer": "gold"},
        }
    ]
    assert ocs.headers[0]["authorization"] == "Bearer ocs-secret"
    # A configured greeting is said meanwhile.
    polite = make_brain(ocs, greeting="Hello, one moment.")
    assert run(polite, polite.greeting(CTX)).text == "Hello, one moment."


def test_acknowledgements_without_a_reply_make_the_turn_pending(ocs: FakeOcs) -> None:
    ocs.acks.extend(
        [
            Raw(b"", content_type="text/plain"),
            Reply({"status": "ok", "message": "queued"}),
            Raw(b"accepted", status=202, content_type="text/plain"),
        ]
    )
    brain = make_brain(ocs)

    async def turns() -> list[BrainReply]:
        return [await brain.respond(text, CTX) for text in ("one", "two", "three")]

    replies = run(brain, turns())
    assert replies == [BrainReply("", pending_s=7.5)] * 3
    assert ocs.of_kind("message") == [
        {"event": "message", **IDS, "text": text, "turn": turn}
        for turn, text in enumerate(("one", "two", "three"), 1)
    ]


def test_an_acknowledgement_carrying_a_reply_is_the_reply(ocs: FakeOcs) -> None:
    ocs.acks.extend(
        [
            Reply({"text": "Welcome to Acme."}),
            Reply({"text": "Ten dollars.", "intent": "balance", "actions": ["hangup"]}),
            Reply({"text": "One moment, please.", "pending": True}),
            Reply({"text": 5}),
        ]
    )
    brain = make_brain(ocs)

    async def main() -> list[BrainReply]:
        return [
            await brain.greeting(CTX),
            await brain.respond("balance", CTX),
            await brain.respond("again", CTX),
        ]

    greeting, answer, holding = run(brain, main())
    assert greeting == BrainReply("Welcome to Acme.", intent="greeting")
    assert answer == BrainReply("Ten dollars.", ("hangup",), "balance")
    assert holding == BrainReply("One moment, please.", pending_s=7.5)
    with pytest.raises(ProviderError) as info:
        run(brain, brain.respond("bad", CTX))
    assert info.value.kind == "malformed"


def test_replies_delivered_later_are_played_with_their_audio(ocs: FakeOcs) -> None:
    ocs.files["ten.wav"] = (wav_bytes(0.5), "audio/wav")
    with FakeBot() as tts:
        tts.tts_audio = (wav_bytes(0.25, rate=8000), "audio/wav")
        brain = make_brain(ocs, tts_url=tts.url("/tts"))

        async def main() -> list[BrainReply | None]:
            await brain.respond("balance", CTX)
            got: list[BrainReply | None] = []
            # Text with the audio OCS's AI_TTS_URL made; then text alone (our HTTP TTS).
            payload = {
                "type": "text",
                "text": "Ten dollars.",
                "audio_url": ocs.audio_url("ten.wav"),
            }
            assert await asyncio.to_thread(brain.deliver, "sip-call-1", payload)
            got.append(await brain.wait_pushed("sip-call-1", timeout_s=5))
            assert brain.deliver("sip-call-1", {"text": "Anything else?"})
            got.append(await brain.wait_pushed("sip-call-1", timeout_s=5))
            assert brain.deliver("no-such-call", {"text": "x"}) is False
            with pytest.raises(ProviderError):
                brain.deliver("sip-call-1", {"text": "x", "pending": True})
            return got

        first, second = run(brain, main())
        assert tts.bodies("/tts") == [{"text": "Anything else?"}]
        (tts_request,) = [r for r in tts.requests if r.path == "/tts"]
        # The configured headers go to the AI TTS too (OCS's own service).
        assert tts_request.headers["authorization"] == "Bearer ocs-secret"
    assert isinstance(first, AudioReply) and first.text == "Ten dollars."
    assert abs(len(first.audio) // 2 - 4000) <= 4  # 0.5 s at 8 kHz
    assert isinstance(second, AudioReply) and len(second.audio) == 4000


def test_the_end_event_goes_out_when_the_call_is_forgotten(ocs: FakeOcs) -> None:
    brain = make_brain(ocs)
    placed = replace(CTX, record_id="rec-1")

    async def main() -> None:
        await brain.greeting(placed)
        brain.forget("sip-call-1")
        brain.forget("sip-call-1")  # once only
        brain.forget("never-seen")

    run(brain, main())  # close() waits for the event in flight
    ends = ocs.of_kind("end")
    assert ends == [{"event": "end", **IDS, "call_id": "rec-1"}]


def test_ocs_errors(ocs: FakeOcs) -> None:
    ocs.acks.extend([Reply({"error": "boom"}, status=500), Reply({}, status=401)])
    brain = make_brain(ocs)
    for kind, status in (("http", 500), ("auth", 401)):
        with pytest.raises(ProviderError) as info:
            run(brain, brain.respond("hi", CTX))
        err = info.value
        assert (err.provider, err.kind, err.status) == ("external", kind, status)
        assert "ocs-secret" not in str(err)
    with pytest.raises(ProviderError) as config:
        OcsBrain(ocs_url="")
    assert config.value.kind == "config"
    with pytest.raises(ProviderError):
        OcsBrain(ocs_url="ftp://ocs.example/")
