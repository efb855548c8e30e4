"""Replies generated ahead of the turn's end, and the end of turn judged by the caller's
words (issue 15), on the session's virtual clock (see tests/unit/test_session.py).

The caller says one word, pauses, maybe says another: the recogniser (`ScriptedStt`)
finalises each piece `delay_s` after the pause reached `early_final_ms`, with the texts
the test gives it, and the brain (`AheadBrain`) streams its reply after `first_token_s`,
either asked at the turn's end (`respond_stream`) or ahead (`prepare_stream`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from gateway.audio.pcm import FRAME_BYTES
from gateway.pipeline.session import ConversationOptions, TurnRecord
from gateway.pipeline.turns import end_of_turn_for
from gateway.providers.base import BrainReply, CallContext, ReplyStream
from gateway.providers.fake import FakeStt, FakeSttStream
from tests.helpers.session import Call, QuickBrain, loud, run, speech, start_call

pytestmark = pytest.mark.timeout(30)

Speak = Callable[[str], bytes]
FIRST_TOKEN_S = 0.15
STT_S = 0.2


class ScriptedStt(FakeStt):
    """Each finalised piece gets the next of `texts` ("" once they run out)."""

    def __init__(self, texts: Sequence[str], delay_s: float = STT_S) -> None:
        super().__init__(delay_s)
        self.texts = list(texts)

    async def open_stream(self, expect: str | None = None) -> FakeSttStream:
        return _ScriptedStream(self)


class _ScriptedStream(FakeSttStream):
    def __init__(self, owner: ScriptedStt) -> None:
        super().__init__(owner.final_delay_s)
        self.owner = owner

    async def finish(self) -> str:
        await asyncio.sleep(self.delay_s)
        return self.owner.texts.pop(0) if self.owner.texts else ""


class AheadBrain(QuickBrain):
    """A streaming brain that can generate ahead; records what it was asked, what it
    kept and what it dropped."""

    streams = True

    def __init__(self, reply: str = "Sure thing.", *, ahead: bool = True) -> None:
        super().__init__([reply])
        self.reply = reply
        self.ahead = ahead
        self.prepared: list[str] = []
        self.kept: list[str] = []
        self.dropped: list[str] = []
        self.first_token_at: list[float] = []

    def respond_stream(self, text: str, ctx: CallContext) -> ReplyStream:
        self.heard.append(text)
        return _AheadStream(self, text, held=False)

    def prepare_stream(self, text: str, ctx: CallContext) -> ReplyStream | None:
        if not self.ahead:
            return None
        self.prepared.append(text)
        return _AheadStream(self, text, held=True)


class _AheadStream(ReplyStream):
    def __init__(self, owner: AheadBrain, text: str, *, held: bool) -> None:
        self.owner = owner
        self.text = text
        self.held = held

    async def _gen(self) -> AsyncIterator[str]:
        await asyncio.sleep(FIRST_TOKEN_S)
        self.owner.first_token_at.append(asyncio.get_running_loop().time())
        for word in self.owner.reply.split():
            yield word + " "
        self.reply = BrainReply(self.owner.reply, intent="llm")

    def __aiter__(self) -> AsyncIterator[str]:
        return self._gen()

    def keep(self) -> None:
        self.held = False
        self.owner.kept.append(self.text)

    async def aclose(self) -> None:
        if self.held:
            self.owner.dropped.append(self.text)


def word(speak: Speak, text: str) -> list[bytes]:
    """Caller frames for `text`, from its first audible frame to its last."""
    frames = speech(speak, text)
    last = max(i for i, f in enumerate(frames) if loud(f))
    return frames[: last + 1]


def quiet(ms: int) -> list[bytes]:
    return [bytes(FRAME_BYTES)] * (ms // 20)


def options(**changes: object) -> ConversationOptions:
    base: dict[str, object] = {"end_of_turn_ms": 400, "early_final_ms": 100}
    base.update(changes)
    return ConversationOptions(**base)  # type: ignore[arg-type]


def one_turn(
    speak: Speak, opts: ConversationOptions, brain: AheadBrain, texts: Sequence[str]
) -> tuple[TurnRecord, list[TurnRecord]]:
    """The caller says "hello" once; the reply's record and every record."""
    result: list[TurnRecord] = []
    records: list[TurnRecord] = []

    async def scenario() -> None:
        call = start_call(brain, opts, stt=ScriptedStt(texts))
        try:
            await call.turn(0)
            call.clock.say(word(speak, "hello") + quiet(1500))
            result.append(await call.turn(1, timeout=5.0))
            records.extend(call.turns)
        finally:
            await call.stop()

    run(scenario)
    return result[0], records


def test_a_reply_generated_in_the_pause_is_heard_sooner(steady_speech_8k: Speak) -> None:
    ahead, _ = one_turn(steady_speech_8k, options(), AheadBrain(), ["Hello there."])
    asked = AheadBrain(ahead=False)
    late, _ = one_turn(steady_speech_8k, options(), asked, ["Hello there."])
    assert ahead.ahead is True and late.ahead is False
    assert ahead.user_text == late.user_text == "Hello there."
    assert ahead.agent_text == late.agent_text == "Sure thing."
    assert ahead.discarded == 0
    # Generated from the final at 100 + 200 ms of pause, not from the turn's end at 400:
    # the brain's 150 ms are mostly hidden (to the 20 ms frame).
    assert late.total_ms - ahead.total_ms >= 80
    assert ahead.brain_ms < late.brain_ms
    assert asked.prepared == []


def test_the_brain_remembers_only_the_kept_reply(steady_speech_8k: Speak) -> None:
    brain = AheadBrain()
    one_turn(steady_speech_8k, options(), brain, ["Hello there."])
    assert brain.prepared == ["Hello there."]
    assert brain.kept == ["Hello there."]
    assert brain.dropped == []
    assert brain.heard == []  # never asked again at the turn's end


def two_pieces(
    speak: Speak,
    brain: AheadBrain,
    opts: ConversationOptions,
    stt: ScriptedStt,
    pause_ms: int,
    meanwhile: Callable[[Call], Awaitable[None]] | None = None,
) -> TurnRecord:
    """The caller says "hello", pauses `pause_ms`, says "bye": the one reply's record
    (`meanwhile` runs while the turn is under way; no second reply may follow)."""
    records: list[TurnRecord] = []

    async def scenario() -> None:
        call = start_call(brain, opts, stt=stt)
        try:
            await call.turn(0)
            pcm = word(speak, "hello") + quiet(pause_ms) + word(speak, "bye") + quiet(1500)
            call.clock.say(pcm)
            if meanwhile is not None:
                await meanwhile(call)
            records.append(await call.turn(1, timeout=5.0))
            await asyncio.sleep(1.0)
            assert len(call.turns) == 2
        finally:
            await call.stop()

    run(scenario)
    return records[0]


def test_the_caller_going_on_drops_the_reply_and_counts_it(steady_speech_8k: Speak) -> None:
    """A pause of 320 ms mid-turn: the reply generated in it (from the final 100 + 100 ms
    into the pause) is dropped when the caller goes on, and the turn is answered once,
    with all its words."""
    brain = AheadBrain()

    async def dropped_at_once(call: Call) -> None:
        # Dropped as soon as the caller goes on, not when the turn ends.
        await call.until("the reply generated ahead to be dropped", lambda: bool(brain.dropped))
        assert len(call.turns) == 1
        assert brain.prepared == ["Hello."]  # before the next words were final

    stt = ScriptedStt(["Hello.", "Bye."], 0.1)
    rec = two_pieces(steady_speech_8k, brain, options(), stt, 320, dropped_at_once)
    assert brain.prepared[0] == "Hello."
    assert brain.dropped[0] == "Hello."
    assert rec.user_text == "Hello. Bye."
    assert rec.discarded == 1
    assert rec.agent_text == "Sure thing."


def test_no_generation_ahead_when_it_is_off(steady_speech_8k: Speak) -> None:
    brain = AheadBrain()
    rec, _ = one_turn(steady_speech_8k, options(generate_ahead=False), brain, ["Hello there."])
    assert brain.prepared == [] and brain.heard == ["Hello there."]
    assert rec.ahead is False


def test_a_question_ends_the_turn_sooner(steady_speech_8k: Speak) -> None:
    opts = options(end_of_turn_complete_ms=250, generate_ahead=False)
    rec, _ = one_turn(steady_speech_8k, opts, AheadBrain(), ["Are you open?"])
    # The final came at 100 + 200 ms into the pause (which may begin in the word's fading
    # tail, before its last voiced frame): the turn ended there, past the 250 ms it needs.
    assert 250.0 <= rec.eot_wait_ms <= 300.0
    plain, _ = one_turn(steady_speech_8k, opts, AheadBrain(), ["Hello there."])
    assert plain.eot_wait_ms == 400.0


def test_a_caller_pausing_after_and_is_not_answered_early(steady_speech_8k: Speak) -> None:
    """600 ms of pause would end the turn (400 ms), but not after "and": one turn, with
    both pieces, answered once."""
    brain = AheadBrain()
    stt = ScriptedStt(["I want the hours and", "the address."])
    opts = options(end_of_turn_incomplete_ms=800)
    rec = two_pieces(steady_speech_8k, brain, opts, stt, 600)
    assert rec.user_text == "I want the hours and the address."
    assert rec.eot_wait_ms == 400.0
    # Not generated ahead after "and" (the caller goes on), only once the words were whole.
    assert brain.prepared == brain.kept == ["I want the hours and the address."]
    assert brain.dropped == [] and brain.heard == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What are your opening hours?", 250),
        ("That's great!", 250),
        ("I'd like to book a table and", 800),
        ("I'd like to book a table, um", 800),
        ("I'd like to book a table,", 800),
        ("Let me think...", 800),
        ("I want to go to the.", 800),
        ("I'd like to book a table.", 400),
        ("Yes", 400),
        ("", 400),
        ("Who are you?", 250),
    ],
)
def test_end_of_turn_for_the_words_so_far(text: str, expected: int) -> None:
    assert end_of_turn_for(text, base_ms=400, complete_ms=250, incomplete_ms=800) == expected
