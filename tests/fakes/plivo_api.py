"""A loopback fake of Plivo's REST Call API (``POST /v1/Account/<auth_id>/Call/``).

It checks HTTP Basic auth against one auth ID / token, answers like Plivo (201
``{"api_id", "message": "call fired", "request_uuid"}``; 401 / 400 with ``{"error"}``),
and keeps every call request.  `answer` then plays Plivo's part once the callee picks
up: it POSTs the call's ``answer_url`` with the parameters Plivo sends and a V3
signature computed with the plivo SDK's own functions, and returns the XML.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from plivo.utils.signature_v3 import construct_post_url, get_signature_v3


class FakePlivoApi:
    """``with FakePlivoApi(auth_id, token) as api:`` serves on 127.0.0.1:<free port>."""

    def __init__(self, auth_id: str, auth_token: str) -> None:
        self.auth_id = auth_id
        self.auth_token = auth_token
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                expected = (
                    "Basic "
                    + base64.b64encode(f"{fake.auth_id}:{fake.auth_token}".encode()).decode()
                )
                if self.headers.get("Authorization") != expected:
                    self._reply(401, {"error": "authentication failed"})
                    return
                if self.path.rstrip("/") != f"/v1/Account/{fake.auth_id}/Call":
                    self._reply(404, {"error": "not found"})
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._reply(400, {"error": "invalid JSON"})
                    return
                missing = [k for k in ("from", "to", "answer_url") if not body.get(k)]
                if missing:
                    self._reply(400, {"error": f"missing {', '.join(missing)}"})
                    return
                request_uuid = str(uuid.uuid4())
                with fake.lock:
                    fake.calls.append({**body, "request_uuid": request_uuid})
                self._reply(
                    201,
                    {
                        "api_id": str(uuid.uuid4()),
                        "message": "call fired",
                        "request_uuid": request_uuid,
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL to give the SDK instead of https://api.plivo.com."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakePlivoApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

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
        return {
            "CallUUID": call_uuid,
            "RequestUUID": str(call["request_uuid"]),
            "From": str(call["from"]),
            "To": str(call["to"]),
            "Direction": "outbound",
            "CallStatus": status,
        }

    def callback(self, url: str, params: dict[str, str]) -> tuple[int, str]:
        """POST ``params`` to ``url`` signed with the account's token (V3)."""
        nonce = uuid.uuid4().hex
        base = construct_post_url(url, dict(params)).decode()
        signature = get_signature_v3(self.auth_token.encode(), base, nonce.encode()).decode()
        req = urllib.request.Request(
            url,
            data=urllib.parse.urlencode(params).encode(),
            headers={"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
