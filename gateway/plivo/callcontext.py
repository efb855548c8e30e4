"""Carry a Plivo call's identity to the SIP side through Dial ``sipHeaders`` (pure code).

The answer_url app dials a worker with ``<Dial sipHeaders="Calluuid=...,From=...,To=...">``
(plus ``Callername``, ``Forwardedfrom`` and the caller's own ``X-PH-*`` headers when Plivo
sent them to the answer_url);
Plivo puts each pair on the INVITE as ``X-PH-<key>: <value>``.  Plivo's Dial/User XML
reference allows only ``[A-Za-z0-9]`` in header names and values (its support notes add:
a name is one capital letter followed by lowercase letters or digits, at most 24
characters; a value at most 120 characters; pairs breaking the rules are silently not
sent).  CallUUIDs, E.164 numbers and SIP URIs contain other characters, so values are
encoded losslessly into that alphabet:

========================  ==============================  ==========================
value                     encoded                         example
========================  ==============================  ==========================
canonical UUID            the 32 hex digits, no hyphens   ``0f1e...`` (case kept)
digits only               unchanged                       ``14155550100``
``+`` then digits         ``p`` then the digits           ``p14155550100``
anything else             ``x`` then UTF-8 bytes in hex   ``x7369703a...``
========================  ==============================  ==========================

A value whose encoding would exceed 120 characters is left out (the header is then absent
on the SIP side, which :func:`decode_call_context` simply does not report).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

__all__ = [
    "HEADER_PREFIX",
    "MAX_VALUE_LEN",
    "RESERVED_KEYS",
    "decode_call_context",
    "decode_value",
    "encode_sip_headers",
    "encode_value",
    "record_key",
]

HEADER_PREFIX: Final = "X-PH-"
"""Prefix Plivo puts before every ``sipHeaders`` key on the INVITE."""

MAX_VALUE_LEN: Final = 120
"""Longest header value Plivo passes on (longer pairs are dropped by Plivo)."""

# Keys as Plivo wants them: capital first letter, then lowercase letters/digits.
_KEY_UUID: Final = "Calluuid"
_KEY_FROM: Final = "From"
_KEY_TO: Final = "To"
_KEY_RECORD: Final = "Recordid"
_KEY_CALLER_NAME: Final = "Callername"
_KEY_FORWARDED_FROM: Final = "Forwardedfrom"
# decode_call_context's names for the encoded keys (matched case-insensitively).
_CONTEXT_NAMES: Final = {
    "calluuid": "call_uuid",
    "recordid": "record_id",
    "from": "from",
    "to": "to",
    "callername": "caller_name",
    "forwardedfrom": "forwarded_from",
}
RESERVED_KEYS: Final = frozenset(
    (_KEY_UUID, _KEY_RECORD, _KEY_FROM, _KEY_TO, _KEY_CALLER_NAME, _KEY_FORWARDED_FROM)
)
"""``sipHeaders`` keys the app writes itself: a caller's own header may not take them."""

_UUID = re.compile(r"^[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$")
_UUID_HEX = re.compile(r"^[0-9A-Fa-f]{32}$")
_DIGITS = re.compile(r"^[0-9]+$")
_PLUS_DIGITS = re.compile(r"^p[0-9]+$")
_HEX_TEXT = re.compile(r"^x(?:[0-9a-f]{2})+$")


def encode_value(value: str) -> str | None:
    """Encode a number or URI into Plivo's header alphabet; None if it would be too long.

    Digits stay as they are, ``+digits`` becomes ``pdigits``, anything else becomes ``x``
    followed by the lowercase hex of its UTF-8 bytes.  The empty string is not encodable.
    """
    if not value:
        return None
    if _DIGITS.match(value):
        encoded = value
    elif value.startswith("+") and _DIGITS.match(value[1:]):
        encoded = "p" + value[1:]
    else:
        encoded = "x" + value.encode("utf-8").hex()
    return encoded if len(encoded) <= MAX_VALUE_LEN else None


def decode_value(value: str) -> str:
    """Invert :func:`encode_value`.  A value in none of its forms is returned unchanged."""
    if _PLUS_DIGITS.match(value):
        return "+" + value[1:]
    if _HEX_TEXT.match(value):
        try:
            return bytes.fromhex(value[1:]).decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _encode_uuid(call_uuid: str) -> str | None:
    if _UUID.match(call_uuid):
        return call_uuid.replace("-", "")
    # Not canonical: always the hex form, so decoding never mistakes it for a UUID.
    encoded = "x" + call_uuid.encode("utf-8").hex() if call_uuid else ""
    return encoded if 0 < len(encoded) <= MAX_VALUE_LEN else None


def _decode_uuid(value: str) -> str:
    if _UUID_HEX.match(value):
        return "-".join((value[:8], value[8:12], value[12:16], value[16:20], value[20:]))
    return decode_value(value)


def encode_sip_headers(
    call_uuid: str,
    from_number: str,
    to_number: str,
    *,
    caller_name: str = "",
    forwarded_from: str = "",
    extra: Mapping[str, str] | None = None,
    record_id: str = "",
) -> str:
    """Build a Dial ``sipHeaders`` value carrying the call's UUID, caller and callee (and
    the caller's name, the number the call was forwarded from, and ``extra`` pairs already
    in Plivo's alphabet, e.g. the caller's own ``X-PH-*`` headers).  ``record_id`` is the
    app's own id of the call when it is not Plivo's CallUUID (an outbound call the app
    placed through Plivo's Call API): the worker records the call under it.

    Returns e.g. ``"Calluuid=0f1e2d3c...,From=p14155550100,To=p442071234567"``; a part
    that cannot be encoded within Plivo's limits is left out (possibly all of them: ``""``).
    """
    pairs: list[str] = []
    for key, encoded in (
        (_KEY_UUID, _encode_uuid(call_uuid)),
        (_KEY_RECORD, _encode_uuid(record_id) if record_id != call_uuid else None),
        (_KEY_FROM, encode_value(from_number)),
        (_KEY_TO, encode_value(to_number)),
        (_KEY_CALLER_NAME, encode_value(caller_name)),
        (_KEY_FORWARDED_FROM, encode_value(forwarded_from)),
    ):
        if encoded is not None:
            pairs.append(f"{key}={encoded}")
    for key, value in (extra or {}).items():
        if key not in RESERVED_KEYS:
            pairs.append(f"{key}={value}")
    return ",".join(pairs)


def decode_call_context(headers: Mapping[str, str]) -> dict[str, str]:
    """Read the call context out of an INVITE's headers.

    ``headers`` maps header names (any case, e.g. ``X-PH-Calluuid`` as
    ``gateway.sip.calls.parse_sip_headers`` canonicalises them) to values.  Returns
    ``call_uuid``, ``from`` and ``to`` (decoded; only those present) and every other
    ``X-PH-*`` header under its lowercase name without the prefix, value unchanged.
    """
    context: dict[str, str] = {}
    prefix = HEADER_PREFIX.lower()
    for name, raw in headers.items():
        lowered = name.lower()
        if not lowered.startswith(prefix) or len(lowered) == len(prefix):
            continue
        key = lowered[len(prefix) :]
        value = raw.strip()
        if key in ("calluuid", "recordid"):
            context[_CONTEXT_NAMES[key]] = _decode_uuid(value)
        elif key in _CONTEXT_NAMES:
            context[_CONTEXT_NAMES[key]] = decode_value(value)
        elif key not in ("call_uuid", "record_id"):  # none poses as a decoded id
            context[key] = value
    return context


def record_key(context: Mapping[str, str]) -> str:
    """The id the call is recorded under: the app's own id of a call it placed through
    Plivo (``record_id``), else Plivo's CallUUID; ``""`` when the call has neither."""
    return context.get("record_id") or context.get("call_uuid", "")
