"""A loopback fake of ElevenLabs' streaming text-to-speech HTTP API.

It serves ``POST /v1/text-to-speech/{voice_id}/stream`` on 127.0.0.1 (a real HTTP/1.1 server
in background threads, chunked transfer encoding), checks the ``xi-api-key`` header, records
every request (query, JSON body, client port) and streams a 440 Hz tone whose length follows
the text (`gateway.providers.fake.tone_pcm`, 60 ms per character) as 8 kHz 16-bit PCM.

`mode` switches failures per test:

- ``"ok"``: the tone, `chunk_bytes` per chunk, `first_byte_delay_s` before the status line
  and `chunk_delay_s` between chunks.
- ``"401"``: an ElevenLabs-style ``invalid_api_key`` error (also sent whenever the key is wrong).
- ``"500"``: an internal error with a JSON body.
- ``"stall"``: nothing at all (not even the status line) for `stall_s`.
- ``"stall_mid"``: headers and the first chunk, then nothing for `stall_s`.
- ``"cut"``: half the chunks, then the connection closes without the terminating chunk.
- ``"odd"``: the tone plus one stray byte (an odd byte count), ended properly.
- ``"json200"``: status 200 with ``application/json`` and an error body instead of audio.

While it waits between chunks the handler watches the socket, so a client that closes the
connection mid-stream is noticed at once and counted in `aborted`.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.providers.fake import tone_pcm

MODES = ("ok", "401", "500", "stall", "stall_mid", "cut", "odd", "json200")
_PATH = re.compile(r"^/v1/text-to-speech/(?P<voice>[^/]+)/stream$")
_MS_PER_CHAR = 60


@dataclass
class RecordedRequest:
    """One request as the fake saw it, and how its response ended."""

    voice_id: str
    query: dict[str, str]
    body: dict[str, Any]
    api_key: str | None
    client_port: int
    started: float  # time.monotonic() when the request was read
    bytes_sent: int = 0
    first_byte_at: float | None = None  # when the first audio chunk was written
    ended_at: float | None = None
    outcome: str = "pending"  # "complete", "aborted" (client went away), "cut", "error"


@dataclass
class FakeElevenLabs:
    """The fake's configuration and records; start it with `serve_elevenlabs()`."""

    api_key: str = "test-key"
    mode: str = "ok"
    chunk_bytes: int = 1600  # 100 ms of audio per chunk
    first_byte_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    stall_s: float = 30.0
    requests: list[RecordedRequest] = field(default_factory=list)
    base_url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _connections: set[socket.socket] = field(default_factory=set)

    @property
    def aborted(self) -> int:
        """How many responses the client closed before their end."""
        with self._lock:
            return sum(1 for r in self.requests if r.outcome == "aborted")

    @property
    def open_connections(self) -> int:
        """Client connections the server still holds open."""
        with self._lock:
            return len(self._connections)

    @staticmethod
    def audio_for(text: str) -> bytes:
        """The PCM the fake streams for `text` in mode "ok"."""
        return tone_pcm(len(text) * _MS_PER_CHAR)

    def wait_for(self, predicate: Any, timeout_s: float = 3.0) -> bool:
        """Poll `predicate()` until it is true or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())


class _ClientGone(Exception):
    """The client closed the connection."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the records instead."""

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # -- helpers -------------------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, raising `_ClientGone` as soon as the client disconnects."""
        fake = self.server.fake
        deadline = time.monotonic() + seconds
        while True:
            if fake._stop.is_set():
                raise _ClientGone
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable:
                try:
                    peek = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    raise _ClientGone from None
                if not peek:
                    raise _ClientGone
                # Unexpected bytes (a pipelined request): leave them and just sleep.
                time.sleep(min(left, 0.05))

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _write_chunk(self, record: RecordedRequest, data: bytes) -> None:
        try:
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError:
            raise _ClientGone from None
        with self.server.fake._lock:
            record.bytes_sent += len(data)
            if record.first_byte_at is None:
                record.first_byte_at = time.monotonic()

    # -- the endpoint --------------------------------------------------------------------

    def do_POST(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        match = _PATH.match(url.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if match is None:
            self._send_json(404, {"detail": {"status": "not_found", "message": "Not found"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"detail": {"status": "invalid_json", "message": "Bad JSON"}})
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        record = RecordedRequest(
            voice_id=match["voice"],
            query=query,
            body=body,
            api_key=self.headers.get("xi-api-key"),
            client_port=self.client_address[1],
            started=time.monotonic(),
        )
        with fake._lock:
            fake.requests.append(record)
            mode = fake.mode
        try:
            self._respond(record, mode)
        except _ClientGone:
            record.outcome = "aborted"
            self.close_connection = True
        record.ended_at = time.monotonic()

    def _respond(self, record: RecordedRequest, mode: str) -> None:
        fake = self.server.fake
        if mode == "401" or record.api_key != fake.api_key:
            record.outcome = "error"
            self._send_json(
                401,
                {
                    "detail": {
                        "status": "invalid_api_key",
                        "message": "Invalid API key",
                    }
                },
            )
            return
        if mode == "500":
            record.outcome = "error"
            self._send_json(
                500, {"detail": {"status": "internal_error", "message": "Something broke"}}
            )
            return
        if mode == "stall":
            self._wait(fake.stall_s)
        self._wait(fake.first_byte_delay_s)
        if mode == "json200":
            record.outcome = "error"
            self._send_json(200, {"detail": {"status": "oops", "message": "Not audio"}})
            return
        text = str(record.body.get("text", ""))
        audio = fake.audio_for(text)
        if mode == "odd":
            audio += b"\x01"
        step = max(1, fake.chunk_bytes)
        chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
        if mode == "cut":
            chunks = chunks[: max(1, len(chunks) // 2)]
        self.send_response(200)
        self.send_header("Content-Type", "audio/pcm")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, chunk in enumerate(chunks):
            if i:
                self._wait(fake.chunk_delay_s)
            self._write_chunk(record, chunk)
            if mode == "stall_mid":
                self._wait(fake.stall_s)
        if mode == "cut":
            record.outcome = "cut"
            self.close_connection = True
            self.wfile.flush()
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            raise _ClientGone from None
        record.outcome = "complete"


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, fake: FakeElevenLabs) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets its connection is normal here (barge-in, timeouts)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@contextlib.contextmanager
def serve_elevenlabs(**options: Any) -> Iterator[FakeElevenLabs]:
    """Run a fake on 127.0.0.1 (ephemeral port) for the duration of the block.

    Keyword arguments set `FakeElevenLabs` fields; `fake.base_url` is where it listens.
    On exit the server stops, drops open connections and joins all its threads.
    """
    fake = FakeElevenLabs(**options)
    if fake.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {fake.mode!r}")
    server = _Server(fake)
    host, port = server.server_address[:2]
    fake.base_url = f"http://{host!s}:{port}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-elevenlabs"
    )
    thread.start()
    try:
        yield fake
    finally:
        fake._stop.set()
        server.shutdown()
        with fake._lock:
            conns = list(fake._connections)
        for conn in conns:  # wake handlers blocked reading the next keep-alive request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join()
