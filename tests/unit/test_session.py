"""Tests for gateway.pipeline.session.CallSession, without SIP.

The test plays pjmedia's clock thread itself: a `MediaClock` task pushes one caller frame
into `handle.inbound` and pops one agent frame from `handle.playout` per tick, and records
both sides. Providers are the deterministic fakes: `FakeStt` transcribes "utterance of N
milliseconds", `FakeTts` speaks a 440 Hz tone of 60 ms (3 frames) per character. Caller
speech is Piper speech at 8 kHz (the `speech_8k` fixture).

The sessions run on a virtual clock (tests/helpers/vclock.py): the media clock ticks every
20 ms of loop time, as pjmedia's does, and loop time moves only when nothing is left to run,
so whatever the session does in reaction to a frame is done before the next tick. Timings
are therefore exact however loaded the machine is, and none costs wall time. Latencies are
asserted in ticks (each is 20 ms of audio) and in loop time, which here are the same.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
import pytest

from gateway.audio.pcm import FRAME_BYTES
from gateway.pipeline.session import ConversationOptions, Prompts, TurnRecord
from gateway.providers.base import BrainReply, CallContext, ReplyStream
from gateway.providers.fake import FakeBrain, FakeStt, FakeSttStream, FakeTts
from tests.helpers.session import (
    TONE_FRAMES_PER_CHAR,
    Call,
    QuickBrain,
    Speak,
    expected_turn,
    fake_stt_text,
    loud,
    run,
    speech,
    start_call,
)

pytestmark = pytest.mark.timeout(30)

UTTERANCE = re.compile(r"^utterance of \d+ milliseconds$")


# -- 1. greeting ------------------------------------------------------------------------------


def test_greeting_is_played_first_and_reported() -> None:
    async def scenario() -> None:
        call = start_call(FakeBrain(), ConversationOptions())
        try:
            greeting = await call.turn(0, timeout=5.0)
            clock = call.clock
            loud_ticks = clock.agent_loud_ticks()
            # On the wire on the tick after the start (the greeting is ready at once), and
            # so reported: 20 ms from the answer to the first frame out.
            assert loud_ticks[0] == 1
            assert clock.times[1] - clock.times[0] == pytest.approx(0.02)
            assert greeting.total_ms == 20.0
            # "Hello, this is a test agent." = 28 chars = 84 frames of tone, back to back.
            assert len(loud_ticks) == 28 * TONE_FRAMES_PER_CHAR
            assert loud_ticks == list(range(loud_ticks[0], loud_ticks[0] + 84))
            assert greeting.kind == "greeting"
            assert greeting.turn == 1
            assert greeting.agent_text == "Hello, this is a test agent."
            assert greeting.intent == "greeting"
            assert greeting.call_id == "test-call@127.0.0.1"
            assert greeting.user_text == ""
            assert greeting.interrupted is False
            assert greeting.first_audio_at > 0.0
            assert greeting.first_audio_at >= greeting.end_of_speech_at
            assert call.session.records == [greeting]
            ctx = call.session.ctx
            assert set(ctx.headers) == {"X-PH-Calluuid", "X-PH-From", "X-PH-To", "X-PH-Campaign"}
            assert ctx.call_uuid == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
            assert (ctx.from_number, ctx.to_number) == ("+14155550123", "14155550100")
            assert ctx.plivo == {"campaign": "spring"}
            assert call.hangups == []
            assert call.session.barge_ins == 0
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


# -- 2. a caller turn and its reply -----------------------------------------------------------


def test_reply_after_caller_speech_and_silence(speech_8k: Speak) -> None:
    # Whole-utterance recognition here; early finals have their own test below.
    options = ConversationOptions(end_of_turn_ms=300, early_final_ms=0)
    utterance = speech(speech_8k, "what are your opening hours")

    async def scenario() -> None:
        brain = QuickBrain(replies=["Okay."])
        call = start_call(brain, options)
        clock = call.clock
        try:
            await call.turn(0)  # greeting done: the agent is silent now
            first = clock.say(utterance)
            reply = await call.turn(1, timeout=5.0)
            await call.until("caller script played", clock.idle)

            start, end = expected_turn(clock.caller, options)
            expected_text = fake_stt_text(start, end)
            assert reply.kind == "reply"
            assert reply.turn == 2
            assert reply.eot_wait_ms == 300.0
            assert reply.user_text == expected_text
            assert UTTERANCE.match(reply.user_text)
            assert reply.speech_ms == end.speech_ms
            assert 1000 <= reply.speech_ms <= 1600  # Piper says it in about 1.5 s
            assert reply.agent_text == "Okay."
            assert reply.interrupted is False
            assert brain.heard == [expected_text]
            # The reply is on the wire only after the end of the turn was detected...
            reply_ticks = [t for t in clock.agent_loud_ticks() if t > first]
            # (on the very next tick: the reply is ready at once).
            assert reply_ticks[0] == end.frame_index + 1
            # ...and is exactly "Okay." = 5 chars of tone, back to back.
            assert reply_ticks == list(range(reply_ticks[0], reply_ticks[0] + 15))
            assert reply.first_audio_at > reply.end_of_speech_at > 0.0
            # From the end of the speech: the 300 ms waited for the end of the turn, then
            # one tick.
            assert reply.total_ms == 320.0
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


# -- 3. barge-in ------------------------------------------------------------------------------


def test_barge_in_stops_the_agent_within_five_ticks(steady_speech_8k: Speak) -> None:
    # The same samples every run: the tick count depends on the interruption's first frames
    # (Piper's random variation once made its first loud frame one webrtcvad calls unvoiced).
    options = ConversationOptions(end_of_turn_ms=300, barge_in_min_speech_ms=60)
    first_words = speech(steady_speech_8k, "hello there")
    interruption = speech(steady_speech_8k, "wait a moment")
    long_reply = "This is a long answer that goes on and on for a while."  # 3.3 s

    async def scenario() -> None:
        brain = QuickBrain(replies=[long_reply, "Okay."])
        call = start_call(brain, options)
        clock = call.clock
        try:
            await call.turn(0)
            asked = clock.say(first_words)
            await call.until(
                "the long reply to play for 300 ms",
                lambda: len(clock.agent_loud_ticks(asked)) >= 15,
            )
            assert len(call.session.call.playout) > 100  # most of it still to come
            barge = clock.say(interruption)
            await call.until(
                "silence after the barge-in",
                lambda: any(a is None for a in clock.agent[barge:]),
                timeout=2.0,
            )
            assert loud(clock.agent[barge - 1])  # the agent was talking when it started
            first_silent = next(i for i in range(barge, clock.ticks) if clock.agent[i] is None)
            # Its first 3 frames (barge_in_min_speech_ms: 60 ms of voice) make the barge-in;
            # the tick after them is silent.
            assert first_silent - barge == 3, f"agent stopped {first_silent - barge} ticks late"
            assert call.session.barge_ins == 1

            interrupted = await call.turn(1)
            assert interrupted.kind == "reply"
            assert interrupted.interrupted is True
            assert interrupted.agent_text == long_reply
            assert interrupted.user_text == brain.heard[0]

            answer = await call.turn(2, timeout=5.0)
            assert answer.kind == "reply"
            assert answer.interrupted is False
            assert answer.agent_text == "Okay."
            assert UTTERANCE.match(answer.user_text)
            assert brain.heard == [interrupted.user_text, answer.user_text]
            assert answer.eot_wait_ms == 300.0
            # The interruption got its own answer: tone again after the silence.
            assert len(clock.agent_loud_ticks(first_silent)) == 15
            assert call.session.barge_ins == 1
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


# -- 4. no input ------------------------------------------------------------------------------


def test_no_input_reprompts_then_says_goodbye_and_hangs_up() -> None:
    options = ConversationOptions(no_input_timeout_s=1.0, hangup_delay_s=0.05)

    async def scenario() -> None:
        call = start_call(QuickBrain(), options)
        clock = call.clock
        try:
            await call.until("hang-up", lambda: bool(call.hangups), timeout=6.0)
            assert call.hangups == ["agent hangup"]
            kinds = [(t.kind, t.agent_text) for t in call.turns]
            assert kinds == [("greeting", "Hi."), ("reprompt", "Hello?"), ("goodbye", "Bye.")]
            assert call.turns[2].actions == ["hangup"]
            assert not any(t.interrupted for t in call.turns)
            # Three bursts of tone: "Hi." (9 frames), "Hello?" (18), "Bye." (12).
            ticks = clock.agent_loud_ticks()
            bursts = _bursts(ticks)
            assert [len(b) for b in bursts] == [9, 18, 12]
            # Each prompt came after at least no_input_timeout_s of silence, and at most the
            # watchdog's period (0.2 s) and a tick more.
            for before, after in itertools.pairwise(bursts):
                silence = clock.times[after[0]] - clock.times[before[-1]]
                assert 1.0 - 1e-6 <= silence <= 1.0 + 0.2 + 0.02 + 1e-6, silence
            # The hang-up comes after the goodbye was on the wire.
            assert call.session.agent_speaking() is False
            await asyncio.sleep(0.3)
            assert call.hangups == ["agent hangup"]  # asked once only
            assert len(call.turns) == 3
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


def _bursts(ticks: Sequence[int]) -> list[list[int]]:
    """Split increasing tick numbers into runs of consecutive ticks."""
    bursts: list[list[int]] = []
    for t in ticks:
        if bursts and t == bursts[-1][-1] + 1:
            bursts[-1].append(t)
        else:
            bursts.append([t])
    return bursts


# -- 5. a failing brain -----------------------------------------------------------------------


class _FailingScenario:
    """Caller says two things; the brain raises on the first."""

    def __init__(self, speak: Speak) -> None:
        self.options = ConversationOptions(end_of_turn_ms=300)
        self.first = speech(speak, "hello there")
        self.second = speech(speak, "wait a moment")
        self.brain = QuickBrain(replies=["Okay."], fail=frozenset({1}))

    async def play(self, call: Call) -> TurnRecord:
        clock = call.clock
        await call.turn(0)
        asked = clock.say(self.first)
        await call.until("the brain to fail", lambda: len(self.brain.heard) == 1)
        await call.until("the failed turn to settle", lambda: clock.ticks > asked + 60)
        assert not call.task.done()
        assert clock.agent_loud_ticks(asked) == []  # nothing was said for the failed turn
        assert len(call.turns) == 1
        assert call.session.agent_speaking() is False
        clock.say(self.second)
        return await call.turn(1, timeout=5.0)


def test_brain_failure_does_not_end_the_session(speech_8k: Speak) -> None:
    scenario = _FailingScenario(speech_8k)

    async def body() -> None:
        call = start_call(scenario.brain, scenario.options)
        try:
            reply = await scenario.play(call)
            assert not call.task.done()
            assert reply.kind == "reply"
            assert reply.agent_text == "Okay."
            assert reply.interrupted is False
            assert len(scenario.brain.heard) == 2
            assert reply.user_text == scenario.brain.heard[1]
            assert reply.user_text.endswith(" milliseconds")
            assert len(call.clock.agent_loud_ticks()) == 9 + 15  # "Hi." then "Okay."
            assert [t.kind for t in call.turns] == ["greeting", "reply"]
            await call.hang_up()
        finally:
            await call.stop()

    run(body)


def test_brain_failure_is_not_carried_into_the_next_turn(speech_8k: Speak) -> None:
    scenario = _FailingScenario(speech_8k)

    async def body() -> None:
        call = start_call(scenario.brain, scenario.options)
        try:
            reply = await scenario.play(call)
            assert UTTERANCE.match(reply.user_text), reply.user_text
            assert UTTERANCE.match(scenario.brain.heard[1]), scenario.brain.heard[1]
            await call.hang_up()
        finally:
            await call.stop()

    run(body)


def early_final_texts(caller: Sequence[bytes], options: ConversationOptions) -> list[str]:
    """What FakeStt pieces hear when recognition is finalised at each early_final_ms pause
    (the pause counting from the last loud frame: `TurnDetector.quiet_ms`)."""
    det = options.turn_detector()
    pieces: list[int] = []
    fed: int | None = None
    for frame in caller:
        event = det.push(frame)
        if event is not None and event.kind == "start":
            fed = len(event.audio)
        elif event is not None:
            break
        elif det.in_speech:
            if fed is not None:
                fed += FRAME_BYTES
                if det.quiet_ms >= options.early_final_ms:
                    pieces.append(fed)
                    fed = None
            elif det.quiet_ms == 0:
                fed = FRAME_BYTES
    if fed is not None:
        pieces.append(fed)
    return [f"utterance of {n * 1000 // (8000 * 2)} milliseconds" for n in pieces]


def test_transcript_is_finalised_early_in_the_pause(speech_8k: Callable[[str], bytes]) -> None:
    options = ConversationOptions(end_of_turn_ms=400, early_final_ms=200)
    utterance = speech(speech_8k, "what are your opening hours")

    async def scenario() -> None:
        brain = QuickBrain(replies=["Okay."])
        call = start_call(brain, options)
        clock = call.clock
        try:
            await call.turn(0)
            clock.say(utterance)
            reply = await call.turn(1, timeout=5.0)
            await call.until("caller script played", clock.idle)
            expected = " ".join(early_final_texts(clock.caller, options))
            assert reply.user_text == expected
            # Less audio than the whole turn: the last 200 ms of the pause were not needed.
            start, end = expected_turn(clock.caller, options)
            assert expected != fake_stt_text(start, end)
            assert reply.eot_wait_ms == 400.0
        finally:
            await call.stop()

    run(scenario)


class DeafStt(FakeStt):
    """Recognises nothing: every utterance comes back as an empty transcript."""

    async def open_stream(self, expect: str | None = None) -> FakeSttStream:
        return DeafStream(self.final_delay_s)


class DeafStream(FakeSttStream):
    async def finish(self) -> str:
        return ""


class LongGreetingBrain(QuickBrain):
    async def greeting(self, ctx: CallContext) -> BrainReply:
        return BrainReply("This is a long greeting that goes on and on for a while.")


def test_unrecognised_sound_is_ignored_unless_it_cut_the_agent_off(
    speech_8k: Speak,
) -> None:
    options = ConversationOptions(
        end_of_turn_ms=300, barge_in_min_speech_ms=60, min_unrecognised_ms=2000
    )
    sound = speech(speech_8k, "hmm")

    async def scenario() -> None:
        brain = LongGreetingBrain(replies=["Sorry?"])
        call = start_call(brain, options, stt=DeafStt())
        clock = call.clock
        try:
            # The sound cuts the greeting off: silence now would be dead air, so it is
            # answered (with what the brain says to an empty transcript).
            await call.until("the greeting to play", lambda: len(clock.agent_loud_ticks()) >= 10)
            clock.say(sound)
            answer = await call.turn(1, timeout=5.0)
            assert call.turns[0].interrupted is True
            assert call.session.barge_ins == 1
            assert brain.heard == [""]
            assert answer.barge_in is True
            assert answer.agent_text == "Sorry?"
            await call.until("the answer to play out", lambda: not call.session.agent_speaking())
            # While the agent is quiet, the same unrecognised sound gets no answer.
            clock.say(sound)
            await call.until("the sound to be played", clock.idle)
            await asyncio.sleep(1.0)
            assert brain.heard == [""]
            assert len(call.turns) == 2
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


# -- 6. streamed replies (an LLM brain) -------------------------------------------------------


class _Stream(ReplyStream):
    def __init__(self, owner: StreamingBrain, deltas: Sequence[str], reply: BrainReply) -> None:
        self.owner = owner
        self.deltas = deltas
        self.final = reply

    async def _gen(self) -> AsyncIterator[str]:
        for i, delta in enumerate(self.deltas):
            if i:
                await asyncio.sleep(self.owner.delta_s)
            self.owner.sent_at.append(asyncio.get_running_loop().time())
            yield delta
        self.reply = self.final

    def __aiter__(self) -> AsyncIterator[str]:
        return self._gen()

    async def aclose(self) -> None:
        self.owner.closed += 1


class StreamingBrain(QuickBrain):
    """Streams its replies word by word, `delta_s` apart, like an LLM."""

    streams = True

    def __init__(self, replies: Sequence[str], delta_s: float, actions: tuple[str, ...] = ()):
        super().__init__(replies)
        self.delta_s = delta_s
        self.actions = actions
        self.sent_at: list[float] = []
        self.closed = 0

    def respond_stream(self, text: str, ctx: CallContext) -> ReplyStream:
        self.heard.append(text)
        reply = self.replies[min(len(self.heard), len(self.replies)) - 1]
        deltas = [w + " " for w in reply.split()]
        return _Stream(self, deltas, BrainReply(reply, self.actions, "llm"))


def test_streamed_reply_is_spoken_before_the_brain_has_finished(speech_8k: Speak) -> None:
    options = ConversationOptions(end_of_turn_ms=300, early_final_ms=0)
    reply_text = "Sure. We open at seven. We close at six. Goodbye now."

    async def scenario() -> None:
        brain = StreamingBrain([reply_text], delta_s=0.15, actions=("hangup",))
        call = start_call(brain, options)
        clock = call.clock
        try:
            await call.turn(0)
            asked = clock.say(speech(speech_8k, "when are you open"))
            rec = await call.turn(1, timeout=10.0)
            loud_after = clock.agent_loud_ticks(asked)
            # "Sure." went on the wire while the brain was still generating the rest.
            assert clock.times[loud_after[0]] < brain.sent_at[-1] - 0.5
            assert rec.agent_text == reply_text and rec.intent == "llm"
            assert rec.actions == ["hangup"]
            assert rec.brain_ms == 0.0  # the first word came at once
            assert rec.total_ms > 0 and rec.first_audio_at > rec.end_of_speech_at
            # Every piece was spoken: the whole text's worth of tone, in order.
            assert len(loud_after) == TONE_FRAMES_PER_CHAR * sum(
                len(p) for p in ["Sure.", "We open at seven.", "We close at six.", "Goodbye now."]
            )
            await call.until("the agent hangs up", lambda: call.hangups == ["agent hangup"])
            assert brain.closed == 0
        finally:
            await call.stop()

    run(scenario)


def test_barge_in_during_a_streamed_reply_stops_the_brain(speech_8k: Speak) -> None:
    options = ConversationOptions(end_of_turn_ms=300, barge_in_min_speech_ms=60)
    long_reply = " ".join(["This goes on and on."] * 12)

    async def scenario() -> None:
        brain = StreamingBrain([long_reply, "Okay."], delta_s=0.1)
        call = start_call(brain, options)
        clock = call.clock
        try:
            await call.turn(0)
            asked = clock.say(speech(speech_8k, "hello there"))
            await call.until(
                "the streamed reply to play for 300 ms",
                lambda: len(clock.agent_loud_ticks(asked)) >= 15,
            )
            generated = len(brain.sent_at)
            assert generated < len(long_reply.split())  # still generating
            clock.say(speech(speech_8k, "wait a moment"))
            interrupted = await call.turn(1, timeout=5.0)
            assert interrupted.interrupted is True
            assert brain.closed == 1  # the LLM stream was closed, not left running
            words_after = len(brain.sent_at)
            answer = await call.turn(2, timeout=5.0)
            assert answer.agent_text == "Okay." and not answer.interrupted
            # Nothing generated any more: the one word since (over a second at 0.1 s a word)
            # is the answer's.
            assert len(brain.sent_at) == words_after + 1
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


# -- 7. vendor failures -----------------------------------------------------------------------


def test_failed_turns_get_the_apology_then_a_polite_goodbye(speech_8k: Speak) -> None:
    options = ConversationOptions(end_of_turn_ms=300, max_failures=3)
    tone = square_wave(600)
    prompts = Prompts("Sorry, say that again?", tone, "Sorry, goodbye.", tone[: 320 * 10])
    utterance = speech(speech_8k, "hello there")

    async def body() -> None:
        brain = QuickBrain(replies=["Okay."], fail=frozenset({1, 2, 3}))
        call = start_call(brain, options, prompts=prompts)
        clock = call.clock
        try:
            await call.turn(0)
            for n in (1, 2, 3):
                asked = clock.say(utterance)
                rec = await call.turn(n, timeout=5.0)
                loud = clock.agent_loud_ticks(asked)
                assert loud, f"no audio after failure {n}"
                end = expected_turn(clock.caller[asked:], options)[1]
                # On the tick after the end of the caller's turn was detected (no dead air).
                assert loud[0] == asked + end.frame_index + 1
                assert rec.kind == ("failure-goodbye" if n == 3 else "apology")
            await call.until("the agent hangs up", lambda: call.hangups == ["vendor failures"])
            assert [t.agent_text for t in call.turns[1:]] == [
                "Sorry, say that again?",
                "Sorry, say that again?",
                "Sorry, goodbye.",
            ]
        finally:
            await call.stop()

    run(body)


def square_wave(ms: int) -> bytes:
    """Loud audio (a 444 Hz square wave) of `ms` milliseconds."""
    n = np.arange(ms * 8)
    return (np.where((n // 9) % 2 == 0, 8000, -8000)).astype("<i2").tobytes()


class StallingBrain(QuickBrain):
    """Never answers (a vendor that accepted the request and went quiet)."""

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        self.heard.append(text)
        await asyncio.sleep(60)
        raise AssertionError("unreachable")


def test_a_silent_vendor_is_covered_by_the_apology_within_the_deadline(
    speech_8k: Speak,
) -> None:
    options = ConversationOptions(end_of_turn_ms=300, reply_deadline_s=0.6)
    prompts = Prompts("Sorry?", square_wave(300), "Bye.", square_wave(200))

    async def body() -> None:
        brain = StallingBrain()
        call = start_call(brain, options, prompts=prompts)
        clock = call.clock
        try:
            await call.turn(0)
            asked = clock.say(speech(speech_8k, "hello there"))
            rec = await call.turn(1, timeout=5.0)
            assert rec.kind == "apology"
            end = expected_turn(clock.caller[asked:], options)[1]
            first_loud = clock.agent_loud_ticks(asked)[0]
            speech_end = clock.times[asked + end.frame_index] - end.trailing_silence_ms / 1000
            silence_ms = (clock.times[first_loud] - speech_end) * 1000
            # The 300 ms end of turn, the 600 ms deadline, then the next tick.
            assert 300 + 600 - 1e-3 <= silence_ms <= 300 + 600 + 20 + 1e-3, silence_ms
            await call.hang_up()
        finally:
            await call.stop()

    run(body)


class StallingTts(FakeTts):
    """Sends the first 200 ms of a reply, then goes quiet (a vendor stalling mid-reply)."""

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        yield square_wave(200)
        if text.startswith("Here is"):  # the reply (not the greeting)
            await asyncio.sleep(60)


def test_a_vendor_stalling_mid_reply_is_covered_by_the_apology_within_the_deadline(
    speech_8k: Speak,
) -> None:
    # The README's promise: with a cloud provider the caller never waits longer than the
    # deadline in silence, also once the reply has begun.
    options = ConversationOptions(end_of_turn_ms=300, reply_deadline_s=0.6)
    prompts = Prompts("Sorry?", square_wave(300), "Bye.", square_wave(200))

    async def body() -> None:
        call = start_call(
            QuickBrain(["Here is a long answer."]), options, prompts=prompts, tts=StallingTts()
        )
        clock = call.clock
        try:
            await call.turn(0)
            asked = clock.say(speech(speech_8k, "hello there"))
            cut = await call.turn(1, timeout=5.0)
            assert cut.kind == "reply" and cut.interrupted  # its start was heard
            rec = await call.turn(2, timeout=5.0)
            assert rec.kind == "apology", call.turns
            loud = clock.agent_loud_ticks(asked)
            # 200 ms of the reply, then silence, then the apology's 300 ms.
            assert len(loud) == 10 + 15, loud
            gap = [b - a for a, b in itertools.pairwise(loud) if b - a > 1]
            assert len(gap) == 1, loud
            silence_ms = (gap[0] - 1) * 20
            assert 600 - 20 <= silence_ms <= 600 + 20, silence_ms
            await call.hang_up()
        finally:
            await call.stop()

    run(body)


class AudioBrain(QuickBrain):
    """Answers with recorded audio (like the external bot's audio_url replies)."""

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        from gateway.providers.webhook_brain import AudioReply

        self.heard.append(text)
        return AudioReply("(recording)", intent="bot", audio=square_wave(400))


def test_an_audio_reply_is_played_as_is(speech_8k: Speak) -> None:
    options = ConversationOptions(end_of_turn_ms=300)

    async def body() -> None:
        call = start_call(AudioBrain(), options)
        clock = call.clock
        try:
            await call.turn(0)
            asked = clock.say(speech(speech_8k, "hello there"))
            rec = await call.turn(1, timeout=5.0)
            assert rec.agent_text == "(recording)" and rec.intent == "bot"
            assert len(clock.agent_loud_ticks(asked)) == 20  # 400 ms of it, not TTS of the text
            await call.hang_up()
        finally:
            await call.stop()

    run(body)


# -- 8. pushed replies (an external bot answering later) -----------------------------------------


class PushingBrain(QuickBrain):
    """Answers every turn with "pending" (optionally with a holding line); the test pushes the
    real answers with `push` (a reply, or an exception for one that could not be prepared)."""

    pushes = True

    def __init__(self, pending_s: float, holding: str = "") -> None:
        super().__init__()
        self.pending_s = pending_s
        self.holding = holding
        self.inbox: asyncio.Queue[BrainReply | Exception | None] = asyncio.Queue()

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        self.heard.append(text)
        return BrainReply(self.holding, pending_s=self.pending_s)

    def push(self, item: BrainReply | Exception) -> None:
        self.inbox.put_nowait(item)

    async def wait_pushed(self, call_id: str, timeout_s: float | None = None) -> BrainReply | None:
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    def forget(self, call_id: str) -> None:
        self.inbox.put_nowait(None)


def test_a_pushed_reply_is_played_and_the_silence_before_it_is_not_no_input(
    speech_8k: Speak,
) -> None:
    options = ConversationOptions(end_of_turn_ms=300, no_input_timeout_s=0.4)
    prompts = Prompts("Sorry?", square_wave(300), "Bye.", square_wave(200))

    async def body() -> None:
        brain = PushingBrain(pending_s=5.0)
        call = start_call(brain, options, prompts=prompts)
        clock = call.clock
        try:
            await call.turn(0)
            asked = clock.say(speech(speech_8k, "what is my balance"))
            pending = await call.turn(1, timeout=5.0)
            assert pending.kind == "reply" and pending.agent_text == ""
            assert clock.agent_loud_ticks(asked) == []
            await asyncio.sleep(1.0)  # over twice the no-input timeout: no re-prompt
            assert len(call.turns) == 2
            pushed_at = clock.ticks
            brain.push(BrainReply("Ten.", ("hangup",), intent="balance"))
            pushed = await call.turn(2, timeout=5.0)
            assert (pushed.kind, pushed.agent_text, pushed.intent) == ("pushed", "Ten.", "balance")
            loud = clock.agent_loud_ticks(pushed_at)
            assert len(loud) == 4 * TONE_FRAMES_PER_CHAR
            # Played at once: on the next tick.
            assert loud[0] == pushed_at
            await call.until("the pushed hangup", lambda: call.hangups == ["agent hangup"])
        finally:
            await call.stop()

    run(body)


def test_a_push_that_never_comes_gets_the_apology_when_due(speech_8k: Speak) -> None:
    options = ConversationOptions(end_of_turn_ms=300, no_input_timeout_s=30)
    prompts = Prompts("Sorry?", square_wave(300), "Bye.", square_wave(200))

    async def body() -> None:
        brain = PushingBrain(pending_s=0.8, holding="One moment.")
        call = start_call(brain, options, prompts=prompts)
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "what is my balance"))
            holding = await call.turn(1, timeout=5.0)
            assert holding.agent_text == "One moment."
            loop = asyncio.get_running_loop()
            started = loop.time()  # the holding line played out and promised the push
            apology = await call.turn(2, timeout=5.0)
            assert apology.kind == "apology"
            # Due at 0.8 s, found by the watchdog (every 0.2 s), then 300 ms of apology
            # (recorded once it played out, on the 15th tick).
            waited = loop.time() - started
            assert 0.8 + 0.3 - 1e-6 <= waited <= 0.8 + 0.2 + 0.3 + 0.02 + 1e-6, waited
            # A push that cannot be prepared (its audio did not download) is apologised for.
            brain.push(RuntimeError("audio_url: HTTP 404"))
            assert (await call.turn(3, timeout=5.0)).kind == "apology"
            await call.hang_up()
        finally:
            await call.stop()

    run(body)


def test_a_reply_pushed_while_the_agent_speaks_waits_its_turn(speech_8k: Speak) -> None:
    options = ConversationOptions(end_of_turn_ms=300)

    async def body() -> None:
        brain = PushingBrain(pending_s=5.0, holding="Please hold while I look that up.")
        call = start_call(brain, options)
        clock = call.clock
        try:
            await call.turn(0)
            clock.say(speech(speech_8k, "what is my balance"))
            await call.until("the holding line starts", lambda: call.session.agent_speaking())
            brain.push(BrainReply("Ten."))
            holding = await call.turn(1, timeout=10.0)
            pushed = await call.turn(2, timeout=5.0)
            assert holding.agent_text.startswith("Please hold") and not holding.interrupted
            assert pushed.agent_text == "Ten." and pushed.first_audio_at > holding.first_audio_at
            # Both whole: the holding line was not cut, the pushed reply followed it.
            assert len(clock.agent_loud_ticks(0)) >= (3 + 32 + 4) * TONE_FRAMES_PER_CHAR
            await call.hang_up()
        finally:
            await call.stop()

    run(body)
