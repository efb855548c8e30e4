"""What the pool answers to the app's requests: a pushed bot reply and an outbound call.

These are domain outcomes, not HTTP: the worker that holds the call decides them, the
supervisor passes them on (or decides one itself when no worker can answer), and only the
answer_url app (`xml_app`) turns them into HTTP statuses and bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class PushStatus(StrEnum):
    """What became of a reply the bot pushed for a call in progress."""

    ACCEPTED = "accepted"
    MALFORMED = "malformed"  # the reply is not one the call's brain can read
    NO_CALL = "no-call"  # no such call in progress (or it just ended)
    REFUSED = "refused"  # the call's brain takes no pushed replies
    UNAVAILABLE = "unavailable"  # the pool or the worker holding the call did not answer


@dataclass(frozen=True)
class PushOutcome:
    """A `PushStatus` and why (shown to the bot)."""

    status: PushStatus
    reason: str


class DialStatus(StrEnum):
    """What became of a request to place an outbound SIP call."""

    PLACED = "placed"  # the INVITE is out; the call's outcome arrives with its end
    BAD_TARGET = "bad-target"  # the URI cannot be called
    UNAVAILABLE = "unavailable"  # no worker can place a call now, or it did not answer


@dataclass(frozen=True)
class DialOutcome:
    """A `DialStatus`; the SIP Call-ID of a placed call, else why it was not placed."""

    status: DialStatus
    reason: str = ""
    sip_call_id: str = ""


PushReply = Callable[[str, dict[str, Any]], PushOutcome]
"""(call id: SIP Call-ID or CallUUID, the bot's reply) -> what became of it."""

PlaceCall = Callable[[str, str, dict[str, str]], DialOutcome]
"""(our id of the call, SIP URI, headers) -> what became of the request."""
