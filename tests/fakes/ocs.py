"""A loopback fake of an Ori-style OCS talking to sipagent as its DCS.

`FakeOcs` runs a real HTTP/1.1 server on 127.0.0.1 (port 0) in a background thread:

* ``POST /ocs`` (``external.ocs_url``) records the event (``start``, ``message``,
  ``end``) and acknowledges it with the next scripted `Reply`/`Raw`/`Hang` step of
  `acks` (from `tests.fakes.bot`), or ``200 OK`` (text) when none is scripted.  Then, like
  OCS, it answers asynchronously: `answer` (event -> reply payload or None) decides what
  to deliver, and a background thread POSTs it, ``call_id`` added, to `response_url` (the
  DCS_RESPONSE_URL: sipagent's ``/dcs/response``) with `token` as the bearer, after
  `answer_delay_s`.  The outcomes (status, JSON) are kept in `deliveries`.
* ``GET /audio/<name>`` serves ``files[name]`` (what OCS's AI_TTS_URL produced).

`start_call` plays OCS starting a call through its DCS_URL (sipagent's ``/dcs/calls``).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from tests.fakes.bot import Hang, Raw, Reply, Step
from tests.helpers.http import post_json

__all__ = ["FakeOcs", "post_json"]

Answer = Callable[[dict[str, Any]], dict[str, Any] | None]


class FakeOcs:
    """The fake OCS; use as a context manager (stops its server and delivery threads)."""

    def __init__(self, answer: Answer | None = None, answer_delay_s: float = 0.3) -> None:
        self.answer = answer
        self.answer_delay_s = answer_delay_s
        self.response_url = ""
        self.token = ""
        self.acks: deque[Step] = deque()
        self.files: dict[str, tuple[bytes, str]] = {}
        self.events: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.deliveries: list[tuple[int, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._senders: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/ocs"

    def audio_url(self, name: str) -> str:
        return self.url.removesuffix("/ocs") + f"/audio/{name}"

    def start(self) -> FakeOcs:
        handler = type("_BoundHandler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-ocs"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sender in list(self._senders):
            sender.join(timeout=15)

    def __enter__(self) -> FakeOcs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what OCS saw and did ------------------------------------------------------------

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("event") == kind]

    def wait_events(self, kind: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The first `count` events of `kind`, once they came (AssertionError after
        `timeout`)."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len([e for e in self.events if e.get("event") == kind]) >= count,
                timeout,
            )
            found = [e for e in self.events if e.get("event") == kind]
        assert ok, f"fake OCS: {count} {kind!r} event(s) expected, got {found}"
        return found[:count]

    def wait_deliveries(self, count: int, timeout: float = 60.0) -> list[tuple[int, Any]]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.deliveries) >= count, timeout)
            got = list(self.deliveries)
        assert ok, f"fake OCS: {count} deliveries expected, got {got}"
        return got

    def start_call(self, dcs_url: str, api_key: str, body: Any) -> tuple[int, dict[str, Any]]:
        """Start a call the way OCS does, through its DCS_URL."""
        return post_json(dcs_url, body, api_key)

    # -- internals -----------------------------------------------------------------------

    def _event(self, event: Any, headers: dict[str, str]) -> Step | None:
        with self._cond:
            if isinstance(event, dict):
                self.events.append(event)
            self.headers.append(headers)
            self._cond.notify_all()
            step = self.acks.popleft() if self.acks else None
        if isinstance(event, dict) and self.answer is not None:
            reply = self.answer(event)
            if reply is not None:
                payload = {"call_id": event.get("call_id"), **reply}
                sender = threading.Thread(target=self._deliver, args=(payload,), daemon=True)
                self._senders.append(sender)
                sender.start()
        return step

    def _deliver(self, payload: dict[str, Any]) -> None:
        if self._stop.wait(self.answer_delay_s):
            return
        try:
            outcome = post_json(self.response_url, payload, self.token)
        except OSError as exc:
            outcome = (0, {"error": str(exc)})
        with self._cond:
            self.deliveries.append(outcome)
            self._cond.notify_all()


class _Handler(BaseHTTPRequestHandler):
    owner: FakeOcs
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        name = self.path.removeprefix("/audio/")
        found = self.owner.files.get(name) if self.path.startswith("/audio/") else None
        if found is None:
            self._send(404, b"not found", "text/plain")
        else:
            self._send(200, *found)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path != "/ocs":
            self._send(404, b"not found", "text/plain")
            return
        try:
            event = json.loads(raw or b"null")
        except ValueError:
            event = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        step = self.owner._event(event, headers)
        if step is None:
            self._send(200, b"OK", "text/plain")
        elif isinstance(step, Reply):
            if step.delay_s:
                self.owner._stop.wait(step.delay_s)
            self._send(step.status, json.dumps(step.payload).encode(), "application/json")
        elif isinstance(step, Raw):
            self._send(step.status, step.body, step.content_type)
        elif isinstance(step, Hang):
            self.owner._stop.wait(step.seconds)
            self.close_connection = True
