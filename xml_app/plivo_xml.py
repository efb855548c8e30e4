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


class _User(plivoxml.UserElement):  # type: ignore[misc]
    """``<User>`` with ``sipAuthUsername``/``sipAuthPassword``: the digest credentials Plivo
    answers the dialled SIP URI's 401/407 challenge with (Dial XML, "User" element:
    https://www.plivo.com/docs/voice/xml/dial/user/ and the SIP authentication concept page
    https://plivo.com/docs/voice/concepts/sip-authentication). The SDK's builder (4.63)
    does not know the two attributes yet; everything else is its own."""

    def __init__(self, content: str, auth: tuple[str, str] | None) -> None:
        super().__init__(content)
        self._auth = auth

    def to_dict(self) -> dict[str, str]:
        attributes: dict[str, str] = super().to_dict()
        if self._auth is not None:
            attributes["sipAuthUsername"], attributes["sipAuthPassword"] = self._auth
        return attributes


def dial(
    target: str,
    *,
    timeout: int,
    action: str | None = None,
    caller_id: str | None = None,
    sip_headers: str | None = None,
    user: bool | None = None,
    sip_auth: tuple[str, str] | None = None,
) -> Element:
    """``<Dial>`` ringing one target as ``<User>`` (a SIP URI) or ``<Number>``.

    ``user`` None picks by the target: ``sip:``/``sips:`` URIs are users, the rest numbers.
    ``action`` is requested with POST when the Dial ends. ``sip_auth`` (user, password)
    are the digest credentials a ``<User>`` target challenges for.
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
        element.add(_User(target, sip_auth))
    else:
        element.add(plivoxml.NumberElement(target))
    return element
