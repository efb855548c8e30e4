"""On the wire: a call recorded as a stereo WAV (caller left, agent right), path in its record."""

from __future__ import annotations

import sqlite3
import wave
from pathlib import Path

import numpy as np
import pytest

from gateway.audio.pcm import FRAME_MS, rms_dbfs, split_frames
from tests.helpers.wire import place_call, running_agent, uri

pytestmark = [pytest.mark.wire, pytest.mark.timeout(180)]


def loud_ms(samples: np.ndarray) -> list[int]:
    """Start times (ms) of the audible 20 ms frames of a mono channel."""
    frames = split_frames(samples.astype("<i2").tobytes())
    return [i * FRAME_MS for i, f in enumerate(frames) if rms_dbfs(f) > -45.0]


def test_a_call_is_recorded_in_stereo_and_the_record_points_at_it(tmp_path: Path) -> None:
    settings = {
        "providers__stt": "fake",
        "providers__tts": "fake",
        "providers__brain": "fake",
        "records__recording_dir": str(tmp_path / "recordings"),
    }
    with running_agent(tmp_path, **settings) as agent:
        report = place_call(uri(agent), "--say", "What are your opening hours?", "--hold", "1")
    assert report["returncode"] == 0, report["stderr"][-2000:]
    step = report["steps"][0]
    assert step["ok"], step

    files = list((tmp_path / "recordings").glob("*.wav"))
    assert len(files) == 1, files
    with wave.open(str(files[0]), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    caller, agent_side = loud_ms(samples[0::2]), loud_ms(samples[1::2])
    duration_ms = len(samples) // 2 // 8
    # The agent greets first (right channel), then the caller asks (left), then the agent
    # answers (right again) - all on one clock.
    assert agent_side and agent_side[0] < 1000, agent_side[:5]
    assert caller and caller[0] > agent_side[0], (caller[:5], agent_side[:5])
    assert 500 <= len(caller) * FRAME_MS <= 4000, len(caller)
    answer = [t for t in agent_side if t > caller[-1]]
    assert answer, "the agent's answer is not in the recording"
    # What the softphone measured lines up with the recording: the answer's start lies
    # reply_latency_ms after the caller's last audible frame (within a jitter margin).
    gap = answer[0] - caller[-1]
    assert abs(gap - step["reply_latency_ms"]) < 300, (gap, step["reply_latency_ms"])
    assert duration_ms >= answer[-1]

    with sqlite3.connect(tmp_path / "sipagent-records.db") as db:
        rows = db.execute("SELECT recording FROM calls").fetchall()
    assert rows == [(str(files[0].resolve()),)]
