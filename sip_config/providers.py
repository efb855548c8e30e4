"""Which speech-to-text, text-to-speech and brain the calls use (``[providers]``) and each
vendor's own section: ``[deepgram]``, ``[openai]``, ``[elevenlabs]``, and the two bot
brains, ``[webhook]`` (the customer's request/response bot) and ``[external]`` (OCS).

Each provider is declared (`ProviderSpec`) by the section that holds its options, and
its name is checked against them; gateway/providers/registry.py builds them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from sip_config.errors import invalid
from sip_config.types import BlankIsNone, HttpUrl, Section, WsUrl, check_http_url

__all__ = [
    "BotBrainSettings",
    "BrainName",
    "DeepgramSettings",
    "ElevenLabsSettings",
    "ExternalBrainSettings",
    "HttpToolSettings",
    "Kind",
    "OpenAiSettings",
    "ProviderSections",
    "ProviderSettings",
    "ProviderSpec",
    "SttName",
    "TtsName",
    "WebhookBrainSettings",
    "provider_names",
    "provider_specs",
]


Kind = Literal["stt", "tts", "brain"]


@dataclass(frozen=True)
class ProviderSpec:
    """One provider the settings may name, declared by the settings section that holds its
    options (`ProviderSettings` for the built-in ones); gateway/providers/registry.py builds
    it from `factory`."""

    kind: Kind
    name: str
    # "module:function" taking the `Settings`, imported only when the provider is built (a
    # vendor's SDK loads in the processes that use it, not wherever settings are read).
    factory: str
    # A vendor over the network: wrapped in the failover layer, and a reply it owes has a
    # deadline (conversation.max_vendor_silence_s).
    cloud: bool = False
    # Needs an API key: ``<name>.api_key`` in the settings, or ``<NAME>_API_KEY``.
    api_key: bool = False
    # Loads speech models in every worker process (about a core per 4 busy calls).
    local_models: bool = False
    # False: for tests and benchmarks only ("fake"); not listed as shipped.
    shipped: bool = True


def _cloud(kind: Kind, name: str, module: str) -> ProviderSpec:
    """A vendor's provider: over the network, with an API key."""
    return ProviderSpec(kind, name, f"gateway.providers.{module}:build", cloud=True, api_key=True)


def provider_specs() -> tuple[ProviderSpec, ...]:
    """Every provider, in the order their names are listed: the built-in shipped ones, the
    ones each section of `ProviderSections` declares (in its field order), then the fakes."""
    builtin = ProviderSettings.PROVIDERS
    sections = [
        spec
        for field in ProviderSections.model_fields.values()
        for spec in getattr(field.annotation, "PROVIDERS", ())
    ]
    return (
        *(p for p in builtin if p.shipped),
        *sections,
        *(p for p in builtin if not p.shipped),
    )


def provider_names(kind: Kind) -> tuple[str, ...]:
    """The names of the `kind` providers, in listing order."""
    return tuple(p.name for p in provider_specs() if p.kind == kind)


def _provider_name(kind: Kind) -> AfterValidator:
    """A validator of a provider name of `kind` against the declared providers."""
    label = {"stt": "STT", "tts": "TTS", "brain": "brain"}[kind]

    def check(value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip().lower()
        allowed = provider_names(kind)
        if name not in allowed:
            invalid(f"unknown {label} provider; known: {', '.join(allowed)}")
        return name

    return AfterValidator(check)


SttName = Annotated[str, _provider_name("stt")]
TtsName = Annotated[str, _provider_name("tts")]
BrainName = Annotated[str, _provider_name("brain")]
# A fallback: empty means none.
SttFallback = Annotated[SttName | None, BlankIsNone]
TtsFallback = Annotated[TtsName | None, BlankIsNone]
BrainFallback = Annotated[BrainName | None, BlankIsNone]


class ProviderSettings(Section):
    """Which STT/TTS/brain implementations to use (``[providers]``, ``SIPAGENT_PROVIDERS__*``)."""

    # The providers built in, whose few options live in this section.
    PROVIDERS: ClassVar[tuple[ProviderSpec, ...]] = (
        ProviderSpec(
            "stt", "pocketsphinx", "gateway.providers.pocketsphinx_stt:build", local_models=True
        ),
        ProviderSpec("tts", "piper", "gateway.providers.piper_tts:build", local_models=True),
        ProviderSpec("brain", "scripted", "gateway.providers.scripted:build"),
        ProviderSpec("stt", "fake", "gateway.providers.fake:build_stt", shipped=False),
        ProviderSpec("tts", "fake", "gateway.providers.fake:build_tts", shipped=False),
        ProviderSpec("brain", "fake", "gateway.providers.fake:build_brain", shipped=False),
    )

    stt: SttName = Field(default="pocketsphinx", description="Speech-to-text provider name.")
    tts: TtsName = Field(default="piper", description="Text-to-speech provider name.")
    brain: BrainName = Field(default="scripted", description="Conversation brain name.")
    stt_fallback: SttFallback = Field(
        default=None, description="Secondary STT when the primary fails (e.g. pocketsphinx)."
    )
    tts_fallback: TtsFallback = Field(
        default=None, description="Secondary TTS when the primary fails (e.g. piper)."
    )
    brain_fallback: BrainFallback = Field(
        default=None, description="Secondary brain when the primary fails (e.g. scripted)."
    )
    stt_timeout_s: float = Field(
        default=2.0, gt=0, le=30, description="Wait for a final transcript at most this long."
    )
    brain_timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=30,
        description="Wait for the brain's first words, and for each next piece, this long.",
    )
    tts_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="Wait for the first audio, and for each next piece, this long.",
    )
    retries: int = Field(default=1, ge=0, le=3, description="Retries on the primary.")
    pocketsphinx_playbook_weight: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description=(
            "pocketsphinx expects the playbook: the share of a language model built from it"
            " (and from yes/no, goodbye, digits) in the interpolation with the general"
            " English model. 0 uses the general model alone."
        ),
    )
    pocketsphinx_phone_line_adaptation: bool = Field(
        default=True,
        description=(
            "pocketsphinx's 16 kHz acoustic model adapted to speech through an 8 kHz G.711"
            " line (a bundled MLLR transform, 8 Gaussians scored per frame, dither) and to"
            " each caller's voice (a frequency warp chosen from its pitch). false uses the"
            " model as pocketsphinx ships and configures it."
        ),
    )
    piper_length_scale: float = Field(
        default=1.0, ge=0.5, le=2.0, description="Piper speaking-rate factor (>1 is slower)."
    )
    # Latencies of the "fake" providers (benchmarks model a cloud vendor with them).
    fake_stt_final_ms: int = Field(
        default=0, ge=0, le=10000, description='"fake" STT: end of audio → final transcript.'
    )
    fake_llm_first_token_ms: int = Field(
        default=0, ge=0, le=10000, description='"fake" brain: caller text → reply.'
    )
    fake_tts_first_byte_ms: int = Field(
        default=0, ge=0, le=10000, description='"fake" TTS: text → first audio chunk.'
    )
    fake_tts_speed: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description='"fake" TTS: stream N times faster than real time (0: all at once).',
    )

    @field_validator("fake_tts_speed")
    @classmethod
    def _validate_fake_tts_speed(cls, value: float) -> float:
        if value != 0.0 and value < 1.0:
            invalid("must be 0 (unpaced) or at least 1 (real time); slower would underrun")
        return value


# --- vendors ----------------------------------------------------------------------------


class DeepgramSettings(Section):
    """Deepgram live speech-to-text (``[deepgram]``; the key may also come from
    ``DEEPGRAM_API_KEY``)."""

    PROVIDERS: ClassVar[tuple[ProviderSpec, ...]] = (_cloud("stt", "deepgram", "deepgram_stt"),)

    api_key: str = Field(default="", repr=False, description="Deepgram API key.")
    base_url: WsUrl = Field(
        default=None, description="WebSocket base URL (wss://...); None: Deepgram's."
    )
    model: str = Field(default="nova-3", description="Recognition model.")
    language: str = Field(default="en-US", description="Language code.")
    endpointing_ms: int = Field(
        default=300, ge=10, le=5000, description="Deepgram's own end-of-speech silence."
    )
    utterance_end_ms: int = Field(
        default=1000, ge=1000, le=5000, description="UtteranceEnd after this much silence."
    )


def _required_http_url(value: str) -> str:
    checked = check_http_url(value)
    if checked is None:
        invalid("is required")
    return checked


class HttpToolSettings(Section):
    """A tool the LLM may call: the gateway POSTs its JSON arguments to ``url``."""

    name: str = Field(description="Tool name the model sees ([A-Za-z0-9_-], ≤ 64).")
    description: str = Field(description="What the tool does, for the model.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON schema of the arguments.",
    )
    url: Annotated[str, AfterValidator(_required_http_url)] = Field(
        description="http(s) URL the arguments are POSTed to."
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Request timeout.")

    @field_validator("name")
    @classmethod
    def _validate_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]{1,64}$", value):
            invalid("must be 1-64 letters, digits, '_' or '-'")
        if value in ("end_call", "transfer_call"):
            invalid("is a built-in tool name")
        return value


class OpenAiSettings(Section):
    """OpenAI (or any OpenAI-compatible server) as the brain (``[openai]``; the key may
    also come from ``OPENAI_API_KEY``)."""

    PROVIDERS: ClassVar[tuple[ProviderSpec, ...]] = (_cloud("brain", "openai", "openai_brain"),)

    api_key: str = Field(default="", repr=False, description="API key.")
    base_url: str | None = Field(
        default=None, description="API base URL, e.g. http://127.0.0.1:8000/v1; None: OpenAI."
    )
    model: str = Field(default="gpt-4o-mini", description="Chat model.")
    system_prompt: str = Field(
        default=(
            "You are a friendly phone agent. Answer in one or two short spoken sentences,"
            " without lists or markdown. The caller is {from_number}."
        ),
        description="System prompt; {from_number}, {to_number}, {call_uuid} are filled in.",
    )
    greeting: str = Field(
        default="Hello, thanks for calling. How can I help you today?",
        description="First thing the agent says (not generated).",
    )
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling.")
    transfer_target: str | None = Field(
        default=None, description="Where transfer_call sends the caller (number or sip: URI)."
    )
    transfer_line: str = Field(
        default="Let me transfer you to a colleague now.", description="Said on transfer."
    )
    tools: list[HttpToolSettings] = Field(default_factory=list, description="HTTP tools.")


class ElevenLabsSettings(Section):
    """ElevenLabs streaming text-to-speech (``[elevenlabs]``; the key may also come from
    ``ELEVENLABS_API_KEY``)."""

    PROVIDERS: ClassVar[tuple[ProviderSpec, ...]] = (_cloud("tts", "elevenlabs", "elevenlabs_tts"),)

    api_key: str = Field(default="", repr=False, description="API key.")
    base_url: HttpUrl = Field(default=None, description="API base URL; None: ElevenLabs.")
    voice_id: str = Field(default="21m00Tcm4TlvDq8ikWAM", description="Voice id.")
    model_id: str = Field(default="eleven_flash_v2_5", description="Model (Flash: low latency).")
    stability: float | None = Field(default=None, ge=0, le=1)
    similarity_boost: float | None = Field(default=None, ge=0, le=1)
    style: float | None = Field(default=None, ge=0, le=1)
    speed: float | None = Field(default=None, ge=0.7, le=1.2)


# --- the bot brains ---------------------------------------------------------------------


class BotBrainSettings(Section):
    """What the two bot brains share: a remote service answers each caller turn, over HTTP
    or later by pushing its reply to the app."""

    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers sent to the bot (OCS), e.g. Authorization."
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Per-request timeout.")
    pending_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Wait this long for a reply pushed later before apologising.",
    )
    push_token: str = Field(
        default="",
        repr=False,
        description=(
            "Bearer token the bot sends when it pushes a reply to the app (the webhook's"
            " /bot/calls/<call_id>/reply, OCS's /dcs/response); empty: pushed replies are"
            " refused."
        ),
    )


class WebhookBrainSettings(BotBrainSettings):
    """The customer's request/response bot as the brain (``[webhook]``,
    ``providers.brain = "webhook"``): each caller turn is a request whose answer is what
    the agent says (or ``pending``, pushed later)."""

    PROVIDERS: ClassVar[tuple[ProviderSpec, ...]] = (
        ProviderSpec("brain", "webhook", "gateway.providers.webhook_brain:build"),
    )

    start_url: HttpUrl = Field(
        default=None, description="Call-start endpoint (its reply is the greeting)."
    )
    turn_url: HttpUrl = Field(
        default=None, description="Endpoint that gets each caller turn and returns the reply."
    )
    tts_url: HttpUrl = Field(
        default=None, description="HTTP TTS for text replies; None: the configured TTS."
    )
    greeting: str = Field(default="Hello.", description="Greeting when start_url is unset.")
    reply_url: HttpUrl = Field(
        default=None,
        description=(
            "URL sent to the bot for pushing replies, '{call_id}' replaced; None: the app's"
            " own /bot/calls/{call_id}/reply under app.public_url (or its listen address)."
        ),
    )

    @field_validator("reply_url")
    @classmethod
    def _validate_reply_url(cls, value: str | None) -> str | None:
        if value is not None and "{call_id}" not in value:
            invalid("must contain '{call_id}' where the call's id goes")
        return value


OLD_EXTERNAL_KEYS: Final = {
    "dcs_url": "webhook.start_url",
    "dcs_response_url": "webhook.turn_url",
    "reply_url": "webhook.reply_url",
}
OLD_EXTERNAL_HINT: Final = (
    "the request/response bot is now providers.brain = 'webhook' with a [webhook] section;"
    " [external] (providers.brain = 'external') is the OCS integration, where sipagent is"
    " the DCS: set external.ocs_url (or OCS_URL) and point OCS's DCS_URL and"
    " DCS_RESPONSE_URL at the app's /dcs/calls and /dcs/response"
)


class ExternalBrainSettings(BotBrainSettings):
    """An Ori-style OCS drives the conversation, sipagent is its DCS (``[external]``,
    ``providers.brain = "external"``; ``OCS_URL`` and ``AI_TTS_URL`` are accepted as
    environment variables too).

    The caller's words go to ``ocs_url``; OCS delivers its replies to the app's
    ``/dcs/response`` (its ``DCS_RESPONSE_URL``) and starts calls through ``/dcs/calls``
    (its ``DCS_URL``).
    """

    PROVIDERS: ClassVar[tuple[ProviderSpec, ...]] = (
        ProviderSpec("brain", "external", "gateway.providers.ocs_brain:build"),
    )

    ocs_url: HttpUrl = Field(
        default=None, description="Where call events and the caller's words are POSTed."
    )
    ai_tts_url: HttpUrl = Field(
        default=None,
        description="HTTP TTS for replies with text but no audio_url; None: the gateway's TTS.",
    )
    greeting: str = Field(
        default="", description="Said at call start while OCS's welcome is awaited; '': none."
    )

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        """The request/response bot's old keys get a message saying what to use now."""
        if isinstance(data, dict):
            old = [key for key in OLD_EXTERNAL_KEYS if key in data]
            if old:
                moved = ", ".join(f"{key} -> {OLD_EXTERNAL_KEYS[key]}" for key in old)
                invalid(
                    f"{', '.join(old)}: no longer here ({moved}); {OLD_EXTERNAL_HINT}",
                    show_input=False,
                )
        return data

    def url(self, name: str) -> str | None:
        """``name`` ("ocs_url" or "ai_tts_url") from the settings, else its upper-case
        environment variable."""
        value: str | None = getattr(self, name)
        return value or os.environ.get(name.upper()) or None


class ProviderSections(BaseModel):
    """The vendors' and bot brains' sections of `Settings` (which inherits them): a new
    provider's section is declared here, beside its class, and nowhere else."""

    deepgram: DeepgramSettings = Field(default_factory=DeepgramSettings)
    openai: OpenAiSettings = Field(default_factory=OpenAiSettings)
    elevenlabs: ElevenLabsSettings = Field(default_factory=ElevenLabsSettings)
    external: ExternalBrainSettings = Field(default_factory=ExternalBrainSettings)
    webhook: WebhookBrainSettings = Field(default_factory=WebhookBrainSettings)
