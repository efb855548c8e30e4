"""Plivo XML documents, built with the plivo SDK's XML builder (pure code, no I/O)."""

from __future__ import annotations

from typing import Any, Final

from plivo import plivoxml

__all__ = ["STREAM_CONTENT_TYPE", "Element", "dial", "hangup", "render", "speak", "stream"]

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


STREAM_CONTENT_TYPE: Final = "audio/x-mulaw;rate=8000"
"""The audio on a stream's socket: G.711 μ-law at 8 kHz, the telephony format Plivo's
streaming guide recommends.  Always set: Plivo's pages disagree on the default
(docs/plivo-audio-streams.md §1.2)."""


def stream(
    url: str,
    *,
    extra_headers: str | None,
    status_callback_url: str | None,
    stream_timeout_s: int,
) -> Element:
    """``<Stream>`` opening a bidirectional audio stream of the caller to ``url``.

    Attributes as Plivo's Stream XML reference documents them
    (https://docs.plivo.com/docs/voice/xml/audiostream, https://plivo.com/docs/voice/xml/
    audio-streaming; docs/plivo-audio-streams.md §1.2-1.5): the WebSocket URL is the
    element's text; ``bidirectional`` so the agent's audio can be sent back (playAudio);
    ``keepCallAlive`` so the XML waits on the stream (the call ends when the socket closes
    and no element follows); ``audioTrack="inbound"`` (the only track a bidirectional
    stream may carry); ``contentType`` :data:`STREAM_CONTENT_TYPE`; ``streamTimeout`` in
    whole seconds; the status callback requested with POST; ``extraHeaders`` the
    ``key=value,key=value`` string Plivo hands back on the socket's ``start`` event (letters
    and digits only, at most 512 bytes: the caller's job).
    """
    return plivoxml.StreamElement(
        url,
        bidirectional=True,
        keepCallAlive=True,
        audioTrack="inbound",
        contentType=STREAM_CONTENT_TYPE,
        streamTimeout=stream_timeout_s,
        statusCallbackUrl=status_callback_url or None,
        statusCallbackMethod="POST" if status_callback_url else None,
        extraHeaders=extra_headers or None,
    )
