"""A caller on a noisy line (background babble that webrtcvad hears as speech, so the local
VAD never sees the end of the turn): Deepgram's UtteranceEnd ends the turn.

The session runs with the MediaClock of tests/helpers/session.py and the real Deepgram
provider, behind the failover wrapper as `sipagent serve` builds it, talking to the fake in
listening mode (words above -30 dBFS, sound above -45 dBFS). Unlike the other session tests
these run on asyncio's own loop and the wall clock (the clock ticking at 4x real time): the
provider talks to the fake over a real WebSocket, served by another thread, and a virtual
clock would jump past the fake's answers while the loop waits for them.  Caller speech is
Piper at about -20 dBFS; the babble is four Piper voices at -40 dBFS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from gateway.audio.pcm import rms_dbfs, split_frames
from gateway.pipeline.session import CallSession, ConversationOptions, TurnRecord
from gateway.providers.base import SttProvider
from gateway.providers.deepgram_stt import DeepgramStt
from gateway.providers.failover import ResilientStt
from gateway.providers.fake import FakeStt, FakeTts
from gateway.sip.calls import SipCall
from tests.fakes.deepgram import FakeDeepgram
from tests.helpers.deepgram import KEY
from tests.helpers.session import (
    WALL_TICK_S,
    Call,
    MediaClock,
    QuickBrain,
    Speak,
    make_handle,
    speech,
)

pytestmark = pytest.mark.timeout(60)

BABBLE = (
    "the weather today is cloudy with a chance of rain later in the afternoon and evening",
    "our team won the game last night by three points after a long and difficult match",
    "please remember to bring the documents to the meeting on thursday morning at ten",
    "traffic on the main road is heavy because of the construction near the bridge",
)


def babble(speak: Speak, ms: int, dbfs: float = -40.0, voices: int = 4) -> np.ndarray:
    """`voices` looped Piper voices talking at once, `ms` long, at `dbfs` RMS."""
    n = ms * 8
    out = np.zeros(n)
    for k in range(voices):
        voice = np.frombuffer(speak(BABBLE[k % len(BABBLE)]), dtype="<i2").astype(float)
        offset = k * 3000 + (k // len(BABBLE)) * 7777  # the same text again, out of step
        # Long enough for the offset too (12 voices start 48,554 samples in).
        looped = np.tile(voice, (offset + n) // len(voice) + 2)
        out += looped[offset : offset + n]
    scaled: np.ndarray = out / np.sqrt(np.mean(out**2)) * 32768 * 10 ** (dbfs / 20)
    return scaled


def noisy_caller(speak: Speak, text: str, tail_ms: int) -> tuple[list[bytes], int]:
    """`text` over babble, the babble going on `tail_ms` after it; and the index of the
    frame after the speech's last loud (word) frame.

    The babble is checked with the session's own turn detector and thickened (more voices,
    a little louder, never near the -30 dBFS the fake takes for words) until the local VAD
    hears no end in it. The tests pass Piper's steady speech (`steady_speech_8k`): with its
    run-to-run variation, no babble of the list passed in one of four full runs.
    """
    words = b"".join(speech(speak, text))
    voice = np.frombuffer(words, dtype="<i2").astype(float)
    total_ms = len(voice) // 8 + tail_ms
    loud = [i for i, f in enumerate(split_frames(words)) if rms_dbfs(f) > -30.0]
    for voices, dbfs in ((4, -40.0), (6, -39.0), (8, -38.0), (8, -37.0), (12, -37.0)):
        mix = babble(speak, total_ms, dbfs, voices)
        mix[: len(voice)] += voice
        frames = split_frames(np.clip(mix, -32768, 32767).astype("<i2").tobytes())
        if _vad_hears_no_end(frames):
            return frames, loud[-1] + 1
    pytest.fail("could not make babble that webrtcvad hears as speech throughout")


def _vad_hears_no_end(frames: list[bytes]) -> bool:
    det = ConversationOptions().turn_detector()
    kinds = [e.kind for e in (det.push(f) for f in frames) if e is not None]
    return kinds == ["start"]


@pytest.fixture
def fake() -> Iterator[FakeDeepgram]:
    with FakeDeepgram(KEY) as server:
        server.word_dbfs = -30.0
        server.vad_dbfs = -45.0
        yield server


def start(stt: SttProvider, brain: QuickBrain, options: ConversationOptions) -> Call:
    handle = make_handle()
    turns: list[TurnRecord] = []
    hangups: list[str] = []
    call = SipCall(handle, hangup=hangups.append)
    session = CallSession(
        call, stt=stt, tts=FakeTts(), brain=brain, options=options, on_turn=turns.append
    )
    clock = MediaClock(handle, WALL_TICK_S)
    task = asyncio.ensure_future(session.run())
    clock_task = asyncio.ensure_future(clock.run())
    return Call(session, call, clock, task, clock_task, turns, hangups)


def test_utterance_end_answers_a_caller_on_a_noisy_line(
    fake: FakeDeepgram, steady_speech_8k: Speak
) -> None:
    # No early final: Deepgram's end is watched on the stream in progress, and a 200 ms
    # pause webrtcvad heard in the babble (with other speech than the steady one) would
    # finalise the words' stream early and leave only the babble's to watch (a known gap:
    # that turn then ends when the noise stops, as before).
    options = ConversationOptions(early_final_ms=0)
    caller, speech_end = noisy_caller(steady_speech_8k, "what are your opening hours", tail_ms=5000)

    async def scenario() -> None:
        deepgram = DeepgramStt(KEY, fake.url, warm_sockets=1, utterance_end_ms=1000)
        stt = ResilientStt([deepgram], final_timeout_s=2.0)
        brain = QuickBrain(replies=["Okay."])
        call = start(stt, brain, options)
        clock = call.clock
        try:
            await call.turn(0)
            first = clock.say(caller)
            reply = await call.turn(1, timeout=10.0)
            # Answered during the babble: ~1 s (utterance_end_ms) after the last word.
            reply_tick = next(t for t in clock.agent_loud_ticks() if t > first)
            after_speech_ms = (reply_tick - (first + speech_end)) * 20
            assert 1000 <= after_speech_ms <= 1600, after_speech_ms
            assert reply_tick < first + len(caller) - 100  # > 2 s before the babble stopped
            assert reply.user_text.endswith(" bytes")
            assert 1000 <= reply.eot_wait_ms <= 1300
            assert brain.heard == [reply.user_text]
            assert fake.connections[0].utterance_ends >= 1
            # The rest of the babble, and its end, is not a turn: Deepgram heard no words.
            await call.until("the caller script to play", clock.idle)
            await asyncio.sleep(0.6)
            assert brain.heard == [reply.user_text]
            assert len(call.turns) == 2
            assert await call.stop(), "the session did not end within 1 s of the hang-up"
        finally:
            await call.stop()
            await stt.close()

    asyncio.run(scenario())


def test_without_the_recognisers_end_the_noisy_turn_waits_for_the_noise(
    steady_speech_8k: Speak,
) -> None:
    # The control: a recogniser that does not report ends (FakeStt) answers only once the
    # babble stops, so the test above measures the UtteranceEnd path.
    options = ConversationOptions()
    caller, _ = noisy_caller(steady_speech_8k, "what are your opening hours", tail_ms=3000)

    async def scenario() -> None:
        brain = QuickBrain(replies=["Okay."])
        call = start(FakeStt(), brain, options)
        clock = call.clock
        try:
            await call.turn(0)
            first = clock.say(caller)
            await call.turn(1, timeout=10.0)
            reply_tick = next(t for t in clock.agent_loud_ticks() if t > first)
            assert reply_tick > first + len(caller)
        finally:
            await call.stop()

    asyncio.run(scenario())
