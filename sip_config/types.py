"""Value shapes shared by the settings sections: the section base model and one annotated
type (or check) per kind of value that several settings take: hosts, lists written as
"a,b", time zones, HH:MM, http(s) URLs, SIP user names, plain text, phone-number keys and
SIP headers; plus ``--listen`` parsing for the CLI.

Every check here is pure: it looks at the value only (no files, no environment).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_settings import NoDecode

from sip_config.errors import ConfigError, invalid

__all__ = [
    "DEFAULT_LISTEN_HOST",
    "SIP_USER",
    "BlankIsNone",
    "CommaList",
    "HhMm",
    "Host",
    "HttpUrl",
    "OptionalHost",
    "OptionalPath",
    "PlainText",
    "Section",
    "SipUser",
    "TimeZone",
    "WsUrl",
    "check_host",
    "check_http_url",
    "check_sip_headers",
    "is_time_zone",
    "list_parser",
    "number_digits",
    "parse_listen",
]

DEFAULT_LISTEN_HOST: Final = "127.0.0.1"


class Section(BaseModel):
    """Base for settings sections: unknown keys and non-finite floats are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


BlankIsNone: Final = BeforeValidator(_blank_is_none)
"""Metadata for an optional setting: an empty (or all-blank) string means None (it is how
an environment variable says "none")."""

OptionalPath = Annotated[Path | None, BlankIsNone]
"""A file or directory setting; empty: none. Whether it exists is checked at load time."""


# --- hosts ------------------------------------------------------------------------------

_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def check_host(value: str) -> str:
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


def _host(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_host(value)
    except ValueError as exc:
        invalid(str(exc))


Host = Annotated[str, AfterValidator(_host)]
"""An IP address (IPv6 with or without brackets; stored without) or a hostname."""

OptionalHost = Annotated[str | None, BlankIsNone, AfterValidator(_host)]
"""A :data:`Host`, or None (also written as an empty string)."""


# --- lists ------------------------------------------------------------------------------


def list_parser(what: str = "") -> Callable[[object], object]:
    """A before-validator taking a JSON list or a comma-separated string (how environment
    variables write lists); ``what`` ends the error message, e.g. " of codecs"."""

    def parse(value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    invalid(f"is neither a JSON list nor a comma-separated list{what}")
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    return parse


# NoDecode: pydantic-settings hands the environment's string to the parser, not to json.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(list_parser())]
"""A list of strings, also written ``"a,b"`` or ``'["a", "b"]'``."""


# --- times ------------------------------------------------------------------------------


def is_time_zone(name: str) -> bool:
    """True when `name` is an IANA time zone this machine knows (e.g. America/New_York)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _time_zone(value: str) -> str:
    if not is_time_zone(value):
        invalid("unknown time zone")
    return value


TimeZone = Annotated[str, AfterValidator(_time_zone)]
"""An IANA time zone name, e.g. Europe/London."""

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def _hhmm(value: str) -> str:
    if not _HHMM.match(value):
        invalid("must be HH:MM (24-hour clock)")
    return value


HhMm = Annotated[str, AfterValidator(_hhmm)]
"""A time of day on the 24-hour clock, "09:00"; such strings compare in time order."""


# --- URLs -------------------------------------------------------------------------------


def _url_check(schemes: tuple[str, ...], message: str) -> Callable[[str | None], str | None]:
    pattern = re.compile(r"^(" + "|".join(schemes) + r")://[^/\s]+(/\S*)?$")

    def check(value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        text = value.strip().rstrip("/")
        if not pattern.match(text):
            invalid(message)
        return text

    return check


check_http_url: Final = _url_check(("http", "https"), "must be an http:// or https:// URL")
"""An http(s) URL stripped of blanks and of a trailing '/'; None for an empty one."""

HttpUrl = Annotated[str | None, AfterValidator(check_http_url)]
"""An optional http(s) base URL (no trailing '/'); empty: None."""

_WS_URL_MESSAGE: Final = "must be a ws:// or wss:// or http:// or https:// URL"
WsUrl = Annotated[
    str | None, AfterValidator(_url_check(("ws", "wss", "http", "https"), _WS_URL_MESSAGE))
]
"""An optional WebSocket (or http(s)) base URL (no trailing '/'); empty: None."""


# --- names and text ---------------------------------------------------------------------

SIP_USER: Final = re.compile(r"^[A-Za-z0-9._-]+$")


def _sip_user(value: str) -> str:
    if not SIP_USER.match(value):
        invalid("must be non-empty and contain only letters, digits, '-', '.' or '_'")
    return value


SipUser = Annotated[str, AfterValidator(_sip_user)]
"""The user part of a SIP URI: letters, digits, '-', '.' and '_'."""


def _plain_text(value: str) -> str:
    value = value.strip()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        invalid("must be free of control characters")
    return value


PlainText = Annotated[str, AfterValidator(_plain_text)]
"""One line of text without control characters, stripped of surrounding blanks."""


def number_digits(key: str) -> str | None:
    """The digits of a phone number (or number prefix) written as digits with an optional
    '+', e.g. "+1 212" is not one but "+1212" is ("1212"); None if it is not."""
    digits = key.strip().lstrip("+")
    return digits if digits.isdigit() else None


# --- SIP headers ------------------------------------------------------------------------

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


# --- the CLI's --listen -----------------------------------------------------------------


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
        return DEFAULT_LISTEN_HOST, port
    try:
        return check_host(host), port
    except ValueError as exc:
        raise ConfigError(f"--listen: host {host!r} {exc}") from None
