"""Tests for gateway.pipeline.turns.TurnDetector, driven by real (Piper) speech at 8 kHz."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from gateway.audio.pcm import FRAME_BYTES, SILENCE_FRAME, rms_dbfs, split_frames
from gateway.pipeline.turns import TurnDetector, TurnEvent

Speak = Callable[[str], bytes]

PHRASE_1 = "What are your opening hours?"
PHRASE_2 = "Can I talk to a person please?"
LONG_PHRASE = (
    "I would like to order a large chocolate birthday cake for my daughter, "
    "and could you also tell me whether you deliver to the other side of town on weekends?"
)


def silence(ms: int) -> list[bytes]:
    return [SILENCE_FRAME] * (ms // 20)


def noise(ms: int, dbfs: float, seed: int = 7) -> list[bytes]:
    rng = np.random.default_rng(seed)
    amplitude = 32768 * 10 ** (dbfs / 20)
    samples = np.clip(rng.normal(0, amplitude, ms * 8), -32768, 32767).astype("<i2")
    return split_frames(samples.tobytes())


def click() -> bytes:
    """One loud 20 ms tone burst."""
    t = np.arange(160) / 8000
    return (np.sin(2 * np.pi * 1000 * t) * 20000).astype("<i2").tobytes()


def run(det: TurnDetector, frames: Sequence[bytes]) -> list[TurnEvent]:
    events = []
    for frame in frames:
        event = det.push(frame)
        if event is not None:
            events.append(event)
    return events


def voiced_flags(frames: Sequence[bytes], **kwargs: int) -> list[bool]:
    """The per-frame voiced decisions a detector with these settings makes (same VAD state)."""
    ref = TurnDetector(**kwargs)
    return [ref.is_voiced(f) for f in frames]


def first_loud(frames: Sequence[bytes], start: int = 0) -> int:
    """Index of the first frame at/after `start` clearly above silence (speech onset)."""
    return next(i for i in range(start, len(frames)) if rms_dbfs(frames[i]) > -50)


@pytest.fixture(scope="module")
def two_turns(speech_8k: Speak) -> tuple[list[bytes], int, int]:
    """400 ms silence + phrase 1 + 600 ms silence + phrase 2 + 1 s silence.

    Returns the frames and the indexes where each phrase's audio begins.
    """
    first = split_frames(speech_8k(PHRASE_1))
    second = split_frames(speech_8k(PHRASE_2))
    frames = silence(400) + first + silence(600) + second + silence(1000)
    start_1 = 20
    start_2 = 20 + len(first) + 30
    return frames, start_1, start_2


def test_piper_speech_is_voiced(speech_8k: Speak) -> None:
    frames = split_frames(speech_8k(PHRASE_1))
    flags = voiced_flags(frames)
    assert len(frames) > 40
    assert sum(flags) / len(flags) > 0.8


def test_two_turns_start_and_end(two_turns: tuple[list[bytes], int, int]) -> None:
    frames, audio_1, audio_2 = two_turns
    det = TurnDetector(end_of_turn_ms=400)
    flags = voiced_flags(frames, end_of_turn_ms=400)
    events = run(det, frames)
    assert [e.kind for e in events] == ["start", "end", "start", "end"]
    start_1, end_1, start_2, end_2 = events

    for start, audio_begin in ((start_1, audio_1), (start_2, audio_2)):
        onset = first_loud(frames, audio_begin)
        assert onset <= start.frame_index <= onset + 10  # within 200 ms of speech onset

    for start, end, next_begin in ((start_1, end_1, audio_2), (start_2, end_2, len(frames))):
        assert end.reason == "silence"
        assert end.audio == b""
        assert end.trailing_silence_ms == 400
        last_voiced = max(i for i in range(start.frame_index, next_begin) if flags[i])
        assert end.frame_index == last_voiced + 20
        utterance_start = start.frame_index - 6 + 1  # 120 ms start window
        assert end.speech_ms == (last_voiced - utterance_start + 1) * 20
        assert end.speech_ms > 1000
    assert end_1.frame_index < audio_2  # the 600 ms pause ends the first turn


def test_end_of_turn_rounds_up_to_whole_frames(
    two_turns: tuple[list[bytes], int, int],
) -> None:
    frames, _, _ = two_turns
    events = run(TurnDetector(end_of_turn_ms=450), frames)
    ends = [e for e in events if e.kind == "end"]
    assert len(ends) == 2
    # 450 ms is 22.5 frames of 20 ms: the detector waits 23 frames.
    assert all(e.trailing_silence_ms == 460 for e in ends)


def test_in_speech_and_frames_between_return_none(two_turns: tuple[list[bytes], int, int]) -> None:
    frames, _, _ = two_turns
    det = TurnDetector()
    states = []
    for frame in frames:
        event = det.push(frame)
        states.append((event.kind if event else None, det.in_speech))
    kinds = [k for k, _ in states]
    s, e = kinds.index("start"), kinds.index("end")
    assert states[s][1] is True
    assert all(k is None and speaking for k, speaking in states[s + 1 : e])
    assert states[e][1] is False
    assert not states[s - 1][1]


def test_start_audio_is_preroll_plus_window(two_turns: tuple[list[bytes], int, int]) -> None:
    frames, _, audio_2 = two_turns
    det = TurnDetector(preroll_ms=200, min_speech_ms=120)
    events = run(det, frames)
    starts = [e for e in events if e.kind == "start"]
    for start in starts:
        i = start.frame_index
        # 10 pre-roll frames + 6 window frames, ending with the triggering frame.
        assert start.audio == b"".join(frames[i - 15 : i + 1])
        assert len(start.audio) == 16 * FRAME_BYTES
    # The second pre-roll only holds frames pushed after the first END.
    assert starts[1].frame_index - 15 >= audio_2 - 30


def test_preroll_is_empty_after_end(speech_8k: Speak) -> None:
    speech = split_frames(speech_8k(PHRASE_1))
    # Only 100 ms of silence between turns: the second pre-roll must not reach back
    # into the first turn, because END empties it.
    det = TurnDetector(end_of_turn_ms=100, preroll_ms=400)
    events = run(det, speech + silence(100) + speech)
    starts = [e for e in events if e.kind == "start"]
    ends = [e for e in events if e.kind == "end"]
    assert len(starts) == 2
    first_end = ends[0].frame_index
    second = starts[1]
    frames = speech + silence(100) + speech
    assert second.audio == b"".join(frames[first_end + 1 : second.frame_index + 1])


def test_preroll_shorter_at_stream_start(speech_8k: Speak) -> None:
    frames = split_frames(speech_8k(PHRASE_1))
    det = TurnDetector()
    start = run(det, frames)[0]
    assert start.audio == b"".join(frames[: start.frame_index + 1])


def test_silence_and_low_noise_never_start() -> None:
    det = TurnDetector()
    assert run(det, silence(3000)) == []
    assert run(det, noise(3000, -60.0)) == []
    assert not det.in_speech
    # Noise below the energy floor is never voiced, whatever webrtcvad thinks.
    assert run(TurnDetector(aggressiveness=0), noise(3000, -55.0)) == []


def test_single_click_does_not_start() -> None:
    frames = [*silence(500), click(), *silence(500)]
    assert run(TurnDetector(), frames) == []
    noisy = noise(1000, -60.0)
    noisy[25] = click()
    assert run(TurnDetector(), noisy) == []
    assert run(TurnDetector(min_speech_ms=60), frames) == []


def test_click_over_audible_noise_needs_noise_margin() -> None:
    # webrtcvad's hangover keeps saying "speech" for ~4 frames after a loud burst; over
    # noise louder than the energy floor those frames count as voiced. The opt-in noise
    # margin rejects them.
    noisy = noise(4000, -42.0)
    noisy[150] = click()
    det = TurnDetector(noise_margin_db=6.0)
    assert run(det, noisy) == []
    assert det.noise_dbfs == pytest.approx(-42.0, abs=2.0)


def test_noise_margin_still_detects_speech_over_noise(speech_8k: Speak) -> None:
    speech = np.frombuffer(speech_8k(PHRASE_1), dtype="<i2").astype(np.int32)
    background = np.frombuffer(b"".join(noise(4000, -45.0)), dtype="<i2").astype(np.int32)
    mixed = background.copy()
    offset = 2 * 8000
    mixed[offset : offset + speech.size] += speech
    frames = split_frames(np.clip(mixed, -32768, 32767).astype("<i2").tobytes())
    events = run(TurnDetector(noise_margin_db=6.0), frames)
    assert [e.kind for e in events] == ["start", "end"]
    onset = offset // 160
    assert onset <= events[0].frame_index <= onset + 12


def test_short_word_with_high_min_speech(speech_8k: Speak) -> None:
    word = split_frames(speech_8k("Yes."))
    frames = silence(300) + word + silence(1000)
    assert [e.kind for e in run(TurnDetector(), frames)] == ["start", "end"]
    assert run(TurnDetector(min_speech_ms=1000), frames) == []


def test_min_speech_change_takes_effect(speech_8k: Speak) -> None:
    speech = split_frames(speech_8k(PHRASE_1))
    frames = silence(400) + speech + silence(1000)
    onset = first_loud(frames)

    normal = run(TurnDetector(), frames)[0]

    det = TurnDetector()
    for frame in frames[:20]:
        assert det.push(frame) is None
    det.min_speech_ms = 400  # e.g. raised while the agent speaks (barge-in)
    raised = run(det, frames[20:])[0]
    assert raised.frame_index >= onset + 18
    assert raised.frame_index > normal.frame_index + 10
    # The START window is 20 frames (400 ms) plus the 10-frame pre-roll.
    i = raised.frame_index
    assert raised.audio == b"".join(frames[i - 29 : i + 1])

    # Lowering it again applies to the next turn. webrtcvad keeps adapting across reset(),
    # so this detector may decide a frame apart from a fresh one: within 2 frames of it,
    # and far earlier than with the raised threshold.
    det.reset()
    det.min_speech_ms = 120
    again = run(det, frames)[0]
    relative = again.frame_index - len(frames)
    assert abs(relative - normal.frame_index) <= 2
    assert relative < raised.frame_index - 10


def test_max_length_end(speech_8k: Speak) -> None:
    speech = split_frames(speech_8k(LONG_PHRASE))
    assert len(speech) * 20 > 3000
    frames = silence(200) + speech
    det = TurnDetector(max_utterance_ms=2000, end_of_turn_ms=700)
    events = []
    for frame in frames:
        event = det.push(frame)
        if event is not None:
            events.append(event)
            if event.kind == "end":
                assert not det.in_speech
                break
    start, end = events
    assert end.kind == "end" and end.reason == "max_length"
    utterance_start = start.frame_index - 5  # first frame of the 6-frame start window
    assert end.frame_index == utterance_start + 100 - 1  # 2000 ms = 100 frames
    assert 0 < end.speech_ms <= 2000
    assert end.trailing_silence_ms < 700
    # Speech continues, so a new turn starts right away with an empty pre-roll.
    rest = run(det, frames[end.frame_index + 1 :])
    assert rest[0].kind == "start"
    assert rest[0].audio == b"".join(frames[end.frame_index + 1 : rest[0].frame_index + 1])


def test_reset_returns_to_idle(speech_8k: Speak) -> None:
    speech = split_frames(speech_8k(PHRASE_1))
    det = TurnDetector()
    events = run(det, speech[:20])
    assert det.in_speech and events[0].kind == "start"
    det.reset()
    assert not det.in_speech
    assert det.frames_pushed == 20
    # Continuing mid-speech starts a new turn whose pre-roll begins after the reset.
    start = run(det, speech[20:40])[0]
    assert start.kind == "start"
    assert start.frame_index >= 20 + 5
    assert start.audio == b"".join(speech[20 : start.frame_index + 1][-16:])


def test_frame_size_is_checked() -> None:
    det = TurnDetector()
    with pytest.raises(ValueError, match="320 bytes"):
        det.push(bytes(100))
    with pytest.raises(ValueError):
        TurnDetector(frame_ms=25)


def test_event_is_frozen() -> None:
    event = TurnEvent(kind="start", audio=b"", frame_index=3)
    with pytest.raises(AttributeError):
        event.frame_index = 4  # type: ignore[misc]
    assert math.isclose(event.speech_ms, 0)


def test_the_default_end_of_turn_is_the_settings_default() -> None:
    from sip_config import VadSettings

    assert TurnDetector().end_of_turn_ms == VadSettings().end_of_turn_ms


def test_while_the_agent_speaks_a_start_takes_the_barge_in_window(speech_8k: Speak) -> None:
    # Only sustained speech interrupts the agent: the start comes later than it would
    # with the agent quiet, after barge_in_min_speech_ms of voiced audio.
    frames = split_frames(speech_8k("hello there how are you today"))

    def start_index(agent_speaking: bool) -> int:
        det = TurnDetector(min_speech_ms=60, barge_in_min_speech_ms=400)
        for frame in frames:
            event = det.push(frame, agent_speaking=agent_speaking)
            if event is not None:
                assert event.kind == "start"
                return event.frame_index
        raise AssertionError("no start")

    assert start_index(agent_speaking=True) >= start_index(agent_speaking=False) + 10


def test_a_words_fading_tail_is_part_of_the_pause_not_of_the_end(
    steady_speech_8k: Speak,
) -> None:
    """Piper's "croissants" ends in a hiss that webrtcvad calls speech, 30+ dB below the
    words: with `pause_floor_db` the pause (`quiet_ms`, when the transcript is finalised
    early) counts from the last frame within 30 dB of the turn's loudest, while the end
    of the turn still counts from the last voiced frame."""
    frames = split_frames(steady_speech_8k("Do you sell croissants?")) + silence(1000)
    plain = TurnDetector(end_of_turn_ms=400, pause_floor_db=0)
    floored = TurnDetector(end_of_turn_ms=400, pause_floor_db=30)
    quiet: list[tuple[int, int]] = []
    events: list[tuple[TurnEvent | None, TurnEvent | None]] = []
    for frame in frames:
        events.append((plain.push(frame), floored.push(frame)))
        quiet.append((plain.quiet_ms, floored.quiet_ms))
    ends = [(i, a, b) for i, (a, b) in enumerate(events) if a is not None and a.kind == "end"]
    assert len(ends) == 1
    at, end_plain, end_floored = ends[0]
    assert end_floored is not None and end_floored.frame_index == end_plain.frame_index
    levels = [rms_dbfs(f) for f in frames]
    flags = voiced_flags(frames)
    peak = max(lv for lv, v in zip(levels, flags, strict=True) if v)
    last_near_peak = max(i for i, v in enumerate(flags[:at]) if v and levels[i] > peak - 30)
    pause_plain = next(i for i, (a, _) in enumerate(quiet) if a >= 100)
    pause_floored = next(i for i, (_, b) in enumerate(quiet) if b >= 100)
    assert pause_floored == last_near_peak + 5  # 100 ms after the last loud frame
    assert pause_plain - pause_floored >= 5  # the hiss after it is at least 100 ms
    assert plain.quiet_ms == plain.trailing_silence_ms


def test_a_soft_consonant_before_a_comma_pause_keeps_the_turn(steady_speech_8k: Speak) -> None:
    """Piper's "ask," ends in frames 30 dB below the words, then pauses ~320 ms: the turn
    goes on (an end of turn counted from the last loud frame ended it mid-sentence)."""
    frames = split_frames(steady_speech_8k("I have nothing else to ask, goodbye.")) + silence(800)
    events = run(TurnDetector(), frames)
    assert [e.kind for e in events] == ["start", "end"]
