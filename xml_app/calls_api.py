"""``POST /calls``: outbound calls placed by the app (``Authorization: Bearer
<outbound.api_key>``).

Body: ``{"to": NUMBER_OR_URI, "from"?: NUMBER, "via"?: "sip"|"plivo", "headers"?: {...},
"timezone"?: IANA zone}``.  In order: authenticate (401), validate (400), the do-not-call
list and the calling-hours window in the callee's zone (403, recorded as refused), a
calls-per-second slot (the request waits its turn; 429 when ``outbound.max_queue``
requests already wait, recorded as refused), then:

* ``via = "sip"`` (default): a worker with a free slot sends the INVITE itself, to a
  ``sip:`` URI or to ``sip:<number>@<outbound.trunk>`` (in register mode without a trunk:
  ``sip:<number>@<registration.registrar>``, the way a registered Plivo endpoint calls a
  number; the registrar's digest challenge is answered with the worker's account), with
  ``outbound.headers`` and the request's headers.  201 once the INVITE is out (503 when no
  worker can);
* ``via = "plivo"``: Plivo's Call API (the plivo SDK's ``calls.create``) with
  ``answer_url`` = this app's ``/answer``, which routes the answered call to a worker like
  an inbound one; 201 with Plivo's request UUID (502 when Plivo refuses).

The outcome (answered, busy, no-answer, failed) reaches the call record later.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from flask import Response, jsonify, request

from gateway.plivo.callcontext import MAX_VALUE_LEN, encode_value
from gateway.plivo.client import plivo_client
from gateway.policy.outbound import (
    CpsLimiter,
    DncList,
    OutboundPolicy,
    RefusalKind,
    normalise_number,
)
from gateway.pool.outcomes import DialStatus, PlaceCall
from gateway.records.store import CallRecords
from sip_config import ConfigError, Settings, check_sip_headers, is_time_zone

log = logging.getLogger(__name__)

# The HTTP status of a call the pool did not place, by why.
_DIAL_HTTP: Final = {DialStatus.BAD_TARGET: 400, DialStatus.UNAVAILABLE: 503}
# The HTTP status of a call the outbound policy refused, by rule.
_REFUSAL_HTTP: Final = {
    RefusalKind.DO_NOT_CALL: 403,
    RefusalKind.OUTSIDE_HOURS: 403,
    RefusalKind.UNKNOWN_ZONE: 400,
}


def headers_for_plivo(call_id: str, headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` in the form Plivo passes on: ``X-PH-<Name>``, names and values in its
    alphabet (letters and digits; Plivo's pass-custom-headers page), each value encoded
    like the app's own context (gateway.plivo.callcontext) when it has other characters. A
    header that cannot be put in that form is left out, with a warning."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        bare = name[5:] if name.lower().startswith("x-ph-") else name.removeprefix("X-")
        key = "".join(ch for ch in bare if ch.isascii() and ch.isalnum())[:24]
        encoded = value if value.isascii() and value.isalnum() else encode_value(value)
        if key and encoded and len(encoded) <= MAX_VALUE_LEN:
            out[f"X-PH-{key[:1].upper()}{key[1:].lower()}"] = encoded
        else:
            log.warning("outbound call %s: header %r cannot pass Plivo; left out", call_id, name)
    return out


def endpoint_headers(call_id: str, from_: str | None, headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of a call placed through our registered Plivo endpoint. Plivo passes
    only ``X-PH-*`` headers on, to the endpoint's application (this app's ``/answer``)
    (`headers_for_plivo`), and the app learns our id of the call and the caller ID to show."""
    out = headers_for_plivo(call_id, headers)
    out["X-PH-Recordid"] = call_id.replace("-", "")
    caller = encode_value(from_) if from_ else None
    if caller:
        out["X-PH-Callerid"] = caller
    return out


def _error(status: int, message: str, **extra: Any) -> Response:
    response = jsonify(error=message, **extra)
    response.status_code = status
    return response


class CallsApi:
    """The state behind ``POST /calls`` (one per app)."""

    def __init__(
        self,
        settings: Settings,
        records: CallRecords,
        dial: PlaceCall | None,
        base_url: Callable[[], str],
        *,
        clock: Callable[[], float] = time.time,
        limiter: CpsLimiter | None = None,
        plivo_factory: Callable[[], Any] | None = None,
    ) -> None:
        o = settings.outbound
        self.settings = o
        # Where numbers are sent via SIP: the trunk, else the registrar in register mode.
        self.number_host = o.trunk or (
            settings.registration.registrar if settings.sip.mode == "register" else None
        )
        self.via_registrar = settings.sip.mode == "register" and not o.trunk
        self.records = records
        self.dial = dial
        self.base_url = base_url
        self.clock = clock
        try:
            dnc = DncList.load(o.dnc_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"outbound.dnc_file: {exc}") from None
        self.policy = OutboundPolicy(
            dnc=dnc,
            zones=o.zones,
            default_zone=o.timezone,
            window_start=o.window_start,
            window_end=o.window_end,
        )
        self.limiter = limiter or CpsLimiter(o.cps, o.burst, o.max_queue)
        auth_token = o.plivo_auth_token or settings.app.auth_token
        self.plivo_factory = plivo_factory or (
            lambda: plivo_client(o.plivo_auth_id, auth_token, o.plivo_api_url)
        )

    def _record(self, what: str, write: Callable[[], None]) -> None:
        try:
            write()
        except Exception:
            log.exception("records: could not record %s", what)

    def _authorised(self) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.settings.api_key.encode()
        )

    def handle(self) -> Response:
        """``POST /calls``."""
        if not self.settings.api_key:
            return _error(404, "outbound calls are off: outbound.api_key is not set")
        if not self._authorised():
            log.warning("rejected POST /calls from %s: bad API key", request.remote_addr)
            response = _error(401, "a valid bearer API key is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="sipagent"'
            return response
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            return _error(400, "the body is not a JSON object")
        parsed = self._parse(body)
        if isinstance(parsed, Response):
            return parsed
        to, from_, via, headers, zone = parsed
        call_id = str(uuid.uuid4())
        now = self.clock()
        refusal = self.policy.check(to, now, zone)
        if refusal is None and self.limiter.acquire() is None:
            refusal_status, reason = 429, "calls-per-second limit: too many calls waiting"
        elif refusal is not None:
            refusal_status, reason = _REFUSAL_HTTP[refusal.kind], refusal.reason
        else:
            refusal_status, reason = 0, ""
        if refusal_status:
            log.warning("outbound call to %s refused (%d): %s", to, refusal_status, reason)
            self._record(
                "a refusal",
                lambda: self.records.outbound_requested(
                    call_id, from_, to, via, now, refusal=reason
                ),
            )
            return _error(refusal_status, reason, call_id=call_id, outcome="refused")
        self._record(
            "an outbound call",
            lambda: self.records.outbound_requested(call_id, from_, to, via, self.clock()),
        )
        if via == "plivo":
            return self._via_plivo(call_id, to, from_, headers)
        if self.through_endpoint(to):
            headers = endpoint_headers(call_id, from_, headers)
        return self._via_sip(call_id, to, headers)

    def through_endpoint(self, to: str) -> bool:
        """Whether a call to ``to`` goes out through our registered Plivo endpoint (a
        number in register mode without a trunk): Plivo then runs the endpoint's app."""
        return self.via_registrar and not to.startswith(("sip:", "sips:"))

    def _parse(
        self, body: Mapping[str, Any]
    ) -> Response | tuple[str, str | None, str, dict[str, str], str | None]:
        to = body.get("to")
        if not isinstance(to, str) or not to.strip():
            return _error(400, "'to' is required: a phone number or a sip: URI")
        to = to.strip()
        via = body.get("via", "sip")
        if via not in ("sip", "plivo"):
            return _error(400, "'via' must be 'sip' or 'plivo'")
        if to.startswith(("sip:", "sips:")):
            if "@" not in to or any(ch.isspace() or ord(ch) < 32 for ch in to):
                return _error(400, "'to' is not a valid sip: URI")
            if via == "plivo":
                return _error(400, "'to' must be a phone number for via=plivo")
        else:
            number = normalise_number(to)
            if number is None:
                return _error(400, "'to' is not a phone number or a sip: URI")
            to = number
        from_ = body.get("from", self.settings.caller_id)
        if from_ is not None:
            if not isinstance(from_, str) or normalise_number(from_) is None:
                return _error(400, "'from' must be a phone number")
            from_ = normalise_number(from_)
        headers = body.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            return _error(400, "'headers' must be an object of strings")
        try:
            check_sip_headers(headers)
        except ValueError as exc:
            return _error(400, f"'headers': {exc}")
        zone = body.get("timezone")
        if zone is not None and not is_time_zone(str(zone)):
            return _error(400, "'timezone' is not a known IANA time zone")
        return to, from_, via, {**self.settings.headers, **headers}, zone

    def _sip_uri(self, to: str) -> str | None:
        if to.startswith(("sip:", "sips:")):
            return to
        if not self.number_host:
            return None
        return f"sip:{to}@{self.number_host}"

    def _via_sip(self, call_id: str, to: str, headers: dict[str, str]) -> Response:
        uri = self._sip_uri(to)
        if uri is None:
            self._record("a failure", lambda: self._failed(call_id, "no outbound.trunk"))
            return _error(
                400,
                "a number needs outbound.trunk (or sip.mode = register) for via=sip;"
                " or pass a sip: URI",
            )
        if self.dial is None:
            return _error(503, "this app is not connected to a worker pool")
        outcome = self.dial(call_id, uri, headers)
        if outcome.status is not DialStatus.PLACED:
            why = outcome.reason
            self._record("a failure", lambda: self._failed(call_id, why))
            return _error(_DIAL_HTTP[outcome.status], why, call_id=call_id, outcome="failed")
        response = jsonify(call_id=call_id, via="sip", uri=uri, sip_call_id=outcome.sip_call_id)
        response.status_code = 201
        return response

    def _via_plivo(
        self, call_id: str, to: str, from_: str | None, headers: Mapping[str, str]
    ) -> Response:
        if from_ is None:
            return _error(400, "'from' is required for via=plivo (or set outbound.caller_id)")
        if not self.settings.plivo_auth_id:
            return _error(503, "via=plivo needs outbound.plivo_auth_id")
        base = self.base_url()
        # Plivo puts sip_headers on the call as X-PH-<name> and sends them back to the
        # answer_url as X-PH-<name> parameters (Call API; pass-custom-headers page), where
        # the app carries them to the worker like an inbound caller's.
        sip_headers = ",".join(
            f"{name[5:]}={value}" for name, value in headers_for_plivo(call_id, headers).items()
        )
        try:
            client = self.plivo_factory()
            try:
                result = client.calls.create(
                    from_=from_,
                    to_=to,
                    # Plivo signs these URLs with the query: the app knows the call by its id.
                    answer_url=f"{base}/answer?outbound_id={call_id}",
                    answer_method="POST",
                    hangup_url=f"{base}/hangup?outbound_id={call_id}",
                    hangup_method="POST",
                    sip_headers=sip_headers or None,
                )
            finally:
                # One client per request: close its HTTP session, or its socket waits for
                # the garbage collector.
                with contextlib.suppress(Exception):
                    client.session.close()
        except Exception as exc:
            why = f"Plivo's Call API refused the call: {exc}"
            log.warning("outbound call to %s: %s", to, why)
            self._record("a failure", lambda: self._failed(call_id, why))
            return _error(502, why, call_id=call_id, outcome="failed")
        request_uuid = str(getattr(result, "request_uuid", "") or "")
        response = jsonify(call_id=call_id, via="plivo", request_uuid=request_uuid)
        response.status_code = 201
        return response

    def _failed(self, call_id: str, reason: str) -> None:
        self.records.outbound_failed(call_id, reason, self.clock())
