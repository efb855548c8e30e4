"""Caller turn detection over 20 ms PCM frames with webrtcvad plus an energy floor.

`TurnDetector` is pure: it keeps no threads and does no I/O. Feed it every frame received
from the call with :meth:`TurnDetector.push`; it returns a ``"start"`` event when the caller
starts speaking (carrying the pre-roll and the frames that confirmed speech) and an
``"end"`` event when the caller has stopped. Between the two, `in_speech` is True and the
caller of `push` streams the frames to speech-to-text itself.

Barge-in is a start while the agent speaks (`push(frame, agent_speaking=True)`): it takes
`barge_in_min_speech_ms` of voiced audio instead of `min_speech_ms`, so that only
sustained speech interrupts the agent.  The turn-taking defaults are the ``[vad]``
settings' (`sip_config.VadSettings`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import webrtcvad

from gateway.audio.pcm import rms_dbfs
from sip_config import VadSettings

_VAD_RATES = (8000, 16000, 32000, 48000)
_VAD_FRAME_MS = (10, 20, 30)
_NOISE_RISE_DB_PER_S = 5.0
_VAD = VadSettings()  # the settings' defaults (written there only)


@dataclass(frozen=True)
class TurnEvent:
    """A change in the caller's speaking state.

    ``kind`` is ``"start"`` or ``"end"``. For START, ``audio`` holds the pre-roll plus the
    frames that confirmed speech; for END it is empty. ``frame_index`` is the index of the
    frame that triggered the event, counting every frame pushed since the detector was
    created from 0. For END, ``speech_ms`` is the utterance length up to its last voiced
    frame, ``trailing_silence_ms`` the unvoiced time waited after it and ``reason`` is
    ``"silence"`` or ``"max_length"``.
    """

    kind: Literal["start", "end"]
    audio: bytes
    frame_index: int
    speech_ms: int = 0
    trailing_silence_ms: int = 0
    reason: str = ""


def _frames_for(ms: int, frame_ms: int) -> int:
    """Whole frames needed to cover ``ms`` milliseconds (rounded up, at least 0)."""
    return max(0, math.ceil(ms / frame_ms))


class TurnDetector:
    """Detect the start and end of caller turns from a stream of fixed-size PCM frames.

    A frame is *voiced* when webrtcvad classifies it as speech and its RMS level is above
    ``energy_floor_dbfs``. While idle, a START is declared once the last
    ``ceil(min_speech_ms / frame_ms)`` frames are voiced, tolerating a single unvoiced frame
    when that window has four frames or more. While in speech, an END is declared once the
    trailing unvoiced frames cover ``end_of_turn_ms`` (rounded up to whole frames) or the
    utterance reaches ``max_utterance_ms``.

    While the agent speaks (``push(..., agent_speaking=True)``) the START window is
    ``barge_in_min_speech_ms`` instead.  ``min_speech_ms`` may be changed between pushes;
    it takes effect on the next push.
    """

    def __init__(
        self,
        *,
        aggressiveness: int = _VAD.aggressiveness,
        min_speech_ms: int = _VAD.min_speech_ms,
        barge_in_min_speech_ms: int = _VAD.barge_in_min_speech_ms,
        end_of_turn_ms: int = _VAD.end_of_turn_ms,
        preroll_ms: int = _VAD.preroll_ms,
        max_utterance_ms: int = int(_VAD.max_utterance_s * 1000),
        energy_floor_dbfs: float = -50.0,
        sample_rate: int = 8000,
        frame_ms: int = 20,
        noise_margin_db: float | None = None,
        pause_floor_db: float = _VAD.pause_floor_db,
    ) -> None:
        """Configure the detector; all durations are in milliseconds.

        ``noise_margin_db`` is an opt-in extra test (off by default): when set, a frame is
        only voiced if it is also that many dB above a running estimate of the background
        level. webrtcvad keeps reporting speech for a few frames after any loud burst
        (its built-in hangover), so over background noise louder than the energy floor a
        single click would otherwise look like ~100 ms of speech.

        ``pause_floor_db``: in a turn, a frame this many dB below the turn's loudest voiced
        frame counts as a pause for `quiet_ms` (0: only unvoiced frames do).  A word's
        fading tail (the hiss of a final "s" some 30 dB down) is then part of the pause in
        which the transcript is finalised early; the end of the turn still waits for
        unvoiced audio (a soft consonant before a comma is no end of turn).
        """
        if sample_rate not in _VAD_RATES:
            raise ValueError(f"sample_rate must be one of {_VAD_RATES}, got {sample_rate}")
        if frame_ms not in _VAD_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {_VAD_FRAME_MS}, got {frame_ms}")
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"aggressiveness must be 0..3, got {aggressiveness}")
        if end_of_turn_ms <= 0 or max_utterance_ms <= 0:
            raise ValueError("end_of_turn_ms and max_utterance_ms must be positive")
        if min_speech_ms < 0 or barge_in_min_speech_ms < 0 or preroll_ms < 0:
            raise ValueError("min_speech_ms and preroll_ms must not be negative")
        self.aggressiveness = aggressiveness
        self.min_speech_ms = min_speech_ms
        self.barge_in_min_speech_ms = barge_in_min_speech_ms
        self._agent_speaking = False
        self.end_of_turn_ms = end_of_turn_ms
        self.preroll_ms = preroll_ms
        self.max_utterance_ms = max_utterance_ms
        self.energy_floor_dbfs = energy_floor_dbfs
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.noise_margin_db = noise_margin_db
        self.pause_floor_db = pause_floor_db
        self.frame_bytes = sample_rate * frame_ms // 1000 * 2

        self._vad = webrtcvad.Vad(aggressiveness)
        self._preroll_frames = _frames_for(preroll_ms, frame_ms)
        self._end_frames = max(1, _frames_for(end_of_turn_ms, frame_ms))
        self._turn_end_frames = self._end_frames  # this utterance's (`set_end_of_turn_ms`)
        self._max_frames = max(1, _frames_for(max_utterance_ms, frame_ms))
        # Idle history of (frame, voiced); long enough for the pre-roll plus any start
        # window up to the maximum utterance length, so raising min_speech_ms between
        # pushes still sees a full window.
        self._history: deque[tuple[bytes, bool]] = deque(
            maxlen=self._preroll_frames + self._max_frames
        )
        self._index = -1
        self._in_speech = False
        self._utterance_frames = 0
        self._last_voiced = 0  # 1-based position of the last voiced frame in the utterance
        self._trailing = 0
        self._noise_dbfs = energy_floor_dbfs
        self._peak_dbfs = -math.inf  # the loudest voiced frame of the turn in progress
        self._quiet = 0  # frames since its last voiced frame within pause_floor_db of that

    @property
    def in_speech(self) -> bool:
        """True between a START and its END."""
        return self._in_speech

    @property
    def trailing_silence_ms(self) -> int:
        """Unvoiced audio since the last voiced frame of the current turn (0 when idle)."""
        return self._trailing * self.frame_ms if self._in_speech else 0

    @property
    def quiet_ms(self) -> int:
        """Pause since the last voiced frame of the current turn that was within
        `pause_floor_db` of its loudest (0 when idle): `trailing_silence_ms`, plus a word's
        fading tail."""
        return self._quiet * self.frame_ms if self._in_speech else 0

    @property
    def frames_pushed(self) -> int:
        """How many frames have been pushed since the detector was created."""
        return self._index + 1

    def set_end_of_turn_ms(self, end_of_turn_ms: int) -> None:
        """The trailing silence that ends the utterance in progress (a turn whose words
        are known to be complete, or to lead on); the next utterance has `end_of_turn_ms`
        again.  A silence already that long ends the turn at the next frame."""
        if self._in_speech:
            self._turn_end_frames = max(1, _frames_for(end_of_turn_ms, self.frame_ms))

    def reset(self) -> None:
        """Return to idle and forget the pre-roll (the frame counter keeps counting)."""
        self._turn_end_frames = self._end_frames
        self._history.clear()
        self._in_speech = False
        self._utterance_frames = 0
        self._last_voiced = 0
        self._trailing = 0
        self._quiet = 0

    def split(self) -> int:
        """End the utterance in progress here without leaving speech, for an end of turn
        decided elsewhere (the recogniser's) while this detector still hears sound: what
        follows counts as a new utterance (its length, its `max_utterance_ms`).  Returns the
        ended utterance's length up to its last voiced frame, in ms (0 when idle)."""
        if not self._in_speech:
            return 0
        speech_ms = self._last_voiced * self.frame_ms
        self._turn_end_frames = self._end_frames
        self._utterance_frames = self._trailing
        self._last_voiced = 0
        return speech_ms

    @property
    def noise_dbfs(self) -> float:
        """Running background-level estimate used by ``noise_margin_db`` (in dBFS)."""
        return self._noise_dbfs

    def is_voiced(self, frame: bytes) -> bool:
        """Classify one frame: webrtcvad speech and louder than the energy floor.

        This advances webrtcvad's internal state, so call it once per frame in order
        (`push` does).
        """
        return self._classify(frame)[0]

    def _classify(self, frame: bytes) -> tuple[bool, float]:
        """(voiced, level in dBFS) of the next frame (see `is_voiced`)."""
        level = rms_dbfs(frame)
        speech = bool(self._vad.is_speech(frame, self.sample_rate))
        voiced = speech and level > self.energy_floor_dbfs
        if self.noise_margin_db is not None:
            voiced = voiced and level > self._noise_dbfs + self.noise_margin_db
            self._track_noise(level)
        return voiced, level

    def _track_noise(self, level: float) -> None:
        """Follow the background level: drop at once to quieter frames, rise slowly."""
        if level < self._noise_dbfs:
            self._noise_dbfs = level
        else:
            self._noise_dbfs = min(
                level, self._noise_dbfs + _NOISE_RISE_DB_PER_S * self.frame_ms / 1000
            )

    def push(self, frame: bytes, agent_speaking: bool = False) -> TurnEvent | None:
        """Process the next frame (exactly ``frame_bytes`` long) and report a turn change;
        `agent_speaking`: a START now is a barge-in (``barge_in_min_speech_ms``)."""
        if len(frame) != self.frame_bytes:
            raise ValueError(f"frame must be {self.frame_bytes} bytes, got {len(frame)}")
        self._agent_speaking = agent_speaking
        self._index += 1
        voiced, level = self._classify(frame)
        if self._in_speech:
            if voiced:
                self._peak_dbfs = max(self._peak_dbfs, level)
            floor = self.pause_floor_db
            loud = voiced and (not floor or level > self._peak_dbfs - floor)
            self._quiet = 0 if loud else self._quiet + 1
            return self._push_speech(voiced)
        started = self._push_idle(frame, voiced)
        if started is not None:
            self._peak_dbfs = level if voiced else -math.inf
            self._quiet = self._trailing
        return started

    def _window_frames(self) -> int:
        ms = self.barge_in_min_speech_ms if self._agent_speaking else self.min_speech_ms
        return max(1, _frames_for(ms, self.frame_ms))

    def _push_idle(self, frame: bytes, voiced: bool) -> TurnEvent | None:
        self._history.append((frame, voiced))
        window = min(self._window_frames(), self._max_frames)
        if len(self._history) < window:
            return None
        recent = list(islice(reversed(self._history), window))  # newest first
        unvoiced = sum(1 for _, v in recent if not v)
        allowed = 1 if window >= 4 else 0
        if unvoiced > allowed:
            return None

        history = list(self._history)
        start = len(history) - window
        audio = b"".join(f for f, _ in history[max(0, start - self._preroll_frames) :])
        self._history.clear()
        self._in_speech = True
        self._utterance_frames = window
        last_voiced_age = next(i for i, (_, v) in enumerate(recent) if v)
        self._last_voiced = window - last_voiced_age
        self._trailing = last_voiced_age
        return TurnEvent(kind="start", audio=audio, frame_index=self._index)

    def _push_speech(self, voiced: bool) -> TurnEvent | None:
        self._utterance_frames += 1
        if voiced:
            self._last_voiced = self._utterance_frames
            self._trailing = 0
        else:
            self._trailing += 1
        if self._trailing >= self._turn_end_frames:
            return self._end("silence")
        if self._utterance_frames >= self._max_frames:
            return self._end("max_length")
        return None

    def _end(self, reason: str) -> TurnEvent:
        event = TurnEvent(
            kind="end",
            audio=b"",
            frame_index=self._index,
            speech_ms=self._last_voiced * self.frame_ms,
            trailing_silence_ms=self._trailing * self.frame_ms,
            reason=reason,
        )
        self.reset()
        return event


# Words after which a speaker usually goes on: a pause after one is not an end of turn.
_LEADING_ON = frozenset(
    {
        "and",
        "or",
        "but",
        "so",
        "because",
        "then",
        "also",
        "plus",
        "like",
        "um",
        "uh",
        "er",
        "erm",
        "hmm",
        "mm",
        "the",
        "a",
        "an",
        "my",
        "your",
        "our",
        "their",
        "his",
        "her",
        "its",
        "to",
        "of",
        "for",
        "with",
        "from",
        "at",
        "by",
        "about",
        "into",
        "if",
        "than",
        "as",
    }
)


def end_of_turn_for(text: str, *, base_ms: int, complete_ms: int, incomplete_ms: int) -> int:
    """The trailing silence that should end a turn whose words so far are `text` (a final
    transcript, as a recogniser punctuates it): `complete_ms` after a question or an
    exclamation, `incomplete_ms` after a comma, a dash, an ellipsis or a word that leads on
    ("and", "so", "um", "the", "to", ...), else `base_ms`.  A full stop counts for nothing:
    recognisers put one at the end of any piece they finalise, complete or not."""
    words = text.strip()
    if not words:
        return base_ms
    if words.endswith(("?", "!")):
        return complete_ms
    if words.endswith((",", "-", "...", "\u2026", ";", ":")):
        return incomplete_ms
    last = words.split()[-1].lower().strip(".,;:\"'\u2019")
    return incomplete_ms if last in _LEADING_ON else base_ms
