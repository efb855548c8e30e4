"""Validated gateway configuration (pydantic-settings): TOML file, .env, environment, CLI.

This package is the public surface: import from ``sip_config``, not its modules.
"""

from sip_config.app import AppSettings, BusinessHours, OutboundSettings, Route, RoutingSettings
from sip_config.conversation import ConversationSettings, TransferSettings, VadSettings
from sip_config.errors import ConfigError
from sip_config.pool import EdgeSettings, PoolSettings
from sip_config.providers import (
    BotBrainSettings,
    DeepgramSettings,
    ElevenLabsSettings,
    ExternalBrainSettings,
    HttpToolSettings,
    OpenAiSettings,
    ProviderSettings,
    WebhookBrainSettings,
)
from sip_config.records import RecordsSettings
from sip_config.settings import (
    LogLevel,
    Settings,
    bundled_playbook_path,
    load_settings,
    vendor_key,
)
from sip_config.sip import (
    Codec,
    InboundAuthSettings,
    RegistrationSettings,
    SipAccount,
    SipMode,
    SipSettings,
)
from sip_config.stream import StreamSettings
from sip_config.types import check_sip_headers, is_time_zone, parse_listen

__all__ = [
    "AppSettings",
    "BotBrainSettings",
    "BusinessHours",
    "Codec",
    "ConfigError",
    "ConversationSettings",
    "DeepgramSettings",
    "EdgeSettings",
    "ElevenLabsSettings",
    "ExternalBrainSettings",
    "HttpToolSettings",
    "InboundAuthSettings",
    "LogLevel",
    "OpenAiSettings",
    "OutboundSettings",
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
    "StreamSettings",
    "TransferSettings",
    "VadSettings",
    "WebhookBrainSettings",
    "bundled_playbook_path",
    "check_sip_headers",
    "is_time_zone",
    "load_settings",
    "parse_listen",
    "vendor_key",
]
