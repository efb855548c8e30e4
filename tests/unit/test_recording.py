"""Tests for gateway.records.recording.CallRecorder: a stereo WAV from the call's two rings."""

from __future__ import annotations

import asyncio
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from gateway.audio.pcm import FRAME_BYTES, SILENCE_FRAME
from gateway.audio.ring import InboundRing, PlayoutRing
from gateway.records.recording import CallRecorder, recording_path

pytestmark = pytest.mark.timeout(30)


def frame(value: int) -> bytes:
    return np.full(FRAME_BYTES // 2, value, dtype="<i2").tobytes()


@dataclass
class Media:
    """A call's id and audio rings (`CallMedia`), as a transport gives them."""

    call_id: str
    inbound: InboundRing = field(default_factory=InboundRing)
    playout: PlayoutRing = field(default_factory=PlayoutRing)


def handle(sip_call_id: str = "abc@127.0.0.1") -> Media:
    return Media(sip_call_id)


def channels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return samples[0::2], samples[1::2]


def test_caller_left_agent_right_aligned_tick_by_tick(tmp_path: Path) -> None:
    call = handle()
    recorder = CallRecorder(call, tmp_path / "rec" / "call.wav")
    recorder.start()
    # Ten clock ticks, one frame each way per tick: the caller sends 1, 2, ... 10; the
    # agent's reply (three frames) is queued at tick 3.
    for tick in range(10):
        if tick == 3:
            for i in range(3):
                call.playout.put(frame(100 + i))
        call.playout.pop()
        call.inbound.push(frame(tick + 1))
        if tick == 4:
            recorder.flush()  # mid-call flushes keep the channels paired
    assert recorder.close() == tmp_path / "rec" / "call.wav"
    left, right = channels(recorder.path)
    per = FRAME_BYTES // 2
    assert len(left) == len(right) == 10 * per
    assert [int(left[t * per]) for t in range(10)] == list(range(1, 11))
    assert [int(right[t * per]) for t in range(10)] == [0, 0, 0, 100, 101, 102, 0, 0, 0, 0]
    # The taps are gone: frames after close() are not recorded anywhere.
    assert call.inbound.tap is None and call.playout.tap is None
    call.inbound.push(frame(5))
    assert recorder.frames == 10


def test_the_file_is_valid_while_the_call_goes_on(tmp_path: Path) -> None:
    async def body() -> None:
        call = handle()
        recorder = CallRecorder(call, tmp_path / "live.wav")
        recorder.start()
        task = asyncio.ensure_future(recorder.run())
        for _ in range(40):
            call.inbound.push(frame(7))
            call.playout.pop()
        await asyncio.sleep(0.7)  # one periodic flush
        left, right = channels(recorder.path)  # readable before close: header up to date
        assert len(left) == 40 * FRAME_BYTES // 2 and set(right.tolist()) == {0}
        task.cancel()
        recorder.close()

    asyncio.run(body())


def test_uneven_channels_are_padded_with_silence_at_the_end(tmp_path: Path) -> None:
    call = handle()
    recorder = CallRecorder(call, tmp_path / "x.wav")
    recorder.start()
    for _ in range(3):
        call.inbound.push(frame(9))
    call.playout.pop()
    recorder.close()
    left, right = channels(recorder.path)
    assert len(left) == 3 * FRAME_BYTES // 2
    assert right.tobytes() == SILENCE_FRAME * 3


def test_names_never_leave_the_directory(tmp_path: Path) -> None:
    assert recording_path(tmp_path, handle("a/../../b@h")) == tmp_path / "a_.._.._b_h.wav"
    assert recording_path(tmp_path, handle("..")) == tmp_path / "call.wav"
    uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert recording_path(tmp_path, handle(), uuid) == tmp_path / f"{uuid}.wav"


def test_an_unwritable_directory_is_an_oserror_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        CallRecorder(handle(), blocker / "x.wav").start()
