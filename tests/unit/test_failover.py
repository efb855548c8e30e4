"""Failover wrappers: timeouts, one retry, secondaries, and nothing of the caller lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from gateway.providers.base import (
    EXPECT_DIGITS,
    Brain,
    BrainReply,
    CallContext,
    ProviderError,
    ReplyStream,
    SttProvider,
    SttStream,
    TtsProvider,
)
from gateway.providers.failover import ResilientBrain, ResilientStt, ResilientTts
from gateway.tally import TALLY, count_vendor_error

CTX = CallContext(call_id="c1")


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


class Tts(TtsProvider):
    def __init__(self, name: str, mode: str = "ok", audio: bytes = b"\x01\x00" * 80) -> None:
        self.name = name
        self.mode = mode
        self.audio = audio
        self.calls = 0
        self.closed = 0

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.calls += 1
        try:
            if self.mode == "error":
                raise ProviderError(self.name, "http", "500", status=500)
            if self.mode == "stall":
                await asyncio.sleep(30)
            yield self.audio
            if self.mode == "cut":
                raise ProviderError(self.name, "disconnect", "stream cut")
            yield self.audio
        finally:
            self.closed += 1


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


def test_tts_primary_error_is_retried_once_then_the_secondary_speaks() -> None:
    async def body() -> None:
        primary, secondary = Tts("eleven", "error"), Tts("piper", audio=b"\x02\x00" * 80)
        tts = ResilientTts([primary, secondary], first_audio_timeout_s=1.0)
        assert await collect(tts.synthesize("hi")) == b"\x02\x00" * 160
        assert (primary.calls, secondary.calls) == (2, 1)

    run(body())


def test_tts_stall_times_out_within_the_budget() -> None:
    async def body() -> None:
        primary, secondary = Tts("eleven", "stall"), Tts("piper")
        tts = ResilientTts([primary, secondary], first_audio_timeout_s=0.2, retries=1)
        t0 = time.monotonic()
        assert await collect(tts.synthesize("hi"))
        # Two timed-out attempts and the fallback; slack for a loaded machine (a missed
        # timeout would take the stall's 30 s).
        assert time.monotonic() - t0 < 0.2 * 2 + 2.0
        assert primary.closed == 2  # both stalled attempts were closed

    run(body())


def test_tts_failure_after_audio_started_is_not_replayed() -> None:
    async def body() -> None:
        primary, secondary = Tts("eleven", "cut"), Tts("piper")
        tts = ResilientTts([primary, secondary], first_audio_timeout_s=1.0)
        got: list[bytes] = []
        with pytest.raises(ProviderError, match="disconnect"):
            async for chunk in tts.synthesize("hi"):
                got.append(chunk)
        assert len(got) == 1 and secondary.calls == 0

    run(body())


def test_tts_all_failing_raises_one_clear_error() -> None:
    async def body() -> None:
        tts = ResilientTts([Tts("a", "error"), Tts("b", "error")], first_audio_timeout_s=1.0)
        with pytest.raises(ProviderError, match="every TTS provider failed"):
            await collect(tts.synthesize("hi"))

    run(body())


class Stt(SttProvider):
    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.streams: list[_SttStream] = []
        self.expected: list[str | None] = []

    async def open_stream(self, expect: str | None = None) -> SttStream:
        self.expected.append(expect)
        if self.mode == "no-connect":
            raise ProviderError(self.name, "timeout", "connect")
        stream = _SttStream(self)
        self.streams.append(stream)
        return stream


class _SttStream(SttStream):
    def __init__(self, owner: Stt) -> None:
        self.owner = owner
        self.audio = b""
        self.cancelled = False

    async def feed(self, pcm: bytes) -> None:
        if self.owner.mode == "drop" and len(self.audio) >= 640:
            raise ProviderError(self.owner.name, "disconnect", "socket closed")
        self.audio += pcm

    async def finish(self) -> str:
        if self.owner.mode == "stall":
            await asyncio.sleep(30)
        if self.owner.mode == "error":
            raise ProviderError(self.owner.name, "http", "500", status=500)
        return f"{self.owner.name} heard {len(self.audio)} bytes"

    async def cancel(self) -> None:
        self.cancelled = True


FRAMES = [bytes([i]) * 320 for i in range(10)]


async def utterance(stt: SttProvider, expect: str | None = None) -> str:
    stream = await stt.open_stream(expect)
    for frame in FRAMES:
        await stream.feed(frame)
    return await stream.finish()


def test_stt_secondary_gets_the_whole_utterance_when_the_primary_fails_to_finish() -> None:
    async def body() -> None:
        primary, secondary = Stt("deepgram", "error"), Stt("sphinx")
        stt = ResilientStt([primary, secondary], final_timeout_s=1.0)
        assert await utterance(stt) == "sphinx heard 3200 bytes"
        # The retry on the primary also got every frame (replayed from the buffer).
        assert [len(s.audio) for s in primary.streams] == [3200, 3200]

    run(body())


def test_stt_every_provider_tried_is_told_what_the_caller_is_expected_to_say() -> None:
    async def body() -> None:
        primary, secondary = Stt("deepgram", "error"), Stt("sphinx")
        stt = ResilientStt([primary, secondary], final_timeout_s=1.0, retries=0)
        assert await utterance(stt, EXPECT_DIGITS) == "sphinx heard 3200 bytes"
        assert primary.expected == secondary.expected == [EXPECT_DIGITS]

    run(body())


def test_stt_dropped_socket_mid_utterance_loses_no_words() -> None:
    async def body() -> None:
        primary, secondary = Stt("deepgram", "drop"), Stt("sphinx")
        stt = ResilientStt([primary, secondary], final_timeout_s=1.0, retries=0)
        assert await utterance(stt) == "sphinx heard 3200 bytes"
        assert primary.streams[0].cancelled

    run(body())


def test_stt_stall_and_connect_failures_fall_through_in_time() -> None:
    async def body() -> None:
        stt = ResilientStt(
            [Stt("a", "stall"), Stt("b", "no-connect"), Stt("c")], final_timeout_s=0.2
        )
        t0 = time.monotonic()
        assert await utterance(stt) == "c heard 3200 bytes"
        assert time.monotonic() - t0 < 3.0  # the stall would take 30 s

    run(body())


class StreamBrain(Brain):
    streams = True

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.calls = 0

    async def greeting(self, ctx: CallContext) -> BrainReply:
        return BrainReply("hello")

    async def no_input(self, ctx: CallContext, attempt: int) -> BrainReply:
        return BrainReply("still there?")

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        self.calls += 1
        if self.mode == "stall":
            await asyncio.sleep(30)
        if self.mode == "error":
            raise ProviderError(self.name, "auth", "401", status=401)
        return BrainReply(f"{self.name}: {text}", ("hangup",), "x")


def test_brain_falls_back_to_the_secondary_and_keeps_its_actions() -> None:
    async def body() -> None:
        primary, secondary = StreamBrain("openai", "error"), StreamBrain("scripted")
        brain = ResilientBrain([primary, secondary], first_token_timeout_s=1.0)
        assert brain.streams
        reply = await brain.respond("hours?", CTX)
        assert reply == BrainReply("scripted: hours?", ("hangup",), "x")
        assert primary.calls == 2

    run(body())


def test_brain_first_token_timeout() -> None:
    async def body() -> None:
        brain = ResilientBrain(
            [StreamBrain("openai", "stall"), StreamBrain("scripted")],
            first_token_timeout_s=0.2,
            retries=0,
        )
        t0 = time.monotonic()
        assert (await brain.respond("x", CTX)).text == "scripted: x"
        assert time.monotonic() - t0 < 2.0  # the stall would take 30 s

    run(body())


def test_pending_replies_and_pushes_pass_through_to_the_primary() -> None:
    class Pending(StreamBrain):
        pushes = True
        streams = False

        def __init__(self) -> None:
            super().__init__("external")
            self.delivered: list[tuple[str, Any]] = []

        async def respond(self, text: str, ctx: CallContext) -> BrainReply:
            return BrainReply("", pending_s=9.0)

        def deliver(self, call_id: str, payload: Any) -> bool:
            self.delivered.append((call_id, payload))
            return True

        async def wait_pushed(
            self, call_id: str, timeout_s: float | None = None
        ) -> BrainReply | None:
            return BrainReply(f"pushed for {call_id}")

    async def body() -> None:
        primary = Pending()
        brain = ResilientBrain([primary, StreamBrain("scripted")], first_token_timeout_s=0.2)
        assert brain.pushes and not brain.streams
        # An empty pending reply is an answer (not a brain that failed to start talking).
        assert await brain.respond("balance?", CTX) == BrainReply("", pending_s=9.0)
        assert brain.deliver("c1", {"text": "ten"}) is True
        assert primary.delivered == [("c1", {"text": "ten"})]
        assert await brain.wait_pushed("c1") == BrainReply("pushed for c1")
        assert not ResilientBrain([StreamBrain("a")], first_token_timeout_s=1).pushes

    run(body())


# -- the final error names the vendor and what went wrong -------------------------------------


def test_tts_timeout_is_reported_as_the_vendors_timeout() -> None:
    async def body() -> None:
        tts = ResilientTts([Tts("elevenlabs", "stall")], first_audio_timeout_s=0.05)
        with pytest.raises(ProviderError) as info:
            await collect(tts.synthesize("hi"))
        assert "last: elevenlabs: timeout: no first audio within 0.05 s" in str(info.value)

    run(body())


def test_stt_that_cannot_connect_reports_the_vendors_error() -> None:
    async def body() -> None:
        stt = ResilientStt([Stt("deepgram", "no-connect")], final_timeout_s=0.5)
        with pytest.raises(ProviderError) as info:
            await utterance(stt)
        # Not "last: no attempt": the refused connection is what the log must show.
        assert "last: deepgram: timeout: connect" in str(info.value)

    run(body())


def test_stt_final_timeout_is_reported_as_the_vendors_timeout() -> None:
    async def body() -> None:
        stt = ResilientStt([Stt("deepgram", "stall")], final_timeout_s=0.05, retries=0)
        with pytest.raises(ProviderError) as info:
            await utterance(stt)
        assert "last: deepgram: timeout: no final transcript within 0.05 s" in str(info.value)

    run(body())


def test_brain_timeout_is_reported_as_the_vendors_timeout() -> None:
    async def body() -> None:
        brain = ResilientBrain([StreamBrain("openai", "stall")], first_token_timeout_s=0.05)
        with pytest.raises(ProviderError) as info:
            await brain.respond("x", CTX)
        assert "last: openai: timeout: no first words within 0.05 s" in str(info.value)

    run(body())


def test_a_provider_bug_is_reported_with_the_providers_name() -> None:
    class Broken(Tts):
        async def synthesize(self, text: str) -> AsyncIterator[bytes]:
            raise KeyError("voice")
            yield b""  # pragma: no cover - makes this an async generator

    async def body() -> None:
        tts = ResilientTts([Broken("elevenlabs")], first_audio_timeout_s=1.0, retries=0)
        with pytest.raises(ProviderError) as info:
            await collect(tts.synthesize("hi"))
        assert "last: elevenlabs: failed: KeyError: 'voice'" in str(info.value)

    run(body())


class AheadBrain(StreamBrain):
    """Generates ahead: its held streams record whether they were kept."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        super().__init__(name, mode)
        self.kept: list[str] = []
        self.held: list[str] = []

    def prepare_stream(self, text: str, ctx: CallContext) -> ReplyStream | None:
        self.held.append(text)
        owner = self

        class Held(ReplyStream):
            async def _gen(self) -> AsyncIterator[str]:
                reply = await owner.respond(text, ctx)
                self.reply = reply
                yield reply.text

            def __aiter__(self) -> AsyncIterator[str]:
                return self._gen()

            def keep(self) -> None:
                owner.kept.append(text)

        return Held()


def test_brain_generates_ahead_only_when_every_brain_of_the_chain_can() -> None:
    async def body() -> None:
        mixed = ResilientBrain(
            [AheadBrain("openai"), StreamBrain("scripted")], first_token_timeout_s=1
        )
        assert mixed.prepare_stream("hours?", CTX) is None
        primary, secondary = AheadBrain("openai", "error"), AheadBrain("backup")
        brain = ResilientBrain([primary, secondary], first_token_timeout_s=1.0, retries=0)
        stream = brain.prepare_stream("hours?", CTX)
        assert stream is not None
        assert [piece async for piece in stream] == ["backup: hours?"]
        assert (primary.held, secondary.held) == (["hours?"], ["hours?"])
        stream.keep()  # kept: passed to the brain that answered
        assert secondary.kept == ["hours?"] and primary.kept == []

    run(body())


# -- what the metrics are told (gateway.tally) -------------------------------------------------


def test_every_failed_attempt_and_every_failover_is_counted() -> None:
    async def body() -> None:
        TALLY.take()
        tts = ResilientTts([Tts("elevenlabs", "error"), Tts("piper")], first_audio_timeout_s=1.0)
        await collect(tts.synthesize("hi"))  # two errors on the primary, then the secondary
        stt = ResilientStt([Stt("deepgram", "drop"), Stt("pocketsphinx")], final_timeout_s=1.0)
        await utterance(stt)  # dropped mid-utterance, and again on the retry's replay
        brain = ResilientBrain(
            [StreamBrain("openai", "error"), StreamBrain("scripted")], first_token_timeout_s=1.0
        )
        await brain.respond("hours?", CTX)
        delta = TALLY.take()
        assert delta.vendor_errors == {
            ("elevenlabs", "http"): 2,
            ("deepgram", "disconnect"): 2,
            ("openai", "auth"): 2,
        }
        assert delta.failovers == {"tts": 1, "stt": 1, "brain": 1}

    run(body())


def test_an_error_after_audio_started_is_counted_once_and_a_summary_never() -> None:
    async def body() -> None:
        TALLY.take()
        tts = ResilientTts([Tts("elevenlabs", "cut"), Tts("piper")], first_audio_timeout_s=1.0)
        with pytest.raises(ProviderError) as cut:
            await collect(tts.synthesize("hi"))
        count_vendor_error(cut.value)  # the turn it failed sees it again
        both = ResilientTts([Tts("a", "error"), Tts("b", "error")], first_audio_timeout_s=1.0)
        with pytest.raises(ProviderError) as every:
            await collect(both.synthesize("hi"))
        count_vendor_error(every.value)  # "every TTS provider failed": counted one by one
        delta = TALLY.take()
        assert delta.vendor_errors == {
            ("elevenlabs", "disconnect"): 1,
            ("a", "http"): 2,
            ("b", "http"): 1,
        }
        assert delta.failovers == {"tts": 1}

    run(body())
