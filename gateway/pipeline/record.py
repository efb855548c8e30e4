"""`TurnRecord`: what one agent turn of a call did and how long each part took."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TurnRecord:
    """Timings of one agent turn, in milliseconds unless named otherwise."""

    call_id: str
    turn: int
    # greeting | reply | keys | pushed | reprompt | goodbye | apology | failure-goodbye
    # | transfer-failed
    kind: str
    user_text: str = ""
    agent_text: str = ""
    intent: str | None = None
    speech_ms: int = 0
    eot_wait_ms: float = 0.0
    stt_ms: float = 0.0
    brain_ms: float = 0.0
    tts_first_ms: float = 0.0
    playout_ms: float = 0.0
    total_ms: float = 0.0
    # CLOCK_MONOTONIC seconds (system-wide on Linux: comparable across local processes)
    end_of_speech_at: float = 0.0
    first_audio_at: float = 0.0
    max_gap_ms: float = 0.0  # longest pause between agent frames on the wire (20 = none)
    interrupted: bool = False  # this agent turn was cut off by the caller
    barge_in: bool = False  # the caller's turn began while the agent was speaking
    # The reply was generated ahead, in the caller's pause before the turn ended.
    ahead: bool = False
    # Replies generated ahead and dropped (the caller went on) since the last streamed
    # reply: their tokens were paid for.
    discarded: int = 0
    actions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """Plain dict (for logs and storage)."""
        return asdict(self)


def ms(seconds: float) -> float:
    """Seconds as milliseconds, to 0.1 ms (as records keep them)."""
    return round(seconds * 1000.0, 1)
