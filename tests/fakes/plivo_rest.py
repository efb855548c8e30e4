"""A loopback fake of Plivo's REST API: the Call transfer endpoint, as the plivo SDK uses it.

`FakePlivoRest` runs a real HTTP/1.1 server on 127.0.0.1 (port 0) in a background thread.

* ``POST /v1/Account/<auth_id>/Call/<call_uuid>/`` (the SDK's ``calls.transfer`` /
  ``calls.update``) with HTTP Basic auth ``auth_id:auth_token``: wrong credentials get 401
  ``{"error": "..."}``, a CallUUID not in `calls` gets 404, otherwise 202
  ``{"api_id": ..., "message": "call transferred"}``. With `fetch_xml` on, the fake then
  does what Plivo does with ``aleg_url``: it requests it (``aleg_method``, default POST)
  with the call's parameters, signed with X-Plivo-Signature-V3, and keeps the answer in
  `fetched` (before answering the API request, so a test can look at once).
* `status` forces an HTTP status for every API request (e.g. 500).

Every API request is recorded in `requests` (method, path, JSON body).
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from plivo.utils import signature_v3

__all__ = ["FakePlivoRest", "Fetched", "RestRequest"]


@dataclass(frozen=True)
class RestRequest:
    """One API request as received."""

    method: str
    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Fetched:
    """The transferred leg's XML, as the app answered the fake's request for it."""

    url: str
    status: int
    body: str


@dataclass
class FakePlivoRest:
    """The fake API server (use as a context manager)."""

    auth_id: str = "MAFAKEFAKEFAKEFAKE01"
    auth_token: str = "fake-token"
    calls: set[str] = field(default_factory=set)
    fetch_xml: bool = False
    status: int | None = None
    requests: list[RestRequest] = field(default_factory=list)
    fetched: list[Fetched] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The API base URL (what ``transfer.plivo_api_url`` is set to)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakePlivoRest:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"_raw": raw.decode("latin-1")}
                fake.requests.append(RestRequest("POST", self.path, body))
                status, payload = fake._answer(self.path, self.headers.get("Authorization"), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- the API ----------------------------------------------------------------------------
    def _answer(
        self, path: str, authorization: str | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        api_id = str(uuid.uuid4())
        expected = base64.b64encode(f"{self.auth_id}:{self.auth_token}".encode()).decode()
        if authorization != f"Basic {expected}":
            return 401, {"api_id": api_id, "error": "Authentication failed"}
        if self.status is not None:
            return self.status, {"api_id": api_id, "error": "forced error"}
        parts = [p for p in path.split("?")[0].split("/") if p]
        if len(parts) != 5 or parts[:2] != ["v1", "Account"] or parts[3] != "Call":
            return 404, {"api_id": api_id, "error": "not found"}
        if parts[2] != self.auth_id:
            return 401, {"api_id": api_id, "error": "Authentication failed"}
        call_uuid = parts[4]
        if call_uuid not in self.calls:
            return 404, {"api_id": api_id, "error": "call not found"}
        if body.get("legs") not in ("aleg", "bleg", "both"):
            return 400, {"api_id": api_id, "error": "legs must be aleg, bleg or both"}
        url = body.get("aleg_url")
        if body["legs"] in ("aleg", "both") and not url:
            return 400, {"api_id": api_id, "error": "aleg_url is required"}
        if self.fetch_xml and url:
            self.fetched.append(
                self._fetch(str(url), str(body.get("aleg_method") or "POST"), call_uuid)
            )
        return 202, {"api_id": api_id, "message": "call transferred"}

    def _fetch(self, url: str, method: str, call_uuid: str) -> Fetched:
        """Request the leg's XML as Plivo would: the call's parameters, signed (V3)."""
        params = {"CallUUID": call_uuid, "Direction": "inbound", "CallStatus": "in-progress"}
        nonce = uuid.uuid4().hex
        if method == "GET":
            base = signature_v3.construct_get_url(url, {})
            data = None
        else:
            base = signature_v3.construct_post_url(url, dict(params))
            data = urllib.parse.urlencode(params).encode()
        signature = signature_v3.get_signature_v3(
            self.auth_token.encode(), base.decode(), nonce.encode()
        ).decode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("X-Plivo-Signature-V3", signature)
        req.add_header("X-Plivo-Signature-V3-Nonce", nonce)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return Fetched(url, resp.status, resp.read().decode())
        except urllib.error.HTTPError as exc:
            return Fetched(url, exc.code, exc.read().decode())
