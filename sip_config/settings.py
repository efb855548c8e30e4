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
    BaseModel,
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
    "KNOWN_BRAINS",
    "KNOWN_STT",
    "KNOWN_TTS",
    "Codec",
    "ConfigError",
    "ConversationSettings",
    "LogLevel",
    "ProviderSettings",
    "Settings",
    "SipSettings",
    "VadSettings",
    "bundled_playbook_path",
    "load_settings",
    "parse_listen",
]

KNOWN_STT: Final[tuple[str, ...]] = ("pocketsphinx",)
"""Speech-to-text providers shipped with the gateway (``"fake"`` is accepted as well)."""

KNOWN_TTS: Final[tuple[str, ...]] = ("piper",)
"""Text-to-speech providers shipped with the gateway (``"fake"`` is accepted as well)."""

KNOWN_BRAINS: Final[tuple[str, ...]] = ("scripted",)
"""Conversation brains shipped with the gateway (``"fake"`` is accepted as well)."""

_TEST_PROVIDER: Final = "fake"
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


class SipSettings(_Section):
    """SIP user-agent settings (``[sip]`` table, ``SIPAGENT_SIP__*`` variables)."""

    listen_host: str = Field(
        default=_DEFAULT_LISTEN_HOST, description="Local address to bind the SIP transport to."
    )
    listen_port: int = Field(default=5060, ge=1, le=65535, description="Local SIP port.")
    public_host: str | None = Field(
        default=None, description="Address advertised in Contact/SDP; None uses the bound one."
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
    user_agent: str = Field(default="sipagent", description="User-Agent header value.")

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

    @field_validator("public_host")
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

    @field_validator("user_agent")
    @classmethod
    def _validate_user_agent(cls, value: str) -> str:
        if not value.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            _invalid("must be non-empty and free of control characters")
        return value


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


def _check_provider(value: str, known: tuple[str, ...], kind: str) -> str:
    name = value.strip().lower()
    allowed = (*known, _TEST_PROVIDER)
    if name not in allowed:
        _invalid(f"unknown {kind} provider; known: {', '.join(allowed)}")
    return name


class ProviderSettings(_Section):
    """Which STT/TTS/brain implementations to use (``[providers]``, ``SIPAGENT_PROVIDERS__*``)."""

    stt: str = Field(default="pocketsphinx", description="Speech-to-text provider name.")
    tts: str = Field(default="piper", description="Text-to-speech provider name.")
    brain: str = Field(default="scripted", description="Conversation brain name.")
    piper_length_scale: float = Field(
        default=1.0, ge=0.5, le=2.0, description="Piper speaking-rate factor (>1 is slower)."
    )

    @field_validator("stt")
    @classmethod
    def _validate_stt(cls, value: str) -> str:
        return _check_provider(value, KNOWN_STT, "STT")

    @field_validator("tts")
    @classmethod
    def _validate_tts(cls, value: str) -> str:
        return _check_provider(value, KNOWN_TTS, "TTS")

    @field_validator("brain")
    @classmethod
    def _validate_brain(cls, value: str) -> str:
        return _check_provider(value, KNOWN_BRAINS, "brain")


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
        return f"{where}: {message}"
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
