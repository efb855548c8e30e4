"""Stereo call recordings: the caller on the left channel, the agent on the right.

The media clock thread hands every frame it receives from the caller and every frame it
sends to the caller (silence included) to the call's two rings; a recorder sets their
`tap` deques, so the clock thread only appends a bytes object per tick.  A task on the
worker's loop drains the taps every half second into a 16-bit 8 kHz stereo WAV file,
pairing frames in order: both taps grow by one frame per clock tick, so the two channels
stay aligned on the call's own clock.  The file is valid at any moment after the first
flush (the header is rewritten on every flush), so a killed worker leaves a playable
recording of the call up to that point.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gateway.audio.pcm import FRAME_BYTES, SAMPLE_RATE, SILENCE_FRAME
from gateway.pipeline.transport import CallMedia

log = logging.getLogger(__name__)

FLUSH_S = 0.5
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def recording_path(directory: Path, call: CallMedia, call_uuid: str = "") -> Path:
    """Where the call's recording goes: named by CallUUID when known, else the call's id
    (its SIP Call-ID; characters outside ``[A-Za-z0-9._-]`` replaced), never outside
    `directory`."""
    name = _UNSAFE.sub("_", call_uuid or call.call_id).strip("._") or "call"
    return directory / f"{name[:120]}.wav"


class CallRecorder:
    """Records one call into a stereo WAV file; see the module docstring."""

    def __init__(self, call: CallMedia, path: Path) -> None:
        self.call = call
        self.path = path
        self.frames = 0  # stereo frames written (20 ms each)
        self._caller: collections.deque[bytes] = collections.deque()
        self._agent: collections.deque[bytes] = collections.deque()
        self._wav: wave.Wave_write | None = None
        self._file: BinaryIO | None = None

    def start(self) -> None:
        """Open the file and tap the call's rings (raises OSError if it cannot be created)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        wav = wave.open(self._file, "wb")  # noqa: SIM115 - closed in close()
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        self._wav = wav
        self.call.inbound.tap = self._caller
        self.call.playout.tap = self._agent

    async def run(self) -> None:
        """Flush the taps to the file until cancelled."""
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Write the frames both channels have; at the end, pad the shorter one."""
        wav = self._wav
        if wav is None:
            return
        caller, agent = self._caller, self._agent
        n = max(len(caller), len(agent)) if final else min(len(caller), len(agent))
        if n == 0:
            return
        left = b"".join(_take(caller, n))
        right = b"".join(_take(agent, n))
        stereo = np.empty(n * FRAME_BYTES, dtype="<i2")
        stereo[0::2] = np.frombuffer(left, dtype="<i2")
        stereo[1::2] = np.frombuffer(right, dtype="<i2")
        try:
            wav.writeframes(stereo.tobytes())  # also rewrites the header's lengths
            if self._file is not None:
                self._file.flush()  # on disk now: a killed worker leaves a valid file
        except OSError as exc:
            log.error("call %s: recording stopped: %s", self.call.call_id, exc)
            self._untap()
            self._close_file()
            return
        self.frames += n

    def close(self) -> Path | None:
        """Stop recording; returns the file's path (None when nothing could be written)."""
        self._untap()
        if self._wav is None:
            return None
        self.flush(final=True)
        written = self._wav is not None
        self._close_file()
        return self.path if written else None

    def _close_file(self) -> None:
        wav, self._wav = self._wav, None
        file, self._file = self._file, None
        if wav is not None:
            with contextlib.suppress(Exception):
                wav.close()
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()

    def _untap(self) -> None:
        if self.call.inbound.tap is self._caller:
            self.call.inbound.tap = None
        if self.call.playout.tap is self._agent:
            self.call.playout.tap = None


def _take(frames: collections.deque[bytes], n: int) -> list[bytes]:
    """The first `n` frames (silence where the deque runs short or a frame is odd-sized)."""
    out = []
    for _ in range(n):
        frame = frames.popleft() if frames else SILENCE_FRAME
        out.append(frame if len(frame) == FRAME_BYTES else SILENCE_FRAME)
    return out
