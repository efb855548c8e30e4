"""A loopback fake of a customer's bot (webhook mode), its audio file server and its HTTP TTS.

`FakeBot` runs a real HTTP/1.1 server on 127.0.0.1 (port 0) in a background thread:

* ``POST /bot/start`` (the call-start endpoint, ``webhook.start_url``) and ``POST
  /bot/turn`` (the per-turn endpoint, ``webhook.turn_url``) each answer with the next step
  scripted for that path (`start` / `turns` queues): `Reply` (JSON), `Raw` (any bytes and
  status) or `Hang` (answer nothing for a while).  An empty queue answers 500.
* ``POST /tts`` answers with `tts_audio` (bytes and content type) - the HTTP TTS
  (``webhook.tts_url``).
* ``GET /audio/<name>`` serves ``files[name]`` (bytes, content type), 404 otherwise; with
  `chunked` set the body is sent without Content-Length, in chunks.

Every request is recorded in `requests` (method, path, lowercased headers, JSON body).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["FakeBot", "Hang", "Raw", "RecordedRequest", "Reply"]


@dataclass(frozen=True)
class Reply:
    """Answer with `payload` as JSON."""

    payload: Any
    status: int = 200
    delay_s: float = 0.0


@dataclass(frozen=True)
class Raw:
    """Answer with these bytes as they are."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"


@dataclass(frozen=True)
class Hang:
    """Answer nothing for `seconds`, then close the connection."""

    seconds: float


Step = Reply | Raw | Hang


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


class FakeBot:
    """The fake bot server; use as a context manager."""

    def __init__(self) -> None:
        self.start_script: deque[Step] = deque()
        self.turn_script: deque[Step] = deque()
        self.tts_audio: tuple[bytes, str] = (b"", "audio/wav")
        self.files: dict[str, tuple[bytes, str]] = {}
        self.chunked = False
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> FakeBot:
        handler = type("_BoundHandler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-bot"
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

    def __enter__(self) -> FakeBot:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- script ---------------------------------------------------------------------------

    def on_start(self, *steps: Step) -> None:
        with self._lock:
            self.start_script.extend(steps)

    def on_turn(self, *steps: Step) -> None:
        with self._lock:
            self.turn_script.extend(steps)

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies posted to `path`, in order."""
        with self._lock:
            return [r.body for r in self.requests if r.path == path]

    def _next(self, path: str) -> Step | None:
        with self._lock:
            script = self.start_script if path == "/bot/start" else self.turn_script
            return script.popleft() if script else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeBot
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

    def _send_chunked(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i in range(0, len(body), 65536):
                part = body[i : i + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _record(self, body: Any) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.owner._record(RecordedRequest(self.command, self.path, headers, body))

    def do_GET(self) -> None:
        self._record(None)
        name = self.path.removeprefix("/audio/")
        found = self.owner.files.get(name) if self.path.startswith("/audio/") else None
        if found is None:
            self._send(404, b"not found", "text/plain")
        elif self.owner.chunked:
            self._send_chunked(*found)
        else:
            self._send(200, *found)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = raw
        self._record(body)
        if self.path == "/tts":
            self._send(200, *self.owner.tts_audio)
            return
        if self.path not in ("/bot/start", "/bot/turn"):
            self._send(404, b"not found", "text/plain")
            return
        step = self.owner._next(self.path)
        if step is None:
            self._send(500, b'{"error": "fake: nothing scripted"}', "application/json")
        elif isinstance(step, Reply):
            if step.delay_s:
                self.owner._stop.wait(step.delay_s)
            self._send(step.status, json.dumps(step.payload).encode(), "application/json")
        elif isinstance(step, Raw):
            self._send(step.status, step.body, step.content_type)
        else:
            self.owner._stop.wait(step.seconds)
            self.close_connection = True
