"""A loopback fake of Plivo's REST voice API, as the plivo SDK uses it, and Plivo's signed
callbacks to an app.

`FakePlivoApi` is an `HttpFake` (`tests.fakes.http`: HTTP/1.1 on 127.0.0.1, a free port).
Every request needs HTTP Basic auth ``auth_id:auth_token`` (else 401 ``{"error"}``);
`status` forces one HTTP status for every authenticated request (e.g. 500).

* ``POST /v1/Account/<auth_id>/Call/`` (``calls.create``): needs ``from``, ``to`` and
  ``answer_url`` (else 400); 201 ``{"api_id", "message": "call fired", "request_uuid"}``,
  and the request is kept in `calls`.  `answer` and `hang_up` then play Plivo's part: they
  POST the call's ``answer_url`` / ``hangup_url`` with Plivo's parameters, signed.
* ``POST /v1/Account/<auth_id>/Call/<call_uuid>/`` (``calls.transfer``): a CallUUID not in
  `live_calls` gets 404, bad ``legs`` or a missing ``aleg_url`` 400, otherwise 202
  ``{"api_id", "message": "call transferred"}``.  With `fetch_xml` on, the fake first does
  what Plivo does with ``aleg_url``: requests it (``aleg_method``, default POST) with the
  call's parameters, signed, and keeps the answer in `fetched`.

* ``DELETE /v1/Account/<auth_id>/Call/<call_uuid>/`` (``calls.delete``, "Hang up a call":
  https://www.plivo.com/docs/voice/api/call/hangup-a-call/): 204 with no body for a call in
  `live_calls`, which leaves it and is appended to `hung_up`; 404 otherwise (a call that
  has ended).

Every API request is recorded in `requests` (`tests.fakes.http.Received`).  Signatures are
X-Plivo-Signature-V3, computed with the plivo SDK's own functions (`plivo_signature`).
"""

from __future__ import annotations

import base64
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from plivo.utils import signature_v3

from tests.fakes.http import Exchange, HttpFake, request

__all__ = ["FakePlivoApi", "Fetched", "plivo_signature", "signed_request"]


def plivo_signature(
    method: str, url: str, params: Mapping[str, str], nonce: str, token: str
) -> str:
    """The X-Plivo-Signature-V3 Plivo sends for a request (GET: the URL; POST: the URL
    and the form parameters)."""
    if method == "GET":
        base = signature_v3.construct_get_url(url, {})
    else:
        base = signature_v3.construct_post_url(url, dict(params))
    return str(
        signature_v3.get_signature_v3(token.encode(), base.decode(), nonce.encode()).decode()
    )


def signed_request(
    url: str,
    params: Mapping[str, str],
    token: str,
    method: str = "POST",
    timeout: float = 10.0,
) -> tuple[int, str]:
    """Send a request to ``url`` the way Plivo sends its callbacks (form parameters, a
    fresh nonce, the V3 signature); returns the HTTP status and body."""
    nonce = uuid.uuid4().hex
    signature = plivo_signature(method, url, params, nonce, token)
    data = urllib.parse.urlencode(dict(params)).encode() if method == "POST" else None
    headers = {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}
    status, body = request(url, data, headers, method, timeout)
    return status, body.decode()


@dataclass(frozen=True)
class Fetched:
    """A transferred leg's XML, as the app answered the fake's request for it."""

    url: str
    status: int
    body: str


class FakePlivoApi(HttpFake):
    """``with FakePlivoApi(auth_id, token) as api:`` serves on 127.0.0.1:<free port>."""

    thread_name = "fake-plivo-api"

    def __init__(
        self,
        auth_id: str,
        auth_token: str,
        *,
        live_calls: Iterable[str] = (),
        fetch_xml: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__()
        self.auth_id = auth_id
        self.auth_token = auth_token
        self.live_calls = set(live_calls)  # CallUUIDs a transfer may name
        self.fetch_xml = fetch_xml
        self.status = status
        self.calls: list[dict[str, Any]] = []  # calls.create bodies (+ request_uuid)
        self.fetched: list[Fetched] = []
        self.hung_up: list[str] = []  # CallUUIDs hung up through the API, in order
        self.route("POST", ".*", self._request)  # auth comes first, even for a wrong path
        self.route("DELETE", ".*", self._request)

    @property
    def url(self) -> str:
        """Base URL to give the SDK instead of https://api.plivo.com."""
        return self.origin

    def _request(self, ex: Exchange) -> None:
        body = ex.received.body
        parsed = body is None or isinstance(body, dict)
        authorization = ex.received.headers.get("authorization")
        if ex.command == "DELETE":
            status, payload = self._delete(ex.path, authorization)
        else:
            status, payload = self._answer(
                ex.path, authorization, body if isinstance(body, dict) else {}, parsed
            )
        if status == 204:
            ex.send(204, b"", "application/json")
        else:
            ex.send_json(status, payload)

    # -- the API ----------------------------------------------------------------------------
    def _answer(
        self, path: str, authorization: str | None, body: dict[str, Any], parsed: bool
    ) -> tuple[int, dict[str, Any]]:
        api_id = str(uuid.uuid4())
        expected = base64.b64encode(f"{self.auth_id}:{self.auth_token}".encode()).decode()
        if authorization != f"Basic {expected}":
            return 401, {"api_id": api_id, "error": "authentication failed"}
        if self.status is not None:
            return self.status, {"api_id": api_id, "error": "forced error"}
        parts = [p for p in path.split("?")[0].split("/") if p]
        if parts[:3] != ["v1", "Account", self.auth_id] or parts[3:4] != ["Call"]:
            return 404, {"api_id": api_id, "error": "not found"}
        if not parsed:
            return 400, {"api_id": api_id, "error": "invalid JSON"}
        if len(parts) == 4:
            return self._create(api_id, body)
        if len(parts) == 5:
            return self._transfer(api_id, parts[4], body)
        return 404, {"api_id": api_id, "error": "not found"}

    def _delete(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        api_id = str(uuid.uuid4())
        expected = base64.b64encode(f"{self.auth_id}:{self.auth_token}".encode()).decode()
        if authorization != f"Basic {expected}":
            return 401, {"api_id": api_id, "error": "authentication failed"}
        parts = [p for p in path.split("?")[0].split("/") if p]
        if parts[:4] != ["v1", "Account", self.auth_id, "Call"] or len(parts) != 5:
            return 404, {"api_id": api_id, "error": "not found"}
        with self.lock:
            if parts[4] not in self.live_calls:
                return 404, {"api_id": api_id, "error": "call not found"}
            self.live_calls.discard(parts[4])
            self.hung_up.append(parts[4])
        return 204, {}

    def _create(self, api_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        missing = [k for k in ("from", "to", "answer_url") if not body.get(k)]
        if missing:
            return 400, {"api_id": api_id, "error": f"missing {', '.join(missing)}"}
        request_uuid = str(uuid.uuid4())
        with self.lock:
            self.calls.append({**body, "request_uuid": request_uuid})
        return 201, {"api_id": api_id, "message": "call fired", "request_uuid": request_uuid}

    def _transfer(
        self, api_id: str, call_uuid: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if call_uuid not in self.live_calls:
            return 404, {"api_id": api_id, "error": "call not found"}
        if body.get("legs") not in ("aleg", "bleg", "both"):
            return 400, {"api_id": api_id, "error": "legs must be aleg, bleg or both"}
        url = body.get("aleg_url")
        if body["legs"] in ("aleg", "both") and not url:
            return 400, {"api_id": api_id, "error": "aleg_url is required"}
        if self.fetch_xml and url:
            fetched = self.fetch(str(url), str(body.get("aleg_method") or "POST"), call_uuid)
            with self.lock:
                self.fetched.append(fetched)
        return 202, {"api_id": api_id, "message": "call transferred"}

    # -- Plivo's requests to the app ---------------------------------------------------------
    def fetch(self, url: str, method: str, call_uuid: str) -> Fetched:
        """Request a transferred leg's XML as Plivo would: the call's parameters, signed."""
        params = {"CallUUID": call_uuid, "Direction": "inbound", "CallStatus": "in-progress"}
        status, body = signed_request(
            url, params if method == "POST" else {}, self.auth_token, method, timeout=5
        )
        return Fetched(url, status, body)

    def answer(self, call: dict[str, Any], call_uuid: str) -> tuple[int, str]:
        """The callee of ``call`` answered: POST its answer_url as Plivo does (signed);
        returns the HTTP status and body (the XML)."""
        return self.callback(str(call["answer_url"]), self._params(call, call_uuid, "in-progress"))

    def hang_up(self, call: dict[str, Any], call_uuid: str, status: str) -> tuple[int, str]:
        """The call is over with CallStatus ``status`` (completed, busy, no-answer, ...):
        POST its hangup_url (signed)."""
        params = self._params(call, call_uuid, status)
        params["HangupCause"] = {"busy": "USER_BUSY", "no-answer": "NO_ANSWER"}.get(
            status, "NORMAL_CLEARING"
        )
        return self.callback(str(call["hangup_url"]), params)

    @staticmethod
    def _params(call: dict[str, Any], call_uuid: str, status: str) -> dict[str, str]:
        """Plivo's parameters for a call placed with the Call API.

        * ``CallUUID``, ``From`` (the caller ID given), ``To`` (the destination),
          ``Direction=outbound`` (already answered when the answer_url is fetched),
          ``CallStatus``, ``ALegUUID`` and ``ALegRequestUUID`` (outbound calls only): the
          XML request page, https://docs.plivo.com/docs/voice/xml/request.
        * ``RequestUUID`` (the ``request_uuid`` of the API's answer), ``Event=StartApp``,
          ``SIP-H-To`` when ``to`` is a SIP URI, and ``X-PH-<name>`` for each pair of the
          call's ``sip_headers``: the pass-custom-headers page's example request,
          https://plivo.com/docs/voice/use-cases/pass-custom-headers.
        """
        params = {
            "CallUUID": call_uuid,
            "RequestUUID": str(call["request_uuid"]),
            "ALegUUID": call_uuid,
            "ALegRequestUUID": str(call["request_uuid"]),
            "From": str(call["from"]),
            "To": str(call["to"]),
            "Direction": "outbound",
            "CallStatus": status,
            "Event": "StartApp",
        }
        if str(call["to"]).startswith("sip:"):
            params["SIP-H-To"] = f"<{call['to']}>;tag={call_uuid[:8]}"
        for pair in str(call.get("sip_headers") or "").split(","):
            name, sep, value = pair.partition("=")
            if sep and name:
                params[f"X-PH-{name}"] = value
        return params

    def callback(self, url: str, params: dict[str, str]) -> tuple[int, str]:
        """POST ``params`` to ``url`` signed with the account's token (V3)."""
        return signed_request(url, params, self.auth_token)
