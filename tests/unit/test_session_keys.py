"""Keypad input (DTMF) in CallSession, without SIP: keys are pushed into the call's
`KeyQueue` (`gateway.pipeline.transport`) as the pj thread does; the clock, fakes and
helpers are test_session's."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.pipeline.session import ConversationOptions
from gateway.providers.base import EXPECT_DIGITS, BrainReply, CallContext, DigitCollect, KeyInput
from gateway.providers.fake import FakeStt, FakeSttStream
from tests.helpers.session import Call, QuickBrain, Speak, run, speech, start_call

pytestmark = pytest.mark.timeout(30)


class KeyBrain(QuickBrain):
    """Records key input; the greeting (and key replies) may ask for an entry."""

    def __init__(
        self,
        greeting: str = "Hi.",
        collect: DigitCollect | None = None,
        send_dtmf: str = "",
        replies: Sequence[str] = ("Okay.",),
    ) -> None:
        super().__init__(replies)
        self.greeting_text = greeting
        self.collect = collect
        self.send_dtmf = send_dtmf
        self.keys: list[KeyInput] = []

    async def greeting(self, ctx: CallContext) -> BrainReply:
        return BrainReply(self.greeting_text, intent="greeting", collect=self.collect)

    async def respond_keys(self, keys: KeyInput, ctx: CallContext) -> BrainReply:
        self.keys.append(keys)
        return BrainReply("Got it.", intent="keys", send_dtmf=self.send_dtmf)


def press(call: Call, keys: str, method: str = "rfc4733") -> None:
    for key in keys:
        call.transport.handle.keys.push(key, method)


async def greeted(call: Call) -> None:
    await call.turn(0)
    await call.until("agent quiet", lambda: not call.session.agent_speaking())


def test_a_key_without_an_entry_is_one_turn_and_a_text_brain_hears_it() -> None:
    async def scenario() -> None:
        brain = QuickBrain()  # the default respond_keys: told in words
        call = start_call(brain, ConversationOptions())
        try:
            await greeted(call)
            press(call, "7", "info")
            rec = await call.turn(1)
            assert brain.heard == ["The caller pressed 7 on the keypad."]
            assert rec.kind == "keys" and rec.user_text == "[keys] 7"
            assert rec.agent_text == "Okay." and not rec.barge_in
            assert call.session.keys_pressed == 1
        finally:
            await call.hang_up()

    run(scenario)


def test_a_key_cuts_the_agent_off_like_speech() -> None:
    async def scenario() -> None:
        brain = KeyBrain(greeting="This greeting is long enough to be interrupted by a key.")
        call = start_call(brain, ConversationOptions())
        try:
            await call.until("agent speaking", lambda: len(call.clock.agent_loud_ticks()) >= 10)
            press(call, "1")
            pressed_at = call.clock.ticks
            greeting = await call.turn(0)
            assert greeting.kind == "greeting" and greeting.interrupted
            reply = await call.turn(1)
            assert reply.kind == "keys" and reply.barge_in
            assert brain.keys == [KeyInput("1", "key")]
            assert call.session.barge_ins == 1
            await call.until("agent quiet", lambda: not call.session.agent_speaking())
            # After the key: not one more frame of the greeting (~150 were left), then
            # "Got it." (7 characters, 21 frames).
            after = call.clock.agent_loud_ticks(pressed_at)
            assert len(after) == 21, len(after)
        finally:
            await call.hang_up()

    run(scenario)


def test_an_entry_ends_at_the_terminator() -> None:
    async def scenario() -> None:
        brain = KeyBrain(collect=DigitCollect(min_digits=3, max_digits=8, terminator="#"))
        call = start_call(brain, ConversationOptions())
        try:
            await greeted(call)
            press(call, "1234")
            await asyncio.sleep(0.3)
            assert brain.keys == []  # still collecting
            assert call.turns[1:] == []
            press(call, "#")
            rec = await call.turn(1)
            assert brain.keys == [KeyInput("1234", "terminator")]
            assert rec.user_text == "[keys] 1234 (terminator)"
            # The entry is over: the next key is a turn of its own.
            press(call, "5")
            await call.turn(2)
            assert brain.keys[1] == KeyInput("5", "key")
        finally:
            await call.hang_up()

    run(scenario)


def test_an_entry_ends_at_max_digits() -> None:
    async def scenario() -> None:
        brain = KeyBrain(collect=DigitCollect(min_digits=4, max_digits=4, terminator=""))
        call = start_call(brain, ConversationOptions())
        try:
            await greeted(call)
            press(call, "98#7")
            await call.turn(1)
            # With no terminator, '#' is a digit like any other.
            assert brain.keys == [KeyInput("98#7", "max")]
        finally:
            await call.hang_up()

    run(scenario)


def test_the_terminator_right_after_a_full_entry_is_swallowed() -> None:
    async def scenario() -> None:
        brain = KeyBrain(collect=DigitCollect(min_digits=3, max_digits=3, timeout_s=1))
        call = start_call(brain, ConversationOptions())
        try:
            await greeted(call)
            press(call, "123#")
            await call.turn(1)
            await call.until("agent quiet", lambda: not call.session.agent_speaking())
            await asyncio.sleep(0.2)
            press(call, "#")  # not swallowed: only the one right after the entry
            await call.turn(2)
            assert brain.keys == [KeyInput("123", "max"), KeyInput("#", "key")]
        finally:
            await call.hang_up()

    run(scenario)


def test_an_entry_ends_after_the_inter_digit_timeout() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        brain = KeyBrain(collect=DigitCollect(min_digits=1, max_digits=6, timeout_s=0.6))
        call = start_call(brain, ConversationOptions(no_input_timeout_s=30))
        try:
            await greeted(call)
            press(call, "4")
            await asyncio.sleep(0.4)
            press(call, "2")  # restarts the timeout
            t_last = loop.time()
            await asyncio.sleep(0.4)
            assert brain.keys == []
            await call.until("the entry", lambda: bool(brain.keys), timeout=3)
            # The timeout to the instant, give or take the 5 ms `until` looks at the brain.
            waited = loop.time() - t_last
            assert 0.6 - 1e-6 <= waited <= 0.605 + 1e-6, waited
            assert brain.keys == [KeyInput("42", "timeout")]
        finally:
            await call.hang_up()

    run(scenario)


def test_speech_before_any_key_wins_over_the_entry(speech_8k: Speak) -> None:
    async def scenario() -> None:
        brain = KeyBrain(collect=DigitCollect(min_digits=6, max_digits=6))
        call = start_call(brain, ConversationOptions())
        try:
            await greeted(call)
            call.clock.say(speech(speech_8k, "I don't know my order number."))
            rec = await call.turn(1)
            assert rec.kind == "reply" and rec.user_text.startswith("utterance of")
            assert brain.keys == []
            # The entry was dropped: a key now is delivered on its own.
            press(call, "3")
            await call.turn(2)
            assert brain.keys == [KeyInput("3", "key")]
        finally:
            await call.hang_up()

    run(scenario)


class SaidStt(FakeStt):
    """Hears `text` in every utterance, and records what each stream was told to expect."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.expected: list[str | None] = []

    async def open_stream(self, expect: str | None = None) -> FakeSttStream:
        self.expected.append(expect)
        stream = FakeSttStream(0.0)
        heard = self.text

        async def finish() -> str:
            return heard

        stream.finish = finish  # type: ignore[method-assign]
        return stream


def test_an_entry_may_be_said_and_the_recogniser_listens_for_digits(
    steady_speech_8k: Speak,
) -> None:
    async def scenario() -> None:
        brain = KeyBrain(collect=DigitCollect(min_digits=6, max_digits=6))
        stt = SaidStt("It's one two three four five 6.")
        # One stream per turn (no pieces finalised in pauses): SaidStt hears the text once.
        call = start_call(brain, ConversationOptions(early_final_ms=0), stt=stt)
        try:
            await greeted(call)
            call.clock.say(speech(steady_speech_8k, "It's one two three four five six."))
            rec = await call.turn(1)
            assert brain.keys == [KeyInput("123456", "speech")]
            assert brain.heard == []  # answered as the entry, not as words
            assert rec.agent_text == "Got it." and rec.intent == "keys"
            assert rec.user_text == "It's one two three four five 6. [keys said] 123456"
            assert stt.expected and set(stt.expected) == {EXPECT_DIGITS}
            # The entry is over: the next utterance is anything, and digits are words again.
            await call.until("agent quiet", lambda: not call.session.agent_speaking())
            opened = len(stt.expected)
            call.clock.say(speech(steady_speech_8k, "Four five six."))
            await call.turn(2)
            assert set(stt.expected[opened:]) == {None}
            assert brain.heard == ["It's one two three four five 6."]  # words, not an entry
        finally:
            await call.hang_up()

    run(scenario)


def test_an_entry_for_keys_only_is_not_said(steady_speech_8k: Speak) -> None:
    async def scenario() -> None:
        brain = KeyBrain(collect=DigitCollect(min_digits=3, max_digits=3, spoken=False))
        stt = SaidStt("one two three")
        call = start_call(brain, ConversationOptions(early_final_ms=0), stt=stt)
        try:
            await greeted(call)
            call.clock.say(speech(steady_speech_8k, "One two three."))
            await call.turn(1)
            assert brain.keys == [] and brain.heard == ["one two three"]
            assert set(stt.expected) == {None}
        finally:
            await call.hang_up()

    run(scenario)


def test_once_keys_came_first_speech_is_ignored_until_the_entry_ends(speech_8k: Speak) -> None:
    async def scenario() -> None:
        brain = KeyBrain(collect=DigitCollect(min_digits=2, max_digits=6, timeout_s=5))
        call = start_call(brain, ConversationOptions())
        try:
            await greeted(call)
            press(call, "1")
            await asyncio.sleep(0.05)
            call.clock.say(speech(speech_8k, "Hold on, let me find it."))
            await call.until("caller done", call.clock.idle)
            await asyncio.sleep(0.6)  # long past the end of that utterance
            press(call, "2#")
            rec = await call.turn(1)
            assert rec.kind == "keys"
            assert brain.keys == [KeyInput("12", "terminator")]
            await asyncio.sleep(0.3)
            assert brain.heard == []  # the speech never became a turn
            assert len(call.turns) == 2
        finally:
            await call.hang_up()

    run(scenario)


def test_a_key_drops_the_speech_in_progress(speech_8k: Speak) -> None:
    async def scenario() -> None:
        brain = KeyBrain()
        call = start_call(brain, ConversationOptions())
        try:
            await greeted(call)
            call.clock.say(speech(speech_8k, "I would like to talk about my cake order please."))
            await call.until("caller speech", lambda: call.session.detector.in_speech)
            press(call, "0")
            await call.until("caller done", call.clock.idle)
            await call.turn(1)
            await asyncio.sleep(0.6)
            assert brain.keys == [KeyInput("0", "key")]
            assert brain.heard == []
            assert [r.kind for r in call.turns] == ["greeting", "keys"]
        finally:
            await call.hang_up()

    run(scenario)


def test_a_reply_can_send_dtmf_after_it_is_spoken() -> None:
    async def scenario() -> None:
        sent: list[tuple[str, bool]] = []
        brain = KeyBrain(send_dtmf="12#")
        call = start_call(brain, ConversationOptions())
        call.transport.on_dtmf = lambda keys: sent.append((keys, call.session.agent_speaking()))
        try:
            await greeted(call)
            assert sent == []
            press(call, "9")
            rec = await call.turn(1)
            await call.until("dtmf sent", lambda: bool(sent))
            assert sent == [("12#", False)]  # after the reply's audio played out
            assert rec.actions == ["dtmf:12#"]
        finally:
            await call.hang_up()

    run(scenario)


def test_a_reprompt_keeps_the_entry_asked_for() -> None:
    async def scenario() -> None:
        brain = KeyBrain(collect=DigitCollect(min_digits=2, max_digits=2))
        call = start_call(brain, ConversationOptions(no_input_timeout_s=0.4))
        try:
            await call.until("re-prompt", lambda: any(r.kind == "reprompt" for r in call.turns))
            await call.until("agent quiet", lambda: not call.session.agent_speaking())
            press(call, "55")
            await call.until("keys turn", lambda: any(r.kind == "keys" for r in call.turns))
            assert brain.keys == [KeyInput("55", "max")]
        finally:
            await call.hang_up()

    run(scenario)


def test_key_input_descriptions() -> None:
    assert KeyInput("1").describe() == "The caller pressed 1 on the keypad."
    assert (
        KeyInput("123", "terminator").describe()
        == "The caller entered 1 2 3 on the keypad and then the terminator key."
    )
    assert KeyInput("12", "max").describe() == "The caller entered 1 2 on the keypad."
    assert "timed out" in KeyInput("", "timeout").describe()
    assert (
        KeyInput("45", "speech").describe() == "The caller said 4 5 for the keypad entry asked for."
    )
    with pytest.raises(ValueError, match="min_digits"):
        DigitCollect(min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="terminator"):
        DigitCollect(terminator="x")
