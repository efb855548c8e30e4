"""The whole gateway configuration, :class:`Settings`, and :func:`load_settings`, which
layers every configuration source and checks the result.

Sources, highest priority first: explicit ``overrides`` (used by the CLI), environment
variables (``SIPAGENT_`` prefix, ``__`` between nesting levels), a ``.env`` file, a TOML
config file, and the defaults the sections declare.  Every problem is reported as a single
:class:`ConfigError` whose message names each bad setting by its dotted path.

The sections live by concern: sip_config.sip, .pool, .conversation, .app, .providers,
.records; the value shapes they share in sip_config.types; what is checked once the model
is built (files, the environment, rules across sections) in sip_config.checks.
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from sip_config.app import AppSettings, OutboundSettings, RoutingSettings
from sip_config.checks import check_loaded
from sip_config.conversation import ConversationSettings, TransferSettings, VadSettings
from sip_config.errors import ConfigError, config_error_from
from sip_config.pool import EdgeSettings, PoolSettings
from sip_config.providers import ProviderSections, ProviderSettings
from sip_config.records import RecordsSettings
from sip_config.sip import RegistrationSettings, SipSettings
from sip_config.stream import StreamSettings

__all__ = [
    "LogLevel",
    "Settings",
    "bundled_playbook_path",
    "load_settings",
    "vendor_key",
]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
"""Log levels accepted in ``log_level``."""


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


def _bundled_if_none(value: object) -> object:
    return bundled_playbook_path() if value is None else value


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


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


class Settings(BaseSettings, ProviderSections):
    """Complete gateway configuration.  Build it with :func:`load_settings`.

    ``playbook`` is a :class:`~pathlib.Path`: when unset :func:`bundled_playbook_path`;
    after :func:`load_settings`, an existing readable file's absolute path.
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
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    playbook: Annotated[Path, BeforeValidator(_bundled_if_none)] = Field(
        default_factory=bundled_playbook_path,
        description="Playbook TOML file; unset means the bundled demo playbook.",
    )
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = "INFO"

    def plivo_transfer_ready(self) -> bool:
        """Whether Plivo's REST transfer can be used: credentials and a public URL."""
        return bool(
            (self.transfer.auth_id() or self.outbound.plivo_auth_id)
            and (self.app.auth_token or self.outbound.plivo_auth_token)
            and self.app.public_url
        )

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
    defaults.  Partial nested values from different sources are merged.  Once the values
    are valid, :func:`sip_config.checks.check_loaded` checks the files they name and the
    rules across sections.

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
        settings = Settings(**kwargs)
    except (ValidationError, SettingsError) as exc:
        raise config_error_from(exc) from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc}") from None
    finally:
        _toml_file.reset(token)
    check_loaded(settings)
    return settings
