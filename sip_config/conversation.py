"""How a call goes: turn-taking (``[vad]``), the conversation's timing and failure
handling (``[conversation]``) and transfer to a human (``[transfer]``)."""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from sip_config.errors import invalid
from sip_config.types import HttpUrl, Section

__all__ = ["ConversationSettings", "TransferSettings", "VadSettings"]


def _frame_multiple(value: int) -> int:
    if value % 10:
        invalid("must be a multiple of 10 ms (audio is processed in 20 ms frames)")
    return value


FrameMs = Annotated[int, AfterValidator(_frame_multiple)]
"""A duration in ms that whole 10 ms steps of audio make up."""


class VadSettings(Section):
    """Voice-activity detection and turn-taking (``[vad]`` table, ``SIPAGENT_VAD__*``)."""

    aggressiveness: int = Field(default=2, ge=0, le=3, description="webrtcvad mode 0..3.")
    min_speech_ms: FrameMs = Field(
        default=120, ge=20, le=2000, description="Voiced audio needed to start a caller turn."
    )
    end_of_turn_ms: FrameMs = Field(
        default=400, ge=100, le=5000, description="Trailing silence that ends a caller turn."
    )
    barge_in_min_speech_ms: FrameMs = Field(
        default=80, ge=20, le=2000, description="Voiced audio needed to interrupt the agent."
    )
    pause_floor_db: float = Field(
        default=30.0,
        ge=0,
        le=90,
        description=(
            "In a caller turn, audio this many dB below the turn's loudest speech counts as a"
            " pause for early_final_ms (a word's fading tail is not waited for; the end of"
            " turn still waits for silence; 0 = off)."
        ),
    )
    preroll_ms: FrameMs = Field(
        default=200, ge=0, le=1000, description="Audio kept from before speech was detected."
    )
    max_utterance_s: float = Field(
        default=20.0, ge=1, le=120, description="A caller turn is cut off after this long."
    )
    early_final_ms: FrameMs = Field(
        default=100,
        ge=0,
        le=5000,
        description=(
            "Trailing silence after which speech-to-text finalises what it has, so the"
            " transcript is ready when the turn ends (0 = only at the end of the turn)."
        ),
    )

    end_of_turn_complete_ms: FrameMs = Field(
        default=250,
        ge=100,
        le=5000,
        description=(
            "Trailing silence that ends a caller turn whose words so far (finalised at"
            " early_final_ms) end a question or an exclamation ('?', '!')."
        ),
    )
    end_of_turn_incomplete_ms: FrameMs = Field(
        default=800,
        ge=100,
        le=5000,
        description=(
            "Trailing silence that ends a caller turn whose words so far end on a comma or"
            " on a word that leads on ('and', 'so', 'um', 'the', ...)."
        ),
    )

    @model_validator(mode="after")
    def _early_final_before_end(self) -> VadSettings:
        if self.early_final_ms >= self.end_of_turn_ms:
            raise ValueError(
                f"early_final_ms ({self.early_final_ms}) must be below"
                f" end_of_turn_ms ({self.end_of_turn_ms})"
            )
        if not self.end_of_turn_complete_ms <= self.end_of_turn_ms:
            raise ValueError(
                f"end_of_turn_complete_ms ({self.end_of_turn_complete_ms}) must not be above"
                f" end_of_turn_ms ({self.end_of_turn_ms})"
            )
        if not self.end_of_turn_ms <= self.end_of_turn_incomplete_ms:
            raise ValueError(
                f"end_of_turn_incomplete_ms ({self.end_of_turn_incomplete_ms}) must not be"
                f" below end_of_turn_ms ({self.end_of_turn_ms})"
            )
        return self


class ConversationSettings(Section):
    """Conversation timing (``[conversation]`` table, ``SIPAGENT_CONVERSATION__*``)."""

    no_input_timeout_s: float = Field(
        default=8.0, ge=1, le=600, description="Silence after the agent speaks before a re-prompt."
    )
    max_call_s: float = Field(
        default=3600, ge=10, le=86400, description="Hard limit on a call's duration."
    )
    apology_text: str = Field(
        default="Sorry, I'm having a little trouble right now. Could you say that again?",
        description="Said when a turn fails (rendered at start-up, so it plays offline).",
    )
    failure_goodbye_text: str = Field(
        default="Sorry, I'm having technical difficulties. Please call back later. Goodbye.",
        description="Said before hanging up after max_failures failed turns in a row.",
    )
    max_failures: int = Field(
        default=3, ge=1, le=20, description="Failed turns in a row before the call ends."
    )
    generate_ahead: bool = Field(
        default=True,
        description=(
            "With a streaming brain (an LLM), start the reply when the caller pauses and the"
            " words so far are final, before the turn has ended: kept if the turn ends with"
            " those words, dropped (and counted in the turn's record) if the caller goes on."
        ),
    )
    max_vendor_silence_s: float = Field(
        default=2.5,
        ge=0.5,
        le=10,
        description=(
            "With a cloud provider, a reply with no audio this long after the caller stopped,"
            " or whose audio stops this long before it is complete, fails and the apology"
            " plays (the caller never waits longer in silence)."
        ),
    )


_TRANSFER_DOMAIN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class TransferSettings(Section):
    """Transfer of a call to a human (``[transfer]``, ``SIPAGENT_TRANSFER__*``): the
    playbook's ``transfer`` / ``transfer:<target>`` action and the LLM's ``transfer_call``."""

    method: Literal["auto", "refer", "plivo"] = Field(
        default="auto",
        description=(
            "auto: Plivo's REST API for a call that carries a Plivo CallUUID (Plivo takes"
            " REFER only on Zentrunk) when its credentials are set, REFER for trunk calls and"
            " softphones; refer: always blind SIP REFER; plivo: always the REST API (REFER"
            " for a call without a CallUUID)."
        ),
    )
    target: str | None = Field(
        default=None, description="Default target: a sip: URI or a number (or user name)."
    )
    domain: str | None = Field(
        default=None,
        description=(
            "Domain for numbers: sip:<number>@<domain>. Zentrunk needs its <name>.zt.plivo.com"
            " domain. None: the registration domain in register mode, else the caller's host."
        ),
    )
    timeout_s: float = Field(
        default=30.0, ge=1, le=300, description="Longest wait for a transfer's outcome."
    )
    failed_text: str = Field(
        default="Sorry, I couldn't transfer you right now. How else can I help?",
        description="Said when a transfer fails; then the conversation carries on.",
    )
    warm: bool = Field(
        default=False,
        description=(
            "Warm transfer (method refer): the agent calls the human, speaks a summary, then"
            " connects the caller (audio bridged through the agent's process)."
        ),
    )
    warm_intro_text: str = Field(
        default="Hello, this is the virtual agent. I have a caller on the line.",
        description="Said to the human first; the caller's last few turns follow.",
    )
    ring_timeout_s: float = Field(
        default=25.0,
        ge=1,
        le=120,
        description=(
            "Warm transfer: how long the human's phone rings before the agent cancels the"
            " call, tells the caller and carries on (timeout_s still bounds the whole handover)."
        ),
    )
    plivo_auth_id: str = Field(
        default="",
        description=(
            "Plivo auth ID for the REST API (else outbound.plivo_auth_id, else PLIVO_AUTH_ID);"
            " token: app.auth_token (else outbound.plivo_auth_token)."
        ),
    )
    plivo_api_url: HttpUrl = Field(
        default=None,
        description="Plivo REST API base URL; None: outbound.plivo_api_url, else Plivo's.",
    )
    plivo_hangup_after_s: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="After a REST transfer, hang up the agent's leg if Plivo has not by then.",
    )
    caller_id: str | None = Field(
        default=None, description="callerId of the Dial to the human; None: the caller's number."
    )

    @field_validator("domain")
    @classmethod
    def _validate_domain(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        text = value.strip().removeprefix("sip:")
        if not _TRANSFER_DOMAIN.match(text):
            invalid("must be a host[:port], e.g. acme.zt.plivo.com")
        return text

    def auth_id(self) -> str:
        """The Plivo auth ID: the setting, else ``PLIVO_AUTH_ID``, else ""."""
        return self.plivo_auth_id or os.environ.get("PLIVO_AUTH_ID", "")
