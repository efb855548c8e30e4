"""A loopback fake of OpenAI's Chat Completions API (streaming) plus a tiny HTTP tool server.

`FakeOpenAi` runs a real HTTP/1.1 server on 127.0.0.1 (port 0) in a background thread.
``POST /v1/chat/completions`` with ``"stream": true`` answers with Server-Sent Events in
OpenAI's format, sent with chunked transfer encoding like the real API::

    data: {"id": "chatcmpl-...", "object": "chat.completion.chunk", "created": ...,
           "model": ..., "choices": [{"index": 0, "delta": {...}, "finish_reason": null}]}

    data: [DONE]

It checks ``Authorization: Bearer <api_key>`` (401 with OpenAI's error JSON otherwise; the
error message quotes the key it was given, so tests can check a client never repeats it)
and records every request body in `requests`.  Each request takes the next scripted
response from the queue (`script`): `Text`, `ToolCalls`, `HttpError`, `Stall`, `Drop` or
`Malformed`.  ``POST /tools/<name>`` is the HTTP tool server: it records the posted JSON in
`tool_posts` and answers with ``tool_results[name]`` (JSON; default ``{"ok": true}``).

`fault`, while set, answers every chat request instead of the queue (a vendor outage a test
switches on and off between turns); `default`, when set, answers once the queue is empty.

While it waits between deltas the server watches the socket, so it notices a client that
goes away (`disconnects` counts them, `disconnected` is set) without writing to it.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "Drop",
    "FakeOpenAi",
    "HttpError",
    "Malformed",
    "Stall",
    "Text",
    "ToolCall",
    "ToolCalls",
]


@dataclass(frozen=True)
class Text:
    """Stream `text` in deltas of `chunk_chars` characters."""

    text: str
    chunk_chars: int = 4
    first_delay_s: float = 0.0  # before the first delta (time to first token)
    delay_s: float = 0.0  # between deltas


@dataclass(frozen=True)
class ToolCall:
    """One function call the fake model makes; `arguments` is sent as is (a JSON string)."""

    name: str
    arguments: str = "{}"
    id: str = ""  # "" = generated ("call_fake<n>")


@dataclass(frozen=True)
class ToolCalls:
    """Optional text, then tool-call deltas: id + name first, then argument fragments."""

    calls: tuple[ToolCall, ...]
    text: str = ""
    chunk_chars: int = 4
    first_delay_s: float = 0.0
    delay_s: float = 0.0


@dataclass(frozen=True)
class HttpError:
    """Answer with an HTTP error status and OpenAI's error JSON."""

    status: int = 500
    message: str = "The server had an error while processing your request."
    type: str = "server_error"
    code: str | None = None


@dataclass(frozen=True)
class Stall:
    """Send the headers (200, text/event-stream), optionally some text, then nothing."""

    text_before: str = ""
    seconds: float = 30.0


@dataclass(frozen=True)
class Drop:
    """Stream `text_before`, then close the connection without ending the stream."""

    text_before: str = ""


@dataclass(frozen=True)
class Malformed:
    """Stream `text_before`, then a ``data:`` line that is not JSON."""

    text_before: str = ""


Scripted = Text | ToolCalls | HttpError | Stall | Drop | Malformed


@dataclass
class RecordedRequest:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.monotonic() when the body was read


@dataclass
class StreamLog:
    """What the fake sent for one streamed response (monotonic timestamps)."""

    delta_times: list[float] = field(default_factory=list)
    finished_at: float = 0.0  # 0.0 = never finished (client left, drop, stall)
    client_left: bool = False


class _Gone(Exception):
    """The client closed the connection."""


class FakeOpenAi:
    """The fake OpenAI server; use as a context manager (``with FakeOpenAi("sk-x") as fake``)."""

    def __init__(self, api_key: str = "sk-test-fake-key") -> None:
        self.api_key = api_key
        self.script: deque[Scripted] = deque()
        self.fault: Scripted | None = None
        self.default: Scripted | None = None
        self.requests: list[RecordedRequest] = []
        self.streams: list[StreamLog] = []
        self.tool_posts: list[tuple[str, Any]] = []
        self.tool_results: dict[str, Any] = {}
        self.tool_delay_s: float = 0.0
        self.disconnects = 0
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = 0

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What to give an OpenAI client as ``base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def tool_url(self, name: str) -> str:
        """The URL of the fake HTTP tool `name`."""
        return f"http://127.0.0.1:{self.port}/tools/{name}"

    def start(self) -> FakeOpenAi:
        fake = self

        class Handler(_Handler):
            owner = fake

        server = _Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai"
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

    def __enter__(self) -> FakeOpenAi:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- script ---------------------------------------------------------------------------

    def add(self, *responses: Scripted) -> None:
        """Queue responses; each chat request takes the next one."""
        with self._lock:
            self.script.extend(responses)

    def chat_requests(self) -> list[dict[str, Any]]:
        """The bodies of the chat completion requests, in order."""
        with self._lock:
            return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    # -- internals used by the handler ----------------------------------------------------

    def _next(self) -> Scripted | None:
        with self._lock:
            if self.fault is not None:
                return self.fault
            return self.script.popleft() if self.script else self.default

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}{self._ids}"

    def _record(self, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(path, headers, body, time.monotonic()))

    def _client_left(self, log: StreamLog | None) -> None:
        with self._lock:
            self.disconnects += 1
            if log is not None:
                log.client_left = True
        self.disconnected.set()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets its connection is normal here (barge-in, timeouts)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeOpenAi
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    # -- plumbing -------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error(self, status: int, message: str, type_: str, code: str | None) -> None:
        self._send_json(
            status, {"error": {"message": message, "type": type_, "param": None, "code": code}}
        )

    def _chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError as exc:
            raise _Gone from exc

    def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, but raise `_Gone` as soon as the client closes the socket."""
        deadline = time.monotonic() + seconds
        sock: socket.socket = self.connection
        while True:
            if self.owner._stop.is_set():
                raise _Gone
            left = deadline - time.monotonic()
            readable, _, _ = select.select([sock], [], [], max(0.0, min(left, 0.02)))
            if readable:
                try:
                    data = sock.recv(1, socket.MSG_PEEK)
                except OSError:
                    data = b""
                if not data:
                    raise _Gone
            if left <= 0:
                return

    # -- requests -------------------------------------------------------------------------

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.owner._record(self.path, headers, body)
        if self.path.startswith("/tools/"):
            self._tool(self.path[len("/tools/") :], body)
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_error(404, f"Unknown path {self.path}", "invalid_request_error", None)
            return
        auth = headers.get("authorization", "")
        if auth != f"Bearer {self.owner.api_key}":
            given = auth.removeprefix("Bearer ")
            self._send_error(
                401,
                f"Incorrect API key provided: {given}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_error(400, "messages is required", "invalid_request_error", None)
            return
        step = self.owner._next()
        if step is None:
            self._send_error(500, "fake: no scripted response left", "server_error", None)
            return
        if isinstance(step, HttpError):
            self._send_error(step.status, step.message, step.type, step.code)
            return
        if not body.get("stream"):
            self._send_error(
                400, "fake: only stream=true is scripted", "invalid_request_error", None
            )
            return
        log = StreamLog()
        with self.owner._lock:
            self.owner.streams.append(log)
        try:
            self._stream(step, str(body.get("model", "")), log)
        except _Gone:
            self.owner._client_left(log)
            self.close_connection = True

    def _tool(self, name: str, body: Any) -> None:
        with self.owner._lock:
            self.owner.tool_posts.append((name, body))
            result = self.owner.tool_results.get(name, {"ok": True})
            delay = self.owner.tool_delay_s
        if delay:
            try:
                self._wait(delay)
            except _Gone:
                self.close_connection = True
                return
        if isinstance(result, HttpError):
            self._send_error(result.status, result.message, result.type, result.code)
        else:
            self._send_json(200, result)

    def _stream(self, step: Scripted, model: str, log: StreamLog) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.flush()
        completion_id = self.owner._new_id("chatcmpl-fake")
        created = int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            log.delta_times.append(time.monotonic())

        def text(value: str, size: int, first_delay: float, delay: float) -> None:
            pieces = [value[i : i + size] for i in range(0, len(value), max(1, size))]
            self._wait(first_delay)
            event({"role": "assistant", "content": "", "refusal": None})
            for n, piece in enumerate(pieces):
                if n:
                    self._wait(delay)
                event({"content": piece})

        def done(finish: str) -> None:
            event({}, finish)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")  # the terminating zero-length chunk
            log.finished_at = time.monotonic()

        if isinstance(step, Text):
            text(step.text, step.chunk_chars, step.first_delay_s, step.delay_s)
            done("stop")
        elif isinstance(step, ToolCalls):
            if step.text:
                text(step.text, step.chunk_chars, step.first_delay_s, step.delay_s)
            else:
                self._wait(step.first_delay_s)
                event({"role": "assistant", "content": None, "refusal": None})
            for index, call in enumerate(step.calls):
                call_id = call.id or self.owner._new_id("call_fake")
                self._wait(step.delay_s)
                event(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    }
                )
                size = max(1, step.chunk_chars)
                for i in range(0, len(call.arguments), size):
                    self._wait(step.delay_s)
                    fragment = call.arguments[i : i + size]
                    event({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            done("tool_calls")
        elif isinstance(step, Stall):
            if step.text_before:
                text(step.text_before, 4, 0.0, 0.0)
            self._wait(step.seconds)
            self.close_connection = True
        elif isinstance(step, Drop):
            if step.text_before:
                text(step.text_before, 4, 0.0, 0.0)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif isinstance(step, Malformed):
            if step.text_before:
                text(step.text_before, 4, 0.0, 0.0)
            self._chunk(b'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n')
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
            log.finished_at = time.monotonic()
