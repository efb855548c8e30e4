"""Validated gateway configuration (pydantic-settings): TOML file, .env, environment, CLI."""

from sip_config.settings import (
    KNOWN_BRAINS,
    KNOWN_STT,
    KNOWN_TTS,
    Codec,
    ConfigError,
    ConversationSettings,
    LogLevel,
    ProviderSettings,
    Settings,
    SipSettings,
    VadSettings,
    bundled_playbook_path,
    load_settings,
    parse_listen,
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
