"""Plivo, as its documentation says it behaves, for tests that play Plivo on the wire.

Each behaviour names the page it follows (docs/plivo-notes.md has the details and what
the pages leave open). The REST side (Call API, Transfer API) is `FakePlivoApi` in
`tests.fakes.plivo_api`; this module is the call side:

* `inbound_params` / `endpoint_params`: the answer_url request of an incoming call and of
  a call a registered endpoint places;
* `PlivoEmulator.answer`: sends it, signed (V3) and form-encoded, as Plivo does;
* `DialLeg` / `dial_leg`: what Plivo does with the ``<Dial><User>`` in the answer: the SIP
  URI it calls, the ``sipHeaders`` as ``X-PH-`` headers on the INVITE, and the
  ``sipAuthUsername``/``sipAuthPassword`` it answers a digest challenge with; `softphone`
  turns that into `sipagent call` arguments, so the leg is a real SIP call.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.fakes.plivo_api import signed_request

__all__ = ["DialLeg", "PlivoEmulator", "dial_leg", "endpoint_params", "inbound_params"]


def inbound_params(
    caller: str,
    called: str,
    *,
    call_uuid: str | None = None,
    caller_name: str | None = None,
    sip_h_to: str | None = None,
    headers: Mapping[str, str] | None = None,
    forwarded_from: str | None = None,
    status: str = "ringing",
) -> dict[str, str]:
    """The answer_url parameters of an incoming call.

    * ``CallUUID``, ``From``, ``To``, ``Direction=inbound``, ``CallStatus``, and
      ``ForwardedFrom`` only when the call was forwarded: the XML request page,
      https://docs.plivo.com/docs/voice/xml/request.
    * ``From`` is the caller's number as the carrier gave it; a withheld one is sent as it
      came (empty here): no page documents a withheld caller, so the app must cope with
      anything, and an empty value is the hardest case.
    * ``CallerName``: listed with the answer parameters in Plivo's own audio-streaming
      skill (plivo/plivo-cli), from the SIP display name.
    * ``SIP-H-To`` (the raw SIP To header, angle brackets and tag) and ``X-PH-<Name>`` for
      each custom header of the caller, URL-encoded like every parameter: the
      pass-custom-headers page's example request,
      https://plivo.com/docs/voice/use-cases/pass-custom-headers.
    * ``Event=StartApp`` and ``SessionStart``: that example and the plivo-go V3 signature
      test vectors.
    """
    params = {
        "CallUUID": call_uuid or str(uuid.uuid4()),
        "From": caller,
        "To": called,
        "Direction": "inbound",
        "CallStatus": status,
        "Event": "StartApp",
        "SessionStart": "2026-12-05 10:00:00.000000",
    }
    if caller_name is not None:
        params["CallerName"] = caller_name
    if forwarded_from is not None:
        params["ForwardedFrom"] = forwarded_from
    if sip_h_to is not None:
        params["SIP-H-To"] = sip_h_to
    for name, value in (headers or {}).items():
        params[f"X-PH-{name}"] = value
    return params


def endpoint_params(
    endpoint: str,
    dialled: str,
    *,
    domain: str = "phone.plivo.com",
    headers: Mapping[str, str] | None = None,
    call_uuid: str | None = None,
) -> dict[str, str]:
    """The answer_url request when registered endpoint `endpoint` places a call to
    `dialled`: Plivo runs the application attached to the endpoint the way it does for an
    incoming call (Application object, https://docs.plivo.com/docs/account/api/application;
    support article "How do I register an endpoint on my soft VoIP phone"), with only the
    INVITE's ``X-PH-`` headers forwarded as parameters (pass-custom-headers page).
    ``From`` is the endpoint's SIP URI and ``To`` what it dialled: no page spells these
    out (docs/plivo-notes.md section 3), so the app must not rely on more than that."""
    return inbound_params(
        f"sip:{endpoint}@{domain}",
        dialled,
        call_uuid=call_uuid,
        sip_h_to=f"<sip:{dialled}@{domain}>",
        headers=headers,
        status="in-progress",
    )


@dataclass(frozen=True)
class DialLeg:
    """The SIP leg Plivo places for ``<Dial><User>``."""

    uri: str
    headers: dict[str, str] = field(default_factory=dict)
    auth: tuple[str, str] | None = None

    def softphone(self, *, with_auth: bool = True) -> list[str]:
        """`sipagent call` arguments after the URI: the headers, and the credentials
        (``with_auth=False`` plays a Plivo that dropped them)."""
        args: list[str] = []
        for name, value in self.headers.items():
            args += ["--header", f"{name}:{value}"]
        if with_auth and self.auth is not None:
            args += ["--auth", f"{self.auth[0]}:{self.auth[1]}"]
        return args


def dial_leg(xml: str) -> DialLeg:
    """Plivo's leg for an answer's ``<Dial><User>`` (Dial XML, User element,
    https://www.plivo.com/docs/voice/xml/dial/user/ and https://plivo.com/docs/voice/xml/routing):

    * the element's text is the SIP URI Plivo calls;
    * ``sipHeaders`` (on ``<Dial>`` or ``<User>``) is ``name=value,...``; Plivo puts each
      pair on the INVITE as ``X-PH-<name>: <value>``;
    * with ``sipAuthUsername``/``sipAuthPassword``, Plivo answers the URI's 401/407 digest
      challenge with them (SIP authentication concept page,
      https://plivo.com/docs/voice/concepts/sip-authentication); without them a
      challenge fails the leg (``sip_auth_failed``).
    """
    dial = ET.fromstring(xml).find("Dial")
    assert dial is not None, xml
    user = dial.find("User")
    assert user is not None and user.text, xml
    headers: dict[str, str] = {}
    for source in (dial.get("sipHeaders"), user.get("sipHeaders")):
        for pair in (source or "").split(","):
            if pair:
                name, _, value = pair.partition("=")
                headers[f"X-PH-{name}"] = value
    username, password = user.get("sipAuthUsername"), user.get("sipAuthPassword")
    auth = (username, password) if username and password else None
    return DialLeg(user.text.strip(), headers, auth)


class PlivoEmulator:
    """Sends Plivo's requests to an answer_url app (``app_url``), signed with
    ``auth_token``: V3 signature and nonce headers, form-encoded POST, the method Plivo
    uses by default (Signature validation V3,
    https://docs.plivo.com/docs/voice/concepts/signature-validation/; Application API,
    answer_method defaults to POST)."""

    def __init__(self, app_url: str, auth_token: str) -> None:
        self.app_url = app_url.rstrip("/")
        self.auth_token = auth_token

    def answer(self, params: Mapping[str, str], path: str = "/answer") -> tuple[int, str]:
        """POST the answer_url request; returns the HTTP status and the XML."""
        return signed_request(self.app_url + path, params, self.auth_token)

    def dial(self, params: Mapping[str, str]) -> DialLeg:
        """Answer a call and return the SIP leg the XML's Dial asks for."""
        status, xml = self.answer(params)
        assert status == 200, xml
        return dial_leg(xml)
