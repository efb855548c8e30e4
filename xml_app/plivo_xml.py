"""Plivo XML documents, built with the plivo SDK's XML builder (pure code, no I/O)."""

from __future__ import annotations

from typing import Any

from plivo import plivoxml

__all__ = ["Element", "dial", "hangup", "render", "speak"]

Element = Any
"""A plivo SDK XML element (the SDK has no type information)."""


def render(*elements: Element) -> str:
    """A ``<Response>`` document holding ``elements`` in order (``<Response/>`` if none)."""
    response = plivoxml.ResponseElement()
    for element in elements:
        response.add(element)
    return str(response.to_string(pretty=False))


def speak(text: str) -> Element:
    """``<Speak>text</Speak>`` (the builder escapes the text)."""
    return plivoxml.SpeakElement(text)


def hangup() -> Element:
    """``<Hangup/>``."""
    return plivoxml.HangupElement()


def dial(
    target: str,
    *,
    timeout: int,
    action: str | None = None,
    caller_id: str | None = None,
    sip_headers: str | None = None,
    user: bool | None = None,
) -> Element:
    """``<Dial>`` ringing one target as ``<User>`` (a SIP URI) or ``<Number>``.

    ``user`` None picks by the target: ``sip:``/``sips:`` URIs are users, the rest numbers.
    ``action`` is requested with POST when the Dial ends.
    """
    element = plivoxml.DialElement(
        action=action,
        method="POST" if action else None,
        timeout=timeout,
        caller_id=caller_id or None,
        sip_headers=sip_headers or None,
    )
    if user is None:
        user = target.startswith(("sip:", "sips:"))
    if user:
        element.add(plivoxml.UserElement(target))
    else:
        element.add(plivoxml.NumberElement(target))
    return element
