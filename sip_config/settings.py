"""Gateway settings: pydantic models plus a loader that layers every configuration source.

Sources, highest priority first: explicit ``overrides`` (used by the CLI), environment
variables (``SIPAGENT_`` prefix, ``__`` between nesting levels), a ``.env`` file, a TOML
config file, and the defaults declared here.  Every validation problem is reported as a
single :class:`ConfigError` whose message names each bad setting by its dotted path.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

__all__ = [
    "AppSettings",
    "BusinessHours",
    "Codec",
    "ConfigError",
    "ConversationSettings",
    "LogLevel",
    "PoolSettings",
    "ProviderSettings",
    "RecordsSettings",
    "RegistrationSettings",
    "Route",
    "RoutingSettings",
    "Settings",
    "SipAccount",
    "SipMode",
    "SipSettings",
    "VadSettings",
    "bundled_playbook_path",
    "load_settings",
    "parse_listen",
    "vendor_key",
]

_DEFAULT_LISTEN_HOST: Final = "127.0.0.1"
_MAX_CALLS_CAP: Final = 4  # the pjsua2 wheel is built with PJSUA_MAX_CALLS = 4

Codec = Literal["PCMU", "PCMA"]
"""G.711 codec names accepted in ``sip.codecs``."""

_DEFAULT_CODECS: Final[tuple[Codec, ...]] = ("PCMU", "PCMA")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
"""Log levels accepted in ``log_level``."""

# Errors raised by our own validators.  ``_ERR_SHOW_INPUT`` gets "(got <value>)" appended by
# the formatter; ``_ERR_VERBATIM`` messages already contain the value in their own words.
_ERR_SHOW_INPUT: Final = "sipagent_invalid"
_ERR_VERBATIM: Final = "sipagent_invalid_verbatim"

_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_SIP_USER = re.compile(r"^[A-Za-z0-9._-]+$")


class ConfigError(Exception):
    """Invalid or unreadable configuration.

    ``str(error)`` is a human-readable message (one line per problem); ``problems`` holds
    the same lines individually, e.g. ``"sip.listen_port: Input should be ... (got 70000)"``.
    """

    def __init__(self, message: str, problems: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: tuple[str, ...] = problems if problems is not None else (message,)

    def __str__(self) -> str:
        return self.message


def _invalid(message: str, *, show_input: bool = True) -> NoReturn:
    """Raise a validation error whose text the formatter keeps as-is (no "Value error, ")."""
    raise PydanticCustomError(_ERR_SHOW_INPUT if show_input else _ERR_VERBATIM, message)


def _check_host(value: str) -> str:
    """Return ``value`` (brackets stripped) if it is an IP literal or looks like a hostname.

    Raises ``ValueError`` with a short explanation otherwise.
    """
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not host:
        raise ValueError("must not be empty")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError("must be an IPv4/IPv6 address or a hostname")
    if labels[-1].isdigit():
        # "10.0.0.300" is a broken IPv4 address, not a hostname.
        raise ValueError("is not a valid IP address")
    return host


def bundled_playbook_path() -> Path:
    """Return the path of the demo playbook shipped inside the ``gateway`` package.

    The ``gateway`` package is located without importing any of its modules, so this is
    safe to call where pjsua2 is unavailable.  The file is not checked for existence.
    """
    spec = importlib.util.find_spec("gateway")
    if spec is None:
        raise ConfigError("cannot locate the bundled playbook: package 'gateway' is not installed")
    if spec.origin is not None and spec.origin not in ("namespace", "built-in", "frozen"):
        package_dir = Path(spec.origin).parent
    elif spec.submodule_search_locations:
        package_dir = Path(next(iter(spec.submodule_search_locations)))
    else:  # pragma: no cover - exotic loaders
        raise ConfigError("cannot locate the bundled playbook: 'gateway' has no directory")
    return package_dir / "playbooks" / "demo.toml"


class _Section(BaseModel):
    """Base for settings sections: unknown keys and non-finite floats are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


SipMode = Literal["direct", "register"]
"""``direct``: take INVITEs on the workers' addresses (softphone, Dial to a SIP URI, BYOC
trunk); ``register``: each worker registers its own endpoint with a registrar."""

_DEFAULT_ALLOW: Final[tuple[str, ...]] = ("127.0.0.0/8", "::1/128")


def _parse_list(value: object) -> object:
    """Accept a JSON list or a comma-separated string (for environment variables)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                _invalid("is neither a JSON list nor a comma-separated list")
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


_AUTH_PASSWORD = re.compile(r"^[!#-\[\]-~]{8,128}$")  # printable ASCII but space, '"', '\\'


class InboundAuthSettings(_Section):
    """Digest credentials every new call must carry (``[sip.inbound_auth]``,
    ``SIPAGENT_SIP__INBOUND_AUTH__*``): the workers (or the edge) challenge INVITEs, and
    the app's Dial gives Plivo the credentials (``sipAuthUsername``/``sipAuthPassword``)."""

    username: str = Field(default="", description="User the callers authenticate as.")
    password: str = Field(
        default="",
        repr=False,
        description="Its password: 8-128 printable ASCII characters (Plivo's rule).",
    )
    realm: str = Field(default="sipagent", description="Realm of the challenge.")

    @property
    def enabled(self) -> bool:
        """Whether calls are challenged."""
        return bool(self.username)

    @field_validator("username")
    @classmethod
    def _validate_username(cls, value: str) -> str:
        if value and (len(value) > 64 or not _SIP_USER.match(value)):
            _invalid("must be at most 64 letters, digits, '-', '.' or '_'")
        return value

    @field_validator("realm")
    @classmethod
    def _validate_realm(cls, value: str) -> str:
        if len(value) > 64 or not _SIP_USER.match(value):
            _invalid("must be 1-64 letters, digits, '-', '.' or '_'")
        return value

    @model_validator(mode="after")
    def _both_or_neither(self) -> InboundAuthSettings:
        if bool(self.username) != bool(self.password):
            _invalid("set both username and password (or neither, for no authentication)")
        if self.password and not _AUTH_PASSWORD.match(self.password):
            _invalid(
                "password must be 8 to 128 printable ASCII characters without spaces,"
                " '\"' or '\\' (Plivo's sipAuthPassword takes 8-128)"
            )
        return self


class SipSettings(_Section):
    """SIP user-agent settings (``[sip]`` table, ``SIPAGENT_SIP__*`` variables)."""

    listen_host: str = Field(
        default=_DEFAULT_LISTEN_HOST, description="Local address to bind the SIP transport to."
    )
    listen_port: int = Field(default=5060, ge=1, le=65535, description="Local SIP port.")
    public_host: str | None = Field(
        default=None, description="Address advertised in Contact/SDP; None uses the bound one."
    )
    media_host: str | None = Field(
        default=None,
        description=(
            "Local address to bind RTP to; None uses listen_host. Behind the edge the"
            " workers' SIP is on loopback and their media on this (or edge.listen_host)."
        ),
    )
    media_public_host: str | None = Field(
        default=None,
        description="Address advertised in SDP for RTP; None uses public_host, then media_host.",
    )
    user: str = Field(default="agent", description="SIP user part of the agent's URI.")
    codecs: Annotated[list[Codec], NoDecode] = Field(
        default_factory=lambda: list(_DEFAULT_CODECS),
        description='Enabled codecs in priority order; also accepts "PCMA,PCMU".',
    )
    max_calls: int = Field(
        default=4, ge=1, description="Concurrent calls (at most 4: pjsua2 per-process cap)."
    )
    rtp_port_start: int = Field(default=20000, ge=1024, le=65000, description="First RTP port.")
    rtp_port_range: int = Field(
        default=200, ge=8, le=10000, description="Number of RTP ports available from the start."
    )
    rtp_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Hang up a call whose RTP stopped this long."
    )
    user_agent: str = Field(
        default="",
        description=(
            "User-Agent header of the agent's requests; empty (the default) sends none, so"
            " a scanner cannot read which software answers."
        ),
    )
    outbound_proxy: str | None = Field(
        default=None,
        description=(
            "SIP URI the agent sends the calls it places through (e.g. sip:10.0.0.2:5060);"
            " None sends them straight to their target. The edge sets it for its workers."
        ),
    )
    max_new_calls_per_s: float = Field(
        default=10.0,
        ge=1,
        le=50,
        description=(
            "New INVITEs a worker lets through to its SIP stack per second (and at once);"
            " more get 503 with Retry-After. Each binds media sockets of a 64-slot table."
        ),
    )
    mode: SipMode = Field(
        default="direct", description="'direct' (take INVITEs) or 'register' (registrar)."
    )
    inbound_auth: InboundAuthSettings = Field(
        default_factory=InboundAuthSettings,
        description="Digest credentials new calls must carry; empty: none asked.",
    )
    allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(_DEFAULT_ALLOW),
        description=(
            "Source networks whose INVITEs are taken; others get 403. Add your trunk's or"
            " Plivo's signalling ranges. An empty list allows everyone."
        ),
    )

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _parse_allow(cls, value: object) -> object:
        return _parse_list(value)

    @field_validator("allow_networks")
    @classmethod
    def _validate_allow(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                _invalid(f"{item!r} is not an IP network (e.g. 10.0.0.0/8 or 192.0.2.7)")
        return out

    @field_validator("listen_host")
    @classmethod
    def _validate_listen_host(cls, value: str) -> str:
        try:
            return _check_host(value)
        except ValueError as exc:
            _invalid(str(exc))

    @field_validator("public_host", "media_host", "media_public_host", mode="before")
    @classmethod
    def _empty_public_host_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("public_host", "media_host", "media_public_host")
    @classmethod
    def _validate_public_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return _check_host(value)
        except ValueError as exc:
            _invalid(str(exc))

    @field_validator("user")
    @classmethod
    def _validate_user(cls, value: str) -> str:
        if not _SIP_USER.match(value):
            _invalid("must be non-empty and contain only letters, digits, '-', '.' or '_'")
        return value

    @field_validator("codecs", mode="before")
    @classmethod
    def _parse_codecs(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    _invalid("is neither a JSON list nor a comma-separated list of codecs")
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return [item.strip().upper() if isinstance(item, str) else item for item in value]
        return value

    @field_validator("codecs")
    @classmethod
    def _validate_codecs(cls, value: list[Codec]) -> list[Codec]:
        if not value:
            _invalid("at least one codec is required (PCMU, PCMA)")
        seen: set[str] = set()
        for codec in value:
            if codec in seen:
                _invalid(f"codec {codec} is listed twice")
            seen.add(codec)
        return value

    @field_validator("max_calls")
    @classmethod
    def _validate_max_calls(cls, value: int) -> int:
        if value > _MAX_CALLS_CAP:
            _invalid(
                f"must be at most {_MAX_CALLS_CAP}: the bundled pjsua2 supports at most "
                f"{_MAX_CALLS_CAP} calls per process"
            )
        return value

    @field_validator("rtp_port_range")
    @classmethod
    def _validate_rtp_port_range(cls, value: int, info: ValidationInfo) -> int:
        start = info.data.get("rtp_port_start")
        if isinstance(start, int) and start + value > 65535:
            _invalid(f"rtp_port_start ({start}) + rtp_port_range must be at most 65535")
        return value

    @field_validator("outbound_proxy", mode="before")
    @classmethod
    def _empty_proxy_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("outbound_proxy")
    @classmethod
    def _validate_outbound_proxy(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"sips?:[^\s<>]+", value.strip()):
            _invalid("must be a SIP URI such as sip:10.0.0.2:5060")
        return value.strip() if value is not None else None

    @field_validator("user_agent")
    @classmethod
    def _validate_user_agent(cls, value: str) -> str:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            _invalid("must be free of control characters")
        return value.strip()


class VadSettings(_Section):
    """Voice-activity detection and turn-taking (``[vad]`` table, ``SIPAGENT_VAD__*``)."""

    aggressiveness: int = Field(default=2, ge=0, le=3, description="webrtcvad mode 0..3.")
    min_speech_ms: int = Field(
        default=120, ge=20, le=2000, description="Voiced audio needed to start a caller turn."
    )
    end_of_turn_ms: int = Field(
        default=400, ge=100, le=5000, description="Trailing silence that ends a caller turn."
    )
    barge_in_min_speech_ms: int = Field(
        default=80, ge=20, le=2000, description="Voiced audio needed to interrupt the agent."
    )
    preroll_ms: int = Field(
        default=200, ge=0, le=1000, description="Audio kept from before speech was detected."
    )
    max_utterance_s: float = Field(
        default=20.0, ge=1, le=120, description="A caller turn is cut off after this long."
    )
    early_final_ms: int = Field(
        default=200,
        ge=0,
        le=5000,
        description=(
            "Trailing silence after which speech-to-text finalises what it has, so the"
            " transcript is ready when the turn ends (0 = only at the end of the turn)."
        ),
    )

    @field_validator(
        "min_speech_ms", "end_of_turn_ms", "barge_in_min_speech_ms", "preroll_ms", "early_final_ms"
    )
    @classmethod
    def _validate_multiple_of_10(cls, value: int) -> int:
        if value % 10:
            _invalid("must be a multiple of 10 ms (audio is processed in 20 ms frames)")
        return value

    @model_validator(mode="after")
    def _early_final_before_end(self) -> VadSettings:
        if self.early_final_ms >= self.end_of_turn_ms:
            raise ValueError(
                f"early_final_ms ({self.early_final_ms}) must be below"
                f" end_of_turn_ms ({self.end_of_turn_ms})"
            )
        return self


class ConversationSettings(_Section):
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
    max_vendor_silence_s: float = Field(
        default=2.5,
        ge=0.5,
        le=10,
        description=(
            "With a cloud provider, a reply with no audio this long after the caller stopped"
            " fails and the apology plays (the caller never waits longer in silence)."
        ),
    )


def _provider_name(kind: Literal["stt", "tts", "brain"]) -> AfterValidator:
    """A validator of a provider name of `kind` against the provider registry (the one
    list of names; imported when settings are validated, not when this module is)."""
    label = {"stt": "STT", "tts": "TTS", "brain": "brain"}[kind]

    def check(value: str | None) -> str | None:
        if value is None:
            return None
        from gateway.providers.registry import names

        name = value.strip().lower()
        allowed = names(kind)
        if name not in allowed:
            _invalid(f"unknown {label} provider; known: {', '.join(allowed)}")
        return name

    return AfterValidator(check)


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


SttName = Annotated[str, _provider_name("stt")]
TtsName = Annotated[str, _provider_name("tts")]
BrainName = Annotated[str, _provider_name("brain")]
# A fallback: empty means none.
SttFallback = Annotated[SttName | None, BeforeValidator(_blank_is_none)]
TtsFallback = Annotated[TtsName | None, BeforeValidator(_blank_is_none)]
BrainFallback = Annotated[BrainName | None, BeforeValidator(_blank_is_none)]


class ProviderSettings(_Section):
    """Which STT/TTS/brain implementations to use (``[providers]``, ``SIPAGENT_PROVIDERS__*``)."""

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
            _invalid("must be 0 (unpaced) or at least 1 (real time); slower would underrun")
        return value


def is_time_zone(name: str) -> bool:
    """True when `name` is an IANA time zone this machine knows (e.g. America/New_York)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_base_url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None or not value.strip():
        return None
    text = value.strip().rstrip("/")
    if not re.match(r"^(" + "|".join(schemes) + r")://[^/\s]+(/\S*)?$", text):
        _invalid(f"must be a {' or '.join(s + '://' for s in schemes)} URL")
    return text


class DeepgramSettings(_Section):
    """Deepgram live speech-to-text (``[deepgram]``; the key may also come from
    ``DEEPGRAM_API_KEY``)."""

    api_key: str = Field(default="", repr=False, description="Deepgram API key.")
    base_url: str | None = Field(
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

    @field_validator("base_url")
    @classmethod
    def _validate_base_url(cls, value: str | None) -> str | None:
        return _check_base_url(value, ("ws", "wss", "http", "https"))


class HttpToolSettings(_Section):
    """A tool the LLM may call: the gateway POSTs its JSON arguments to ``url``."""

    name: str = Field(description="Tool name the model sees ([A-Za-z0-9_-], ≤ 64).")
    description: str = Field(description="What the tool does, for the model.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON schema of the arguments.",
    )
    url: str = Field(description="http(s) URL the arguments are POSTed to.")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Request timeout.")

    @field_validator("name")
    @classmethod
    def _validate_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]{1,64}$", value):
            _invalid("must be 1-64 letters, digits, '_' or '-'")
        if value in ("end_call", "transfer_call"):
            _invalid("is a built-in tool name")
        return value

    @field_validator("url")
    @classmethod
    def _validate_url(cls, value: str) -> str:
        checked = _check_base_url(value, ("http", "https"))
        if checked is None:
            _invalid("is required")
        return checked


class OpenAiSettings(_Section):
    """OpenAI (or any OpenAI-compatible server) as the brain (``[openai]``; the key may
    also come from ``OPENAI_API_KEY``)."""

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


class ElevenLabsSettings(_Section):
    """ElevenLabs streaming text-to-speech (``[elevenlabs]``; the key may also come from
    ``ELEVENLABS_API_KEY``)."""

    api_key: str = Field(default="", repr=False, description="API key.")
    base_url: str | None = Field(default=None, description="API base URL; None: ElevenLabs.")
    voice_id: str = Field(default="21m00Tcm4TlvDq8ikWAM", description="Voice id.")
    model_id: str = Field(default="eleven_flash_v2_5", description="Model (Flash: low latency).")
    stability: float | None = Field(default=None, ge=0, le=1)
    similarity_boost: float | None = Field(default=None, ge=0, le=1)
    style: float | None = Field(default=None, ge=0, le=1)
    speed: float | None = Field(default=None, ge=0.7, le=1.2)

    @field_validator("base_url")
    @classmethod
    def _validate_base_url(cls, value: str | None) -> str | None:
        return _check_base_url(value, ("http", "https"))


class WebhookBrainSettings(_Section):
    """The customer's request/response bot as the brain (``[webhook]``,
    ``providers.brain = "webhook"``): each caller turn is a request whose answer is what
    the agent says (or ``pending``, pushed later)."""

    start_url: str | None = Field(
        default=None, description="Call-start endpoint (its reply is the greeting)."
    )
    turn_url: str | None = Field(
        default=None, description="Endpoint that gets each caller turn and returns the reply."
    )
    tts_url: str | None = Field(
        default=None, description="HTTP TTS for text replies; None: the configured TTS."
    )
    greeting: str = Field(default="Hello.", description="Greeting when start_url is unset.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers sent to the bot, e.g. Authorization."
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Per-request timeout.")
    pending_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Wait this long for an asynchronous reply."
    )
    push_token: str = Field(
        default="",
        repr=False,
        description=(
            "Bearer token the bot sends when it pushes a reply to the app's"
            " /bot/calls/<call_id>/reply; empty: pushed replies are refused."
        ),
    )
    reply_url: str | None = Field(
        default=None,
        description=(
            "URL sent to the bot for pushing replies, '{call_id}' replaced; None: the app's"
            " own /bot/calls/{call_id}/reply under app.public_url (or its listen address)."
        ),
    )

    @field_validator("reply_url")
    @classmethod
    def _validate_reply_url(cls, value: str | None) -> str | None:
        value = _check_base_url(value, ("http", "https"))
        if value is not None and "{call_id}" not in value:
            _invalid("must contain '{call_id}' where the call's id goes")
        return value

    @field_validator("start_url", "turn_url", "tts_url")
    @classmethod
    def _validate_urls(cls, value: str | None) -> str | None:
        return _check_base_url(value, ("http", "https"))


_OLD_EXTERNAL_KEYS: Final = {
    "dcs_url": "webhook.start_url",
    "dcs_response_url": "webhook.turn_url",
    "reply_url": "webhook.reply_url",
}
_OLD_EXTERNAL_HINT: Final = (
    "the request/response bot is now providers.brain = 'webhook' with a [webhook] section;"
    " [external] (providers.brain = 'external') is the OCS integration, where sipagent is"
    " the DCS: set external.ocs_url (or OCS_URL) and point OCS's DCS_URL and"
    " DCS_RESPONSE_URL at the app's /dcs/calls and /dcs/response"
)


class ExternalBrainSettings(_Section):
    """An Ori-style OCS drives the conversation, sipagent is its DCS (``[external]``,
    ``providers.brain = "external"``; ``OCS_URL`` and ``AI_TTS_URL`` are accepted as
    environment variables too).

    The caller's words go to ``ocs_url``; OCS delivers its replies to the app's
    ``/dcs/response`` (its ``DCS_RESPONSE_URL``) and starts calls through ``/dcs/calls``
    (its ``DCS_URL``).
    """

    ocs_url: str | None = Field(
        default=None, description="Where call events and the caller's words are POSTed."
    )
    ai_tts_url: str | None = Field(
        default=None,
        description="HTTP TTS for replies with text but no audio_url; None: the gateway's TTS.",
    )
    greeting: str = Field(
        default="", description="Said at call start while OCS's welcome is awaited; '': none."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers sent to OCS, e.g. Authorization."
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Per-request timeout.")
    pending_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Wait this long for OCS's reply to a turn before apologising.",
    )
    push_token: str = Field(
        default="",
        repr=False,
        description=(
            "Bearer token OCS sends to the app's /dcs/response; empty: OCS's replies are refused."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        """The request/response bot's old keys get a message saying what to use now."""
        if isinstance(data, dict):
            old = [key for key in _OLD_EXTERNAL_KEYS if key in data]
            if old:
                moved = ", ".join(f"{key} -> {_OLD_EXTERNAL_KEYS[key]}" for key in old)
                _invalid(
                    f"{', '.join(old)}: no longer here ({moved}); {_OLD_EXTERNAL_HINT}",
                    show_input=False,
                )
        return data

    @field_validator("ocs_url", "ai_tts_url")
    @classmethod
    def _validate_urls(cls, value: str | None) -> str | None:
        return _check_base_url(value, ("http", "https"))

    def url(self, name: str) -> str | None:
        """``name`` ("ocs_url" or "ai_tts_url") from the settings, else its upper-case
        environment variable."""
        value: str | None = getattr(self, name)
        return value or os.environ.get(name.upper()) or None


class SipAccount(_Section):
    """Credentials of one registered endpoint (one per worker in ``register`` mode)."""

    username: str = Field(description="Endpoint user name, e.g. Plivo's 'agent12345678'.")
    password: str = Field(default="", description="Digest password.", repr=False)
    auth_user: str | None = Field(
        default=None, description="Digest user name when it differs from ``username``."
    )

    @field_validator("username")
    @classmethod
    def _validate_username(cls, value: str) -> str:
        if not _SIP_USER.match(value):
            _invalid("must be non-empty and contain only letters, digits, '-', '.' or '_'")
        return value


class RegistrationSettings(_Section):
    """Registration with a registrar (``[registration]``, ``SIPAGENT_REGISTRATION__*``)."""

    registrar: str = Field(
        default="phone.plivo.com",
        description="Registrar host[:port]; Dial XML rings sip:<username>@<domain>.",
    )
    domain: str | None = Field(
        default=None, description="Domain of the registered URIs; None uses the registrar host."
    )
    expires_s: int = Field(default=300, ge=30, le=86400, description="Requested expiry.")
    first_retry_s: float = Field(
        default=5.0, gt=0, le=60, description="Retry this soon after a failed registration."
    )
    max_retry_s: float = Field(
        default=60.0, gt=0, le=3600, description="Backoff between retries is capped here."
    )
    accounts: list[SipAccount] = Field(
        default_factory=list, description="One account per worker, in worker order."
    )

    @field_validator("registrar")
    @classmethod
    def _validate_registrar(cls, value: str) -> str:
        host, _, port = value.strip().removeprefix("sip:").rpartition(":")
        if not host or "]" in port:
            host, port = value.strip().removeprefix("sip:"), ""
        try:
            _check_host(host)
        except ValueError as exc:
            _invalid(f"host {exc}")
        if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
            _invalid("port must be between 1 and 65535")
        return value.strip().removeprefix("sip:")

    def host(self) -> str:
        """The registrar's host without the port (the default domain)."""
        text = self.registrar
        if text.startswith("["):
            return text[1 : text.index("]")]
        return text.rsplit(":", 1)[0] if text.count(":") == 1 else text

    @property
    def uri_domain(self) -> str:
        """Domain of the registered address-of-record."""
        return self.domain or self.host()


class PoolSettings(_Section):
    """Worker processes of ``sipagent serve`` (``[pool]``, ``SIPAGENT_POOL__*``).

    Worker ``i`` listens on ``sip.listen_port + i`` and takes RTP ports from
    ``sip.rtp_port_start + i * rtp_ports_per_worker``.
    """

    workers: int = Field(
        default=0,
        ge=0,
        le=250,
        description="Worker processes (4 calls each); 0 sizes the pool to the machine.",
    )
    rtp_ports_per_worker: int = Field(
        default=40, ge=8, le=2000, description="RTP/RTCP ports given to each worker."
    )
    drain_timeout_s: float = Field(
        default=60.0, ge=0, le=86400, description="On SIGTERM, let calls finish this long."
    )
    spare: bool = Field(
        default=True,
        description="Keep one started spare worker so a dead worker is replaced at once.",
    )
    reserve_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="A slot routed by the answer_url app is held this long for the INVITE.",
    )


class EdgeSettings(_Section):
    """The Kamailio edge in front of the pool (``[edge]``, ``SIPAGENT_EDGE__*``).

    With the edge on, the pool has one public SIP address (``listen_host:listen_port``, UDP
    and TCP, and TLS on ``tls_port`` when a certificate is given); the workers listen on
    127.0.0.1 from ``worker_port`` and take calls from the edge only.
    """

    enabled: bool = Field(default=False, description="Run Kamailio in front of the workers.")
    listen_host: str = Field(
        default=_DEFAULT_LISTEN_HOST, description="The edge's SIP address (UDP, TCP, TLS)."
    )
    listen_port: int = Field(default=5060, ge=1, le=65535, description="UDP and TCP port.")
    public_host: str | None = Field(
        default=None, description="Address the edge advertises (behind NAT); None: the bound one."
    )
    tls_port: int = Field(default=5061, ge=1, le=65535, description="TLS port.")
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain) for TLS; TLS is off without it."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    worker_port: int = Field(
        default=5070,
        ge=1,
        le=65535,
        description="With the edge on, worker i listens on 127.0.0.1:worker_port+i.",
    )
    workers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            'More SIP workers on other hosts ("host:port"), each a `sipagent serve` without'
            " an edge that takes calls only from the edge's address."
        ),
    )
    max_message_bytes: int = Field(
        default=3500,
        ge=1000,
        le=60000,
        description="Longer SIP messages are dropped (a worker reads at most 4000 bytes).",
    )
    requests_per_s_per_source: int = Field(
        default=50, ge=1, le=10000, description="Above this a source's requests are dropped."
    )
    new_calls_per_s: int = Field(
        default=40, ge=1, le=10000, description="Pool-wide new INVITEs a second; more get 503."
    )
    kamailio: str = Field(
        default="", description="Path of the kamailio binary; empty: found on PATH or /usr/sbin."
    )

    @field_validator("listen_host")
    @classmethod
    def _validate_listen_host(cls, value: str) -> str:
        try:
            return _check_host(value)
        except ValueError as exc:
            _invalid(str(exc))

    @field_validator("public_host", mode="before")
    @classmethod
    def _empty_public_host_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("workers", mode="before")
    @classmethod
    def _parse_workers(cls, value: object) -> object:
        return _parse_list(value)

    @field_validator("workers")
    @classmethod
    def _validate_workers(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            host, sep, port = item.strip().rpartition(":")
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                _invalid(f"{item!r} is not IPV4-ADDRESS:PORT (e.g. 10.0.0.12:5060)")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                _invalid(f"{item!r} is not IPV4-ADDRESS:PORT (e.g. 10.0.0.12:5060)")
            out.append(f"{host}:{int(port)}")
        return out

    @model_validator(mode="after")
    def _tls_pair(self) -> EdgeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            _invalid("tls_cert and tls_key go together (PEM files)", show_input=False)
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.expanduser().is_file():
                _invalid(f"file not found: {path}", show_input=False)
        return self


class AppSettings(_Section):
    """The answer_url app (``[app]``, ``SIPAGENT_APP__*``)."""

    enabled: bool = Field(default=True, description="Serve the answer_url app.")
    listen_host: str = Field(default=_DEFAULT_LISTEN_HOST, description="HTTP bind address.")
    listen_port: int = Field(default=8080, ge=0, le=65535, description="HTTP port (0: any).")
    public_url: str | None = Field(
        default=None,
        description=(
            "Base URL Plivo calls (e.g. https://bot.example.com behind a TLS proxy); it is the"
            " URL signatures are computed over. None uses the request's own URL."
        ),
    )
    auth_token: str = Field(
        default="", repr=False, description="Plivo (sub)account auth token for signatures."
    )
    main_auth_token: str = Field(
        default="",
        repr=False,
        description=(
            "The main account's auth token, when auth_token is a subaccount's: requests are"
            " also taken with a valid X-Plivo-Signature-Ma-V3 (signed with it)."
        ),
    )
    verify_signatures: bool = Field(
        default=True, description="Reject requests without a valid X-Plivo-Signature-V3."
    )
    nonce_ttl_s: float = Field(
        default=86400.0,
        ge=1,
        le=7 * 86400,
        description=(
            "A nonce seen this recently is a replay (kept in the records store: across"
            " restarts and every gateway sharing it)."
        ),
    )
    dial_timeout_s: int = Field(
        default=20, ge=5, le=120, description="Dial timeout: ring the target this long."
    )
    caller_id: str | None = Field(
        default=None, description="callerId on Dial; None passes the caller's number on."
    )
    threads: int = Field(default=8, ge=1, le=128, description="WSGI server threads.")
    max_connections: int = Field(
        default=1000,
        ge=10,
        le=20000,
        description="Open HTTP connections taken at once (idle ones hold no thread).",
    )
    idle_timeout_s: int = Field(
        default=60, ge=5, le=3600, description="An HTTP connection silent this long is closed."
    )

    @field_validator("listen_host")
    @classmethod
    def _validate_app_host(cls, value: str) -> str:
        try:
            return _check_host(value)
        except ValueError as exc:
            _invalid(str(exc))

    @field_validator("public_url")
    @classmethod
    def _validate_public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        text = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", text):
            _invalid("must be an http:// or https:// URL")
        return text


_TRANSFER_DOMAIN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class TransferSettings(_Section):
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
    plivo_api_url: str | None = Field(
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
            _invalid("must be a host[:port], e.g. acme.zt.plivo.com")
        return text

    @field_validator("plivo_api_url")
    @classmethod
    def _validate_api_url(cls, value: str | None) -> str | None:
        return _check_base_url(value, ("http", "https"))

    def auth_id(self) -> str:
        """The Plivo auth ID: the setting, else ``PLIVO_AUTH_ID``, else ""."""
        return self.plivo_auth_id or os.environ.get("PLIVO_AUTH_ID", "")


_WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class BusinessHours(_Section):
    """Opening hours of a route; outside them the route's ``after_hours_*`` apply."""

    timezone: str = Field(default="UTC", description="IANA time zone, e.g. Europe/London.")
    days: list[str] = Field(
        default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"], description="Open days."
    )
    open: str = Field(default="09:00", description="Opening time, HH:MM.")
    close: str = Field(default="17:00", description="Closing time, HH:MM (after open).")

    @field_validator("timezone")
    @classmethod
    def _validate_tz(cls, value: str) -> str:
        if not is_time_zone(value):
            _invalid("unknown time zone")
        return value

    @field_validator("days", mode="before")
    @classmethod
    def _parse_days(cls, value: object) -> object:
        value = _parse_list(value)
        if isinstance(value, list):
            return [v.strip().lower()[:3] if isinstance(v, str) else v for v in value]
        return value

    @field_validator("days")
    @classmethod
    def _validate_days(cls, value: list[str]) -> list[str]:
        bad = [d for d in value if d not in _WEEKDAYS]
        if bad or not value:
            _invalid(f"days must be among {', '.join(_WEEKDAYS)}")
        return value

    @field_validator("open", "close")
    @classmethod
    def _validate_time(cls, value: str) -> str:
        if not _HHMM.match(value):
            _invalid("must be HH:MM (24-hour clock)")
        return value

    @model_validator(mode="after")
    def _open_before_close(self) -> BusinessHours:
        if self.open >= self.close:
            raise ValueError(f"open ({self.open}) must be before close ({self.close})")
        return self


_E164ISH = re.compile(r"^\+?[0-9]{3,15}$")


def _check_target(value: str, *, allow_hangup: bool) -> str:
    text = value.strip()
    if text == "agent" or (allow_hangup and text == "hangup"):
        return text
    if text.startswith(("sip:", "sips:")) and "@" in text:
        return text
    if _E164ISH.match(text):
        return text
    extra = ", 'hangup'" if allow_hangup else ""
    _invalid(f"must be 'agent'{extra}, a sip: URI (user@host) or a phone number")


class Route(_Section):
    """Where a called number's calls go."""

    target: str = Field(
        default="agent", description="'agent' (the pool), a sip: URI, or a phone number."
    )
    hours: BusinessHours | None = Field(default=None, description="Open hours; None: always.")
    after_hours_target: str = Field(
        default="hangup", description="Outside hours: 'hangup', 'agent', a sip: URI or number."
    )
    after_hours_say: str | None = Field(
        default="We are closed right now. Please call again during our opening hours.",
        description="Spoken outside hours before the after-hours target.",
    )

    @field_validator("target")
    @classmethod
    def _validate_target(cls, value: str) -> str:
        return _check_target(value, allow_hangup=False)

    @field_validator("after_hours_target")
    @classmethod
    def _validate_after_target(cls, value: str) -> str:
        return _check_target(value, allow_hangup=True)


class RoutingSettings(_Section):
    """Per-number routing for the answer_url app (``[routing]``)."""

    default: Route = Field(default_factory=Route, description="Route for unlisted numbers.")
    numbers: dict[str, Route] = Field(
        default_factory=dict, description="Routes keyed by called number (digits, '+' optional)."
    )
    anonymous: Route | None = Field(
        default=None,
        description=(
            "Route for callers who withhold their number (an empty or 'anonymous' From);"
            " None: the called number's route, as for everyone else."
        ),
    )
    fallback_say: str = Field(
        default="Sorry, all of our agents are busy right now. Please try again later.",
        description="Spoken when no worker can take the call.",
    )
    fallback_target: str = Field(
        default="hangup", description="After the apology: 'hangup', a sip: URI or a number."
    )

    @field_validator("numbers")
    @classmethod
    def _validate_numbers(cls, value: dict[str, Route]) -> dict[str, Route]:
        out: dict[str, Route] = {}
        for key, route in value.items():
            digits = key.strip().lstrip("+")
            if not digits.isdigit():
                _invalid(f"routing number {key!r} must be digits with an optional '+'")
            out[digits] = route
        return out

    @field_validator("fallback_target")
    @classmethod
    def _validate_fallback(cls, value: str) -> str:
        text = _check_target(value, allow_hangup=True)
        if text == "agent":
            _invalid("the fallback cannot be the agent pool (it is what failed)")
        return text


class RecordsSettings(_Section):
    """Call records (``[records]``, ``SIPAGENT_RECORDS__*``)."""

    url: str = Field(
        default="sqlite:///sipagent-records.db",
        description=(
            "Call-record store: sqlite:///relative/path, sqlite:////absolute/path or"
            " postgresql://user:password@host:port/dbname."
        ),
    )
    redact_pii: bool = Field(
        default=False,
        description=(
            "Replace card and phone numbers, other long digit runs and e-mail addresses in"
            " the caller's and the agent's words before they are stored or logged."
        ),
    )
    recording_dir: Path | None = Field(
        default=None,
        description=(
            "Record every call as a stereo WAV (left: caller, right: agent) in this"
            " directory, named by CallUUID (or SIP Call-ID); None: no recordings."
        ),
    )
    gateway_id: str = Field(
        default="",
        max_length=200,
        description=(
            "This gateway's name in the call records, unique among the gateways sharing the"
            " store; empty: serve uses <hostname>:<sip listen port>."
        ),
    )
    lease_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description=(
            "Liveness lease in the call records, renewed every lease_s/3: the open calls of a"
            " gateway not seen for this long (by the database's clock) are closed as"
            ' "gateway restarted".'
        ),
    )

    @field_validator("gateway_id")
    @classmethod
    def _validate_gateway_id(cls, value: str) -> str:
        value = value.strip()
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            _invalid("must be free of control characters")
        return value

    @field_validator("recording_dir", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("url")
    @classmethod
    def _validate_url(cls, value: str) -> str:
        scheme = value.partition("://")[0].lower()
        if scheme in ("postgresql", "postgres"):
            if len(value) <= len(scheme) + 3:
                _invalid("postgresql:// URL without a server or database", show_input=False)
            return value
        if not value.startswith("sqlite:///") or value == "sqlite:///":
            # The input is not echoed: it may be a URL with a password.
            _invalid(
                "must be sqlite:///PATH or postgresql://user:password@host:port/dbname",
                show_input=False,
            )
        return value


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!%*+`'~._-]+$")
# Headers pjsip writes itself; configuring them would corrupt the INVITE.
_RESERVED_HEADERS: Final = frozenset(
    {
        "via",
        "from",
        "to",
        "call-id",
        "cseq",
        "contact",
        "content-length",
        "content-type",
        "max-forwards",
        "route",
        "record-route",
    }
)


def check_sip_headers(value: dict[str, str]) -> dict[str, str]:
    """Validate extra INVITE headers (name: token characters, not one pjsip writes; value:
    no control characters); raises ValueError naming the bad header."""
    for name, text in value.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not a SIP header name")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"{name!r} is written by the SIP stack and cannot be set")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
            raise ValueError(f"the value of {name!r} holds control characters")
    return value


class OutboundSettings(_Section):
    """Outbound calls (``[outbound]``, ``SIPAGENT_OUTBOUND__*``): ``sipagent dial`` and the
    app's ``POST /calls``."""

    api_key: str = Field(
        default="",
        repr=False,
        description="Bearer key for POST /calls and `sipagent dial`; empty: outbound is off.",
    )
    app_url: str | None = Field(
        default=None,
        description="URL of a running serve's app for `sipagent dial`; None: app.listen_*.",
    )
    dnc_file: Path | None = Field(
        default=None, description="Do-not-call list: one number per line, '#' comments."
    )
    timezone: str = Field(
        default="UTC", description="Callee time zone when neither the request nor zones set it."
    )
    zones: dict[str, str] = Field(
        default_factory=dict,
        description="Number prefix -> IANA zone e.g. '+1212' = 'America/New_York'.",
    )
    window_start: str = Field(
        default="09:00", description="Calls allowed from HH:MM (callee time)."
    )
    window_end: str = Field(default="20:00", description="... until HH:MM (callee time).")
    cps: float = Field(default=2.0, gt=0, le=1000, description="Calls per second, pool-wide.")
    burst: int = Field(default=1, ge=1, le=1000, description="Calls that may start at once.")
    max_queue: int = Field(
        default=4,
        ge=0,
        le=1000,
        description=(
            "Requests waiting for a CPS slot (each holds an app thread; below app.threads);"
            " beyond: 429."
        ),
    )
    ring_timeout_s: float = Field(
        default=30.0, gt=0, le=300, description="Unanswered this long: no-answer (SIP)."
    )
    trunk: str | None = Field(
        default=None,
        description="host[:port] for numbers via SIP: sip:<number>@<trunk>; None: sip: URIs only.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers added to every outbound INVITE."
    )
    caller_id: str | None = Field(
        default=None, description="Default 'from' number (Plivo calls need one)."
    )
    plivo_auth_id: str = Field(default="", description="Plivo auth ID for via=plivo.")
    plivo_auth_token: str = Field(
        default="",
        repr=False,
        description="Plivo auth token for via=plivo (default app.auth_token).",
    )
    plivo_api_url: str | None = Field(
        default=None,
        description="Send Plivo REST calls here instead of https://api.plivo.com (tests, proxies).",
    )

    @field_validator("timezone")
    @classmethod
    def _validate_tz(cls, value: str) -> str:
        if not is_time_zone(value):
            _invalid("unknown time zone")
        return value

    @field_validator("zones")
    @classmethod
    def _validate_zones(cls, value: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for prefix, zone in value.items():
            digits = prefix.strip().lstrip("+")
            if not digits.isdigit():
                _invalid(f"zone prefix {prefix!r} must be digits with an optional '+'")
            if not is_time_zone(zone):
                _invalid(f"unknown time zone {zone!r} for prefix {prefix!r}")
            out[digits] = zone
        return out

    @field_validator("window_start", "window_end")
    @classmethod
    def _validate_time(cls, value: str) -> str:
        if not _HHMM.match(value):
            _invalid("must be HH:MM (24-hour clock)")
        return value

    @field_validator("headers")
    @classmethod
    def _validate_headers(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return check_sip_headers(value)
        except ValueError as exc:
            _invalid(str(exc))

    @field_validator("app_url", "plivo_api_url")
    @classmethod
    def _validate_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        text = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", text):
            _invalid("must be an http:// or https:// URL")
        return text

    @field_validator("dnc_file")
    @classmethod
    def _validate_dnc(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = value.expanduser().absolute()
        if not path.is_file() or not os.access(path, os.R_OK):
            _invalid(f"not a readable file: {path}", show_input=False)
        return path

    @model_validator(mode="after")
    def _window(self) -> OutboundSettings:
        if self.window_start >= self.window_end:
            raise ValueError(
                f"window_start ({self.window_start}) must be before window_end ({self.window_end})"
            )
        return self


# The TOML file for the Settings instance being built; set only inside load_settings().
_toml_file: ContextVar[Path | None] = ContextVar("sipagent_toml_file", default=None)


class _RelativePlaybookTomlSource(TomlConfigSettingsSource):
    """TOML source that resolves ``playbook`` against the file's directory and reports
    syntax errors as :class:`ConfigError`."""

    # Typed as the newest pydantic-settings declares it (older ones take only Path).
    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        file_path = Path(str(file_path))
        try:
            data = super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file_path}: invalid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {file_path}: invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {file_path}: {exc.strerror or exc}") from None
        playbook = data.get("playbook")
        if isinstance(playbook, str) and playbook:
            path = Path(playbook).expanduser()
            if not path.is_absolute():
                data["playbook"] = str(file_path.parent / path)
        return data


class Settings(BaseSettings):
    """Complete gateway configuration.  Build it with :func:`load_settings`.

    ``playbook`` is always a :class:`~pathlib.Path` after validation: when unset it is
    :func:`bundled_playbook_path`, otherwise an existing readable file.
    """

    model_config = SettingsConfigDict(
        env_prefix="SIPAGENT_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="forbid",
        # In .env, flag unknown SIPAGENT_* keys but ignore other projects' variables.
        dotenv_filtering="match_prefix",
        allow_inf_nan=False,
    )

    sip: SipSettings = Field(default_factory=SipSettings)
    vad: VadSettings = Field(default_factory=VadSettings)
    conversation: ConversationSettings = Field(default_factory=ConversationSettings)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    app: AppSettings = Field(default_factory=AppSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    records: RecordsSettings = Field(default_factory=RecordsSettings)
    deepgram: DeepgramSettings = Field(default_factory=DeepgramSettings)
    openai: OpenAiSettings = Field(default_factory=OpenAiSettings)
    elevenlabs: ElevenLabsSettings = Field(default_factory=ElevenLabsSettings)
    external: ExternalBrainSettings = Field(default_factory=ExternalBrainSettings)
    webhook: WebhookBrainSettings = Field(default_factory=WebhookBrainSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    playbook: Path = Field(
        default_factory=bundled_playbook_path,
        description="Playbook TOML file; unset means the bundled demo playbook.",
    )
    log_level: LogLevel = "INFO"

    @field_validator("playbook", mode="before")
    @classmethod
    def _default_playbook(cls, value: object) -> object:
        return bundled_playbook_path() if value is None else value

    @field_validator("playbook")
    @classmethod
    def _validate_playbook(cls, value: Path) -> Path:
        path = value.expanduser().absolute()
        if not path.exists():
            _invalid(f"file not found: {path}", show_input=False)
        if not path.is_file():
            _invalid(f"not a regular file: {path}", show_input=False)
        if not os.access(path, os.R_OK):
            _invalid(f"file not readable: {path}", show_input=False)
        return path

    @model_validator(mode="after")
    def _vendor_keys(self) -> Settings:
        """A cloud provider in use needs its key (from the settings or the vendor's usual
        environment variable)."""
        from gateway.providers.registry import missing_keys

        missing = missing_keys(self)
        missing += self._bot_problems()
        missing += self._transfer_problems()
        if self.transfer.method == "plivo":
            if not (self.transfer.auth_id() or self.outbound.plivo_auth_id):
                missing.append(
                    "transfer.plivo_auth_id: required when transfer.method is 'plivo'"
                    " (or set PLIVO_AUTH_ID)"
                )
            if not (self.app.auth_token or self.outbound.plivo_auth_token):
                missing.append("app.auth_token: required when transfer.method is 'plivo'")
            if not self.app.public_url:
                missing.append(
                    "app.public_url: required when transfer.method is 'plivo'"
                    " (Plivo fetches the transfer XML from it)"
                )
        if missing:
            _invalid("; ".join(missing), show_input=False)
        return self

    def _bot_problems(self) -> list[str]:
        """The bot brains' required URLs, and the old DCS_* variables of the webhook."""
        p = self.providers
        brains = (p.brain, p.brain_fallback)
        problems: list[str] = []
        if "external" in brains and not self.external.url("ocs_url"):
            problems.append(
                "external.ocs_url: required when the brain is 'external' (or set OCS_URL)"
            )
        if "webhook" in brains and not self.webhook.turn_url:
            problems.append("webhook.turn_url: required when the brain is 'webhook'")
        if "external" in brains or "webhook" in brains:
            problems += [
                f"{name} (environment): no longer read; {_OLD_EXTERNAL_HINT}"
                f" (what it meant is now {_OLD_EXTERNAL_KEYS[name.lower()]})"
                for name in ("DCS_URL", "DCS_RESPONSE_URL")
                if os.environ.get(name)
            ]
        if "webhook" in brains and os.environ.get("AI_TTS_URL") and not self.webhook.tts_url:
            problems.append(
                "AI_TTS_URL (environment): the webhook brain does not read it; set"
                " webhook.tts_url (or unset AI_TTS_URL to speak text with the gateway's TTS)"
            )
        return problems

    def plivo_transfer_ready(self) -> bool:
        """Whether Plivo's REST transfer can be used: credentials and a public URL."""
        return bool(
            (self.transfer.auth_id() or self.outbound.plivo_auth_id)
            and (self.app.auth_token or self.outbound.plivo_auth_token)
            and self.app.public_url
        )

    def _transfer_problems(self) -> list[str]:
        """Transfers that cannot work, found before any call: Plivo accepts a REFER only
        on Zentrunk, with Refer-To on the trunk's ``<name>.zt.plivo.com`` domain
        (https://plivo.com/docs/sip-trunking/concepts/sip-refer); a Dial to a registered
        endpoint is no trunk."""
        t = self.transfer
        problems: list[str] = []
        if t.method == "refer" and self.sip.mode == "register":
            problems.append(
                "transfer.method: 'refer' cannot transfer calls in register mode (they come"
                " from Plivo, which takes REFER only on Zentrunk trunks); use 'auto' or"
                " 'plivo' (Plivo's REST transfer)"
            )
        if (
            t.method == "auto"
            and self.sip.mode == "register"
            and t.target
            and not self.plivo_transfer_ready()
        ):
            problems.append(
                "transfer.plivo_auth_id, app.auth_token and app.public_url: required to"
                " transfer calls in register mode (every call is a Plivo call, moved with"
                " Plivo's REST API)"
            )
        if t.method != "plivo":
            hosts = [("transfer.domain", t.domain or "")]
            if t.target and t.target.lower().startswith(("sip:", "sips:")):
                host = t.target.split(":", 1)[1].rsplit("@", 1)[-1].split(";", 1)[0]
                hosts.append(("transfer.target", host))
            for name, host in hosts:
                bare = host.split(":", 1)[0].lower().rstrip(".")
                if bare.endswith("plivo.com") and not bare.endswith(".zt.plivo.com"):
                    problems.append(
                        f"{name}: Plivo accepts a REFER only to your Zentrunk domain"
                        f" (<name>.zt.plivo.com), not {host!r}; for calls from Plivo's Dial"
                        " use Plivo's REST transfer (transfer.method 'auto' with its"
                        " credentials, or 'plivo')"
                    )
        return problems

    @model_validator(mode="after")
    def _outbound_queue(self) -> Settings:
        """Requests waiting for a CPS slot each hold an app thread; Plivo's callbacks must
        always find a free one."""
        o = self.outbound
        if o.api_key and o.max_queue >= self.app.threads:
            _invalid(
                f"outbound.max_queue: {o.max_queue} waiting calls would hold every one of"
                f" app.threads ({self.app.threads}); keep it below app.threads",
                show_input=False,
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order sources: init kwargs > environment > .env > TOML config file > defaults."""
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            _RelativePlaybookTomlSource(settings_cls, toml_file=_toml_file.get()),
        )


def vendor_key(settings: Settings, vendor: str) -> str:
    """The API key of ``vendor`` ("deepgram", "openai", "elevenlabs"): the setting, else
    the vendor's usual environment variable, else ""."""
    section = getattr(settings, vendor)
    key = str(section.api_key)
    return key or os.environ.get(f"{vendor.upper()}_API_KEY", "")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "<settings>"


def _format_value(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value) if isinstance(value, dict | list | tuple) else str(value)


def _format_error(error: ErrorDetails) -> str:
    where = _format_loc(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown setting"
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    if kind == _ERR_VERBATIM:
        # Whole-settings checks name their fields in the message themselves.
        return message if where == "<settings>" else f"{where}: {message}"
    return f"{where}: {message} (got {_format_value(error['input'])})"


def _config_error_from(exc: ValidationError) -> ConfigError:
    problems = tuple(_format_error(error) for error in exc.errors(include_url=False))
    return ConfigError("\n".join(problems), problems)


_SOURCE_NAMES: Final = {
    "EnvSettingsSource": "environment",
    "DotEnvSettingsSource": ".env file",
}


def _config_error_from_settings_error(exc: SettingsError) -> ConfigError:
    """Reword pydantic-settings' source errors (e.g. malformed JSON in an env variable)."""
    text = str(exc)
    cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
    match = re.search(r'field "([^"]+)" from source "([^"]+)"', text)
    if match is None:
        return ConfigError(f"{text}{cause}")
    field, source = match.groups()
    return ConfigError(
        f"{field}: cannot parse value from {_SOURCE_NAMES.get(source, source)}{cause}"
    )


def load_settings(
    config_file: Path | str | None = None,
    *,
    env_file: Path | str | None = ".env",
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load and validate the gateway settings.

    Args:
        config_file: Optional TOML file; it must exist.  A relative ``playbook`` in it is
            resolved against the file's directory.
        env_file: ``.env`` file to read (skipped silently if absent); ``None`` disables it.
        overrides: Nested values that beat every other source, e.g.
            ``{"sip": {"listen_host": "0.0.0.0", "listen_port": 5070}}``.

    Priority, highest first: ``overrides``, environment variables (``SIPAGENT_`` prefix,
    ``__`` nesting, e.g. ``SIPAGENT_SIP__LISTEN_PORT``), ``env_file``, ``config_file``,
    defaults.  Partial nested values from different sources are merged.

    Raises:
        ConfigError: on any missing file, syntax error or invalid/unknown setting; the
            message names every offending setting by its dotted path.
    """
    toml_path: Path | None = None
    if config_file is not None:
        toml_path = Path(config_file).expanduser()
        if not toml_path.exists():
            raise ConfigError(f"config file not found: {toml_path}")
        if not toml_path.is_file():
            raise ConfigError(f"config file {toml_path}: not a regular file")
    token = _toml_file.set(toml_path)
    try:
        # _env_file is BaseSettings' per-instance .env choice (not a field, hence the dict).
        kwargs: dict[str, Any] = {**(overrides or {}), "_env_file": env_file}
        return Settings(**kwargs)
    except ValidationError as exc:
        raise _config_error_from(exc) from None
    except SettingsError as exc:
        raise _config_error_from_settings_error(exc) from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc}") from None
    finally:
        _toml_file.reset(token)


def parse_listen(value: str) -> tuple[str, int]:
    """Parse a ``--listen`` value: ``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT``.

    The host defaults to ``127.0.0.1``; IPv6 hosts are returned without brackets.

    Raises:
        ConfigError: ``"--listen: ..."`` describing what is wrong.
    """
    text = value.strip()
    expected = "expected HOST:PORT, [IPv6]:PORT, :PORT or PORT"
    if not text:
        raise ConfigError(f"--listen: empty value ({expected})")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ConfigError(f"--listen: missing ']' in {value!r}")
        host, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":"):
            raise ConfigError(f"--listen: missing ':PORT' after ']' in {value!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"--listen: {host!r} is not an IPv6 address") from None
    elif text.isdigit():
        host, port_text = "", text
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif text.count(":") > 1:
        raise ConfigError(
            f"--listen: write IPv6 addresses in brackets, e.g. [::1]:5060 ({value!r})"
        )
    else:
        raise ConfigError(f"--listen: missing port in {value!r} ({expected})")
    if not port_text.isdigit() or not port_text.isascii():
        raise ConfigError(f"--listen: port must be a number (got {port_text!r})")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"--listen: port must be between 1 and 65535 (got {port})")
    if not host:
        return _DEFAULT_LISTEN_HOST, port
    try:
        return _check_host(host), port
    except ValueError as exc:
        raise ConfigError(f"--listen: host {host!r} {exc}") from None
