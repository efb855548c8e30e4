"""Call transfer to a human: target normalisation and outcomes (pure Python, no pjsua2).

A transfer is asked for with a reply action: ``"transfer"`` (to the configured
``transfer.target``) or ``"transfer:<target>"``. A target is a SIP URI (used as is) or a
number / user name, which becomes ``sip:<number>@<transfer domain>``. Zentrunk accepts a
REFER only to its own trunk domain (``<name>.zt.plivo.com``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

TRANSFER_ACTION = "transfer"

_NUMBER_PUNCT = re.compile(r"[\s().-]")
_NUMBER = re.compile(r"^\+?[0-9]{2,20}$")
_USER = re.compile(r"^[A-Za-z0-9_.!~*'()&=+$,;?/-]+$")
_DOMAIN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class TransferError(ValueError):
    """A transfer target that cannot be turned into a SIP URI."""


def transfer_target(action: str) -> str | None:
    """The target of a transfer action: ``""`` for plain ``"transfer"`` (the configured
    default), the text after ``"transfer:"`` otherwise; None when it is not a transfer.

    >>> [transfer_target(a) for a in ("transfer:+14155550100", "transfer", "hangup")]
    ['+14155550100', '', None]
    """
    if action == TRANSFER_ACTION:
        return ""
    head, sep, rest = action.partition(":")
    if head == TRANSFER_ACTION and sep:
        return rest.strip()
    return None


def transfer_uri(target: str, domain: str | None) -> str:
    """The SIP URI to REFER the caller to.

    A ``sip:``/``sips:`` URI is kept as is; ``tel:+1415...`` and numbers (spaces, dots,
    dashes and parentheses dropped, a leading ``+`` kept) and plain user names become
    ``sip:<user>@<domain>``. Raises `TransferError` naming the problem.

    >>> transfer_uri("+1 (415) 555-0100", "acme.zt.plivo.com")
    'sip:+14155550100@acme.zt.plivo.com'
    """
    text = target.strip()
    if not text:
        raise TransferError("no transfer target (set transfer.target)")
    lower = text.lower()
    if lower.startswith(("sip:", "sips:")):
        rest = text.split(":", 1)[1]
        if not rest or any(c.isspace() for c in rest) or rest.startswith("@"):
            raise TransferError(f"transfer target {target!r} is not a valid SIP URI")
        return text
    if lower.startswith("tel:"):
        text = text[4:].split(";", 1)[0]
    number = _NUMBER_PUNCT.sub("", text)
    if _NUMBER.match(number):
        user = number
    elif _USER.match(text) and "@" not in text:
        user = text
    else:
        raise TransferError(
            f"transfer target {target!r} is neither a SIP URI nor a number or user name"
        )
    if not domain:
        raise TransferError(
            f"transfer target {target!r} needs a domain: set transfer.domain"
            " (for Zentrunk, your <name>.zt.plivo.com trunk domain)"
        )
    if not _DOMAIN.match(domain):
        raise TransferError(f"transfer.domain {domain!r} is not a host[:port]")
    return f"sip:{user}@{domain}"


def uri_host(uri: str) -> str:
    """The host[:port] of a SIP URI, with or without a display name and angle brackets.

    >>> uri_host('"Bob" <sip:bob@192.0.2.7:5070;transport=udp>')
    '192.0.2.7:5070'
    """
    text = uri.strip()
    if "<" in text and ">" in text:
        text = text[text.index("<") + 1 : text.index(">")]
    text = text.split(":", 1)[1] if ":" in text else text
    text = text.rsplit("@", 1)[-1]
    return text.split(";", 1)[0].split("?", 1)[0]


@dataclass(frozen=True)
class TransferOutcome:
    """How a transfer ended: ``ok`` when the human's side answered (a 2xx final NOTIFY, or
    the REST API accepted it); ``status`` is the SIP status (0 when there is none) and
    ``detail`` a one-line account for logs and the call record."""

    ok: bool
    status: int = 0
    detail: str = ""
    target: str = ""  # where the caller went (the SIP URI, or the number dialled)
    # After a success the agent hangs up its leg this much later (0: at once; the REST
    # transfer leaves the far end time to end our leg itself).
    hangup_after_s: float = 0.0
    # A warm transfer: the caller is bridged to the human through the agent, whose call
    # goes on (ended by either side) instead of being hung up.
    bridged: bool = False


Transferrer: TypeAlias = Callable[[str], Awaitable[TransferOutcome]]
"""Transfers the call to a target (as the action gave it; "" = the default target)."""
