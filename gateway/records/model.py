"""What a call record is made of: the typed events a worker reports about its calls, the
values some columns take, the row key of a SIP-only call, and the store's errors.

No I/O here: :mod:`gateway.records.store` writes these events, :mod:`gateway.records.schema`
says which columns they fill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "GATEWAY_RESTARTED",
    "ROUTES",
    "SIP_PREFIX",
    "AmbiguousCallId",
    "CallTurn",
    "RecordsError",
    "SipCallEnd",
    "SipCallStart",
    "sip_key",
]

ROUTES: Final = ("agent", "stream", "sip", "number", "fallback", "after-hours", "hangup")
"""Values of ``calls.route``: what ``/answer`` decided for the call."""

GATEWAY_RESTARTED: Final = "gateway restarted"
"""End reason of a call closed because the gateway that answered it died."""

SIP_PREFIX: Final = "sip:"
"""Start of the row key of a call known only by its SIP Call-ID (see :func:`sip_key`)."""


def sip_key(sip_call_id: str) -> str:
    """Row key of a call known only by its SIP Call-ID."""
    return SIP_PREFIX + sip_call_id


# -- what a worker reports about its calls ------------------------------------------------
# Each event travels from the worker to the supervisor as one of these (the pool's control
# protocol encodes any field of them), and the supervisor stores it as it is: a new field is
# added here, to a migration and the column mapping in `gateway.records.schema`, and where
# the worker produces its value.


@dataclass(frozen=True)
class SipCallStart:
    """A worker's SIP call started (media is up).  ``call_uuid``: our id of the call (the
    CallUUID of a call routed by the app, or the app's id of a call it placed), None for a
    SIP-only call; ``recording``: where its recording is written; ``headers``: the X-
    headers of its INVITE."""

    sip_call_id: str
    call_uuid: str | None
    from_uri: str | None
    to_uri: str | None
    at: float
    direction: Literal["inbound", "outbound"] = "inbound"
    recording: str | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class SipCallEnd:
    """A worker's SIP call ended: the SIP side's end ``reason``, and an outbound call's
    ``outcome`` (answered | busy | no-answer | failed)."""

    sip_call_id: str
    call_uuid: str | None
    reason: str | None
    at: float
    outcome: str | None = None


@dataclass(frozen=True)
class CallTurn:
    """One agent turn of a call: a `TurnRecord.as_dict()` (the same turn number stored
    again replaces the earlier version)."""

    sip_call_id: str
    call_uuid: str | None
    turn: Mapping[str, Any]  # JSON, as `TurnRecord.as_dict()` makes it
    at: float


class RecordsError(Exception):
    """The record store cannot be opened or used, or is from a newer version of the gateway."""


class AmbiguousCallId(RecordsError):
    """A call-ID prefix matches more than one call (``matches``: their keys)."""

    def __init__(self, prefix: str, matches: Sequence[str]) -> None:
        super().__init__(f"{prefix!r} matches {len(matches)} calls: {', '.join(matches)}")
        self.matches = list(matches)
