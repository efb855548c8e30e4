"""The conversation's knobs (`ConversationOptions`) and its start-up prompts (`Prompts`).

Each knob that is a setting has one default, the setting's (`sip_config`): the options are
built from the settings sections (`ConversationOptions.from_settings`), and built without
them (tests, tools) they take the same defaults from the sections' models.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.pipeline.turns import TurnDetector
from sip_config import ConversationSettings, TransferSettings, VadSettings

# The settings' defaults, read from their models (the one place they are written).
_VAD = VadSettings()
_CONVERSATION = ConversationSettings()
_TRANSFER = TransferSettings()


@dataclass
class ConversationOptions:
    """Turn-taking, failure and transfer knobs (from settings)."""

    aggressiveness: int = _VAD.aggressiveness
    min_speech_ms: int = _VAD.min_speech_ms
    end_of_turn_ms: int = _VAD.end_of_turn_ms
    barge_in_min_speech_ms: int = _VAD.barge_in_min_speech_ms
    preroll_ms: int = _VAD.preroll_ms
    early_final_ms: int = _VAD.early_final_ms
    pause_floor_db: float = _VAD.pause_floor_db
    end_of_turn_complete_ms: int = _VAD.end_of_turn_complete_ms
    end_of_turn_incomplete_ms: int = _VAD.end_of_turn_incomplete_ms
    generate_ahead: bool = _CONVERSATION.generate_ahead
    max_utterance_ms: int = int(_VAD.max_utterance_s * 1000)
    no_input_timeout_s: float = _CONVERSATION.no_input_timeout_s
    min_unrecognised_ms: int = 400
    hangup_delay_s: float = 0.3
    max_failures: int = _CONVERSATION.max_failures  # failed turns in a row before goodbye
    # A reply (or greeting) with no audio this long after it was due counts as failed: the
    # apology plays, so a slow or dead vendor never leaves the caller in silence. None: no
    # limit (the offline pipeline, whose delays are CPU, not vendors).
    reply_deadline_s: float | None = None
    # Transfer (a "transfer[:target]" action): the longest wait for its outcome, and what
    # the agent says when it fails before the conversation carries on.
    transfer_timeout_s: float = _TRANSFER.timeout_s
    transfer_failed_text: str = _TRANSFER.failed_text
    # Warm transfer: said to the human when they answer, before "They said: ..." (the
    # caller's last few turns) and the connection.
    warm_intro_text: str = _TRANSFER.warm_intro_text
    warm_summary_turns: int = 3
    warm_ring_timeout_s: float = _TRANSFER.ring_timeout_s  # the human's phone rings this long

    @classmethod
    def from_settings(
        cls,
        vad: VadSettings,
        conversation: ConversationSettings,
        transfer: TransferSettings,
        *,
        reply_deadline_s: float | None,
    ) -> ConversationOptions:
        """The options of these settings sections (`reply_deadline_s`: with cloud vendors,
        ``conversation.max_vendor_silence_s``; None offline)."""
        return cls(
            aggressiveness=vad.aggressiveness,
            min_speech_ms=vad.min_speech_ms,
            end_of_turn_ms=vad.end_of_turn_ms,
            barge_in_min_speech_ms=vad.barge_in_min_speech_ms,
            preroll_ms=vad.preroll_ms,
            early_final_ms=vad.early_final_ms,
            pause_floor_db=vad.pause_floor_db,
            end_of_turn_complete_ms=vad.end_of_turn_complete_ms,
            end_of_turn_incomplete_ms=vad.end_of_turn_incomplete_ms,
            generate_ahead=conversation.generate_ahead,
            max_utterance_ms=int(vad.max_utterance_s * 1000),
            no_input_timeout_s=conversation.no_input_timeout_s,
            max_failures=conversation.max_failures,
            reply_deadline_s=reply_deadline_s,
            transfer_timeout_s=transfer.timeout_s,
            transfer_failed_text=transfer.failed_text,
            warm_intro_text=transfer.warm_intro_text,
            warm_ring_timeout_s=transfer.ring_timeout_s,
        )

    def turn_detector(self, min_speech_ms: int | None = None) -> TurnDetector:
        """A turn detector with these options (`min_speech_ms` overrides its option)."""
        return TurnDetector(
            aggressiveness=self.aggressiveness,
            min_speech_ms=self.min_speech_ms if min_speech_ms is None else min_speech_ms,
            barge_in_min_speech_ms=self.barge_in_min_speech_ms,
            end_of_turn_ms=self.end_of_turn_ms,
            preroll_ms=self.preroll_ms,
            max_utterance_ms=self.max_utterance_ms,
            pause_floor_db=self.pause_floor_db,
        )


@dataclass(frozen=True)
class Prompts:
    """Audio rendered at start-up, so it plays even when every vendor is down: the
    apology after a failed turn, and the goodbye after `max_failures` in a row."""

    apology_text: str
    apology: bytes  # 8 kHz 16-bit mono PCM
    goodbye_text: str
    goodbye: bytes
