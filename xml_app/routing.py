"""Routing rules of the answer_url app: which route a called number takes, opening hours,
and request-parameter checks (pure code: the time is passed in)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final, Literal
from zoneinfo import ZoneInfo

from sip_config import BusinessHours, Route, RoutingSettings

__all__ = [
    "MAX_PARTY_LEN",
    "TargetKind",
    "is_open",
    "number_key",
    "select_route",
    "target_kind",
    "valid_call_uuid",
    "valid_party",
]

TargetKind = Literal["agent", "sip", "number", "hangup"]
"""What a route target is: the worker pool, a SIP URI, a phone number, or hang up."""

MAX_PARTY_LEN: Final = 256
"""Longest From/To accepted from Plivo."""

_WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_UUID = re.compile(r"^[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$")
_NUMBER = re.compile(r"^\+?[0-9]{1,20}$")
# A SIP URI as Plivo reports it for endpoint calls: printable ASCII without spaces or quotes.
_SIP_URI = re.compile(r"^sips?:[!#-;=?-~]+$")
# Caller-ID placeholders some networks send instead of a number (e.g. "anonymous").
_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def valid_call_uuid(value: str) -> bool:
    """True for a canonical UUID (8-4-4-4-12 hex digits), as Plivo's CallUUIDs are."""
    return bool(_UUID.match(value))


def valid_party(value: str) -> bool:
    """True for a sane From/To: a phone number, a ``sip:`` URI or a short token."""
    if not value or len(value) > MAX_PARTY_LEN:
        return False
    return bool(_NUMBER.match(value) or _SIP_URI.match(value) or _TOKEN.match(value))


def number_key(to: str) -> str:
    """Key into ``routing.numbers`` for a called party: its digits without ``+``; for a
    SIP URI whose user part is a number, that number's digits; else ``""``."""
    text = to
    if text.startswith(("sip:", "sips:")):
        text = text.split(":", 1)[1].split("@", 1)[0].split(";", 1)[0]
    text = text.removeprefix("+")
    return text if text.isdigit() and text.isascii() else ""


def select_route(routing: RoutingSettings, to: str) -> Route:
    """The route for calls to ``to``: its entry in ``routing.numbers`` or the default."""
    key = number_key(to)
    return routing.numbers.get(key, routing.default) if key else routing.default


def is_open(hours: BusinessHours | None, now: float) -> bool:
    """Whether ``now`` (unix time) falls in ``hours`` in their time zone (None: always).

    Open on the listed days from ``open`` (inclusive) to ``close`` (exclusive).
    """
    if hours is None:
        return True
    local = datetime.fromtimestamp(now, ZoneInfo(hours.timezone))
    if _WEEKDAYS[local.weekday()] not in hours.days:
        return False
    return hours.open <= local.strftime("%H:%M") < hours.close


def target_kind(target: str) -> TargetKind:
    """Classify a validated route target."""
    if target == "agent":
        return "agent"
    if target == "hangup":
        return "hangup"
    if target.startswith(("sip:", "sips:")):
        return "sip"
    return "number"
