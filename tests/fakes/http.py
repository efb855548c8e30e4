"""HTTP on loopback for the tests: the server every HTTP fake is built on, and the client
calls the fakes and the tests make.

`HttpFake` is the base of the fakes (a bot, OCS, OpenAI, ElevenLabs, Plivo's REST API).  It
serves real HTTP/1.1 (the standard library's ``ThreadingHTTPServer``) on 127.0.0.1 at a free
port, from a background thread between `start()` and `stop()` (or as a context manager):

* a subclass maps method + path to its handlers with `route` (a regex matched against the
  whole path, query left out; its named groups are the handler's `Exchange.params`);
  anything else gets `not_found` (404 ``not found``, text; a fake may answer like its
  vendor instead);
* before a handler runs, the request is read whole and logged in `requests` (`Received`:
  method, path, query, lowercased headers, body as JSON or bytes, time, client port);
* the handler answers through its `Exchange`: `send` / `send_json` (a Content-Length body),
  `start_chunked` / `chunk` / `end_chunks` (a streamed body), `wait` (sleep while
  watching the socket), `hang_up` (answer nothing) or `drop` (reset mid-answer);
  `Reply` / `Raw` / `Hang` are answers a test scripts ahead (`answer`);
* `stop` is guaranteed: it sets `stopping` (every wait here ends on it), closes the
  keep-alive connections still open and joins every handler thread.

A client that goes away is normal here (barge-in, timeouts): `wait` and `chunk` raise
`ClientGone`, which ends the exchange quietly unless the handler catches it to record it.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ClientGone",
    "Exchange",
    "Hang",
    "HttpFake",
    "Raw",
    "Received",
    "Reply",
    "Step",
    "get_json",
    "post_json",
    "request",
]

_WATCH_S = 0.02  # how often `Exchange.wait` looks at the socket


class ClientGone(Exception):
    """The client closed the connection (or the fake is stopping)."""


@dataclass(frozen=True)
class Received:
    """One request as the fake read it."""

    method: str
    path: str  # as sent, query included
    query: dict[str, str]  # the last value of each query parameter
    headers: dict[str, str]  # names lowercased
    body: Any  # the JSON body; the bytes when it is not JSON; None when empty
    at: float  # time.monotonic() when it was read
    client_port: int


# -- scripted answers -----------------------------------------------------------------------


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


# -- the server -------------------------------------------------------------------------------


class Exchange(BaseHTTPRequestHandler):
    """One request being answered: `received` and `params` say what came, the methods
    below answer it."""

    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies
    server: _Server
    received: Received
    params: dict[str, str]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the fake's records instead."""

    def setup(self) -> None:
        super().setup()
        with self.server.fake.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake.lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self.server.fake._dispatch(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- answers ---------------------------------------------------------------------------

    def send(self, status: int, body: bytes, content_type: str) -> None:
        """Answer with `body` and its Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, payload: Any) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json")

    def answer(self, step: Step) -> None:
        """Answer as `step` scripts it; a delay or a hang ends early when the fake stops."""
        stopping = self.server.fake.stopping
        if isinstance(step, Reply):
            if step.delay_s:
                stopping.wait(step.delay_s)
            self.send_json(step.status, step.payload)
        elif isinstance(step, Raw):
            self.send(step.status, step.body, step.content_type)
        else:
            stopping.wait(step.seconds)
            self.hang_up()

    def start_chunked(
        self, status: int, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send the status line and headers of a body sent in chunks (Transfer-Encoding:
        chunked); then `chunk` and `end_chunks`."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.flush()
        except OSError as exc:
            raise ClientGone from exc

    def chunk(self, data: bytes) -> None:
        """Send one chunk of a chunked body (b"" is the terminating one)."""
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError as exc:
            raise ClientGone from exc

    def end_chunks(self) -> None:
        self.chunk(b"")

    def wait(self, seconds: float) -> None:
        """Sleep `seconds`, watching the socket meanwhile (at least once, even for 0 s):
        `ClientGone` as soon as the client closes it or the fake stops."""
        deadline = time.monotonic() + seconds
        sock: socket.socket = self.connection
        while True:
            if self.server.fake.stopping.is_set():
                raise ClientGone
            left = deadline - time.monotonic()
            readable, _, _ = select.select([sock], [], [], max(0.0, min(left, _WATCH_S)))
            if readable:
                try:
                    peek = sock.recv(1, socket.MSG_PEEK)
                except OSError:
                    raise ClientGone from None
                if not peek:
                    raise ClientGone
                time.sleep(max(0.0, min(left, _WATCH_S)))  # bytes the client sent ahead: leave them
            if left <= 0:
                return

    def hang_up(self) -> None:
        """Close the connection once the handler returns, whatever was (not) sent."""
        self.close_connection = True

    def drop(self) -> None:
        """Close the connection now, in the middle of the answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, fake: HttpFake) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), Exchange)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets its connection is normal here (barge-in, timeouts)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


Handler = Callable[[Exchange], None]


class HttpFake:
    """Base of the loopback HTTP fakes; see the module docstring.  `lock` (a condition,
    notified at each request) guards the fake's records."""

    thread_name = "fake-http"

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.stopping = threading.Event()
        self.requests: list[Received] = []
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer `method` requests whose path matches the regex `path` with `handler`."""
        self._routes.append((method, re.compile(path), handler))

    def not_found(self, ex: Exchange) -> None:
        ex.send(404, b"not found", "text/plain")

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections the server still holds open."""
        with self.lock:
            return len(self._server.connections) if self._server is not None else 0

    def start(self) -> Self:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        with self.lock:
            connections = list(server.connections)
        for conn in connections:  # wake the handlers waiting for a next keep-alive request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- requests ----------------------------------------------------------------------------

    def _dispatch(self, ex: Exchange) -> None:
        length = int(ex.headers.get("Content-Length") or 0)
        raw = ex.rfile.read(length) if length else b""
        url = urlsplit(ex.path)
        ex.params = {}
        ex.received = Received(
            method=ex.command,
            path=ex.path,
            query={k: v[-1] for k, v in parse_qs(url.query).items()},
            headers={k.lower(): v for k, v in ex.headers.items()},
            body=_json_or_bytes(raw),
            at=time.monotonic(),
            client_port=int(ex.client_address[1]),
        )
        with self.lock:
            self.requests.append(ex.received)
            self.lock.notify_all()
        handler: Handler = self.not_found
        for method, pattern, candidate in self._routes:
            found = pattern.fullmatch(url.path) if method == ex.command else None
            if found is not None:
                ex.params, handler = found.groupdict(), candidate
                break
        try:
            handler(ex)
        except ClientGone:
            ex.hang_up()


def _json_or_bytes(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw


# -- the client -------------------------------------------------------------------------------


def request(
    url: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """Send one request; (status, body), error statuses included."""
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def post_json(url: str, payload: Any, token: str) -> tuple[int, dict[str, Any]]:
    """POST JSON with a bearer token; (status, JSON answer)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, body = request(url, json.dumps(payload).encode(), headers, "POST")
    return status, json.loads(body)


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, body = request(url)
    return status, json.loads(body)
