"""Routing rules of the answer_url app: which route a called number takes, opening hours,
and request-parameter checks (pure code: the time is passed in)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final, Literal
from zoneinfo import ZoneInfo

from gateway.plivo.callcontext import RESERVED_KEYS
from sip_config import BusinessHours, Route, RoutingSettings

__all__ = [
    "MAX_CALLER_HEADERS",
    "MAX_PARTY_LEN",
    "WITHHELD",
    "TargetKind",
    "caller_headers",
    "caller_party",
    "destination",
    "is_open",
    "number_key",
    "select_route",
    "target_kind",
    "valid_call_uuid",
    "valid_party",
]

TargetKind = Literal["agent", "stream", "sip", "number", "hangup"]
"""What a route target is: the SIP worker pool, the stream workers (a Plivo audio stream),
a SIP URI, a phone number, or hang up."""

MAX_PARTY_LEN: Final = 256
"""Longest From/To accepted from Plivo."""

WITHHELD: Final = "anonymous"
"""The caller as routed and recorded when the number is withheld, empty or unreadable."""

MAX_CALLER_HEADERS: Final = 8
"""Most of the caller's own ``X-PH-*`` headers passed on to the worker."""

# What networks put in From instead of a withheld number (RFC 3323 recommends
# "anonymous", e.g. sip:anonymous@anonymous.invalid; carriers also use these words).
_WITHHELD_WORDS: Final = frozenset(
    {"anonymous", "private", "restricted", "unavailable", "unknown", "withheld", "blocked"}
)
# Plivo's custom header alphabet (Dial/User and Call API sip_headers pages): names and
# values of letters and digits only; a name is at most 24 characters, a value 120.
_HEADER_NAME = re.compile(r"^[A-Za-z0-9]{1,24}$")
_HEADER_VALUE = re.compile(r"^[A-Za-z0-9]{1,120}$")
_PREFIX = "x-ph-"
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
    if target == "stream":
        return "stream"
    if target == "hangup":
        return "hangup"
    if target.startswith(("sip:", "sips:")):
        return "sip"
    return "number"


def caller_party(value: str) -> str:
    """The caller as the app routes and records it: ``From`` when it is a sane number,
    URI or token, :data:`WITHHELD` when it is empty, a withheld marker ("anonymous",
    "private", ``sip:anonymous@anonymous.invalid``...) or unreadable.  Never an error:
    Plivo hangs up a call whose answer_url fails."""
    text = value.strip()
    if not valid_party(text):
        return WITHHELD
    user = text
    if text.startswith(("sip:", "sips:")):
        user = text.split(":", 1)[1].split("@", 1)[0].split(";", 1)[0]
    return WITHHELD if user.lower() in _WITHHELD_WORDS else text


def destination(to: str, sip_h_to: str) -> str:
    """The number the caller dialled: the URI in ``SIP-H-To`` (the SIP To header Plivo
    passes beside To, https://plivo.com/docs/voice/use-cases/pass-custom-headers; for calls
    to an application's SIP URI and BYOC, e.g.
    ``<sip:+14155550199@app.plivo.com>;tag=x``) when its user part is a number, else
    ``To``."""
    header = sip_h_to.strip()
    if header:
        if "<" in header and ">" in header[header.index("<") :]:
            uri = header[header.index("<") + 1 : header.index(">", header.index("<"))]
        else:
            uri = header.split(";", 1)[0]
        uri = uri.strip()
        if valid_party(uri) and number_key(uri):
            return uri
    return to


def caller_headers(params: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The caller's own ``X-PH-*`` parameters (Call API ``sip_headers``, headers of a SIP
    caller), as ``{Name: value}`` keys Plivo's Dial ``sipHeaders`` takes (first letter
    capital, the rest lower case), and the names left out: not in Plivo's alphabet, one
    of ``reserved`` or past :data:`MAX_CALLER_HEADERS`."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in params.items():
        if not name.lower().startswith(_PREFIX):
            continue
        key = name[len(_PREFIX) :]
        canonical = key[:1].upper() + key[1:].lower()
        if (
            not _HEADER_NAME.match(key)
            or not _HEADER_VALUE.match(value)
            or canonical in RESERVED_KEYS
            or canonical in kept
            or len(kept) >= MAX_CALLER_HEADERS
        ):
            dropped.append(name)
            continue
        kept[canonical] = value
    return kept, dropped
