"""The benchmarks' spoken questions as 20 ms frames, with the span that is speech (shared
by the load generators `capacity_caller.py` and `stream_caller.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.audio.pcm import FRAME_BYTES, read_wav_8k, rms_dbfs, split_frames

# A clip frame is speech when louder than the agent's VAD energy floor (TurnDetector's
# energy_floor_dbfs): our end of speech is then the one the agent's turn detection sees.
VOICED_DBFS = -50.0


@dataclass
class Clip:
    """A question: its frames and the span of voiced frames."""

    frames: list[bytes]
    first_voiced: int
    last_voiced: int  # inclusive

    @classmethod
    def load(cls, path: Path) -> Clip:
        """Read an 8 kHz WAV (any rate is resampled)."""
        frames = split_frames(read_wav_8k(path))
        frames = [f + bytes(FRAME_BYTES - len(f)) if len(f) < FRAME_BYTES else f for f in frames]
        voiced = np.flatnonzero([rms_dbfs(f) > VOICED_DBFS for f in frames])
        if voiced.size == 0:
            raise ValueError(f"{path}: no speech in the clip")
        return cls(frames, int(voiced[0]), int(voiced[-1]))
