"""A loopback fake of ElevenLabs' streaming text-to-speech HTTP API.

`FakeElevenLabs` is an `HttpFake` (`tests.fakes.http`: HTTP/1.1 on 127.0.0.1, a free port;
use it as a context manager).  It serves ``POST /v1/text-to-speech/{voice_id}/stream``
(chunked transfer encoding), checks the ``xi-api-key`` header, keeps one `Synthesis` per
request in `syntheses` (voice, query, JSON body, client port, how its stream ended) and
streams a 440 Hz tone whose length follows the text (`gateway.providers.fake.tone_pcm`, 60 ms
per character) as 8 kHz 16-bit PCM.

`mode` switches failures per test:

- ``"ok"``: the tone, `chunk_bytes` per chunk, `first_byte_delay_s` before the status line
  and `chunk_delay_s` between chunks or, with `realtime_factor` set, at a generation rate
  that many times faster than real time: chunk n leaves n times its duration / realtime_factor
  after the first (ElevenLabs' stream endpoint returns the audio as it is generated, in
  chunked transfer encoding: https://elevenlabs.io/docs/api-reference/text-to-speech/stream
  and https://elevenlabs.io/docs/api-reference/streaming; it publishes a time to first
  audio per model, about 75 ms for Flash, https://elevenlabs.io/docs/overview/models, but no
  generation rate, so the factor is the test's or bench's assumption).
- ``"401"``: an ElevenLabs-style ``invalid_api_key`` error (also sent whenever the key is wrong).
- ``"500"``: an internal error with a JSON body.
- ``"stall"``: nothing at all (not even the status line) for `stall_s`.
- ``"stall_mid"``: headers and the first chunk, then nothing for `stall_s`.
- ``"cut"``: half the chunks, then the connection closes without the terminating chunk.
- ``"odd"``: the tone plus one stray byte (an odd byte count), ended properly.
- ``"json200"``: status 200 with ``application/json`` and an error body instead of audio.

While it waits between chunks the handler watches the socket, so a client that closes the
connection mid-stream is noticed at once and counted in `aborted`.  On exit the server stops,
drops open connections and joins all its threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.providers.fake import tone_pcm
from tests.fakes.http import ClientGone, Exchange, HttpFake

MODES = ("ok", "401", "500", "stall", "stall_mid", "cut", "odd", "json200")
_MS_PER_CHAR = 60
_BYTES_PER_S = 16000  # the tone: 8 kHz 16-bit mono


@dataclass
class Synthesis:
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


class FakeElevenLabs(HttpFake):
    """The fake's configuration and records; ``with FakeElevenLabs(api_key=...) as fake``."""

    thread_name = "fake-elevenlabs"

    def __init__(
        self,
        api_key: str = "test-key",
        mode: str = "ok",
        chunk_bytes: int = 1600,  # 100 ms of audio per chunk
        first_byte_delay_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        stall_s: float = 30.0,
        realtime_factor: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__()
        self.api_key = api_key
        self.mode = mode
        self.chunk_bytes = chunk_bytes
        self.first_byte_delay_s = first_byte_delay_s
        self.chunk_delay_s = chunk_delay_s
        self.stall_s = stall_s
        self.realtime_factor = realtime_factor
        self.syntheses: list[Synthesis] = []
        self.route("POST", "/v1/text-to-speech/(?P<voice>[^/]+)/stream", self._synthesize)

    @property
    def base_url(self) -> str:
        return self.origin

    @property
    def aborted(self) -> int:
        """How many responses the client closed before their end."""
        with self.lock:
            return sum(1 for r in self.syntheses if r.outcome == "aborted")

    @staticmethod
    def audio_for(text: str) -> bytes:
        """The PCM the fake streams for `text` in mode "ok"."""
        return tone_pcm(len(text) * _MS_PER_CHAR)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 3.0) -> bool:
        """Poll `predicate()` until it is true or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    # -- the endpoint --------------------------------------------------------------------

    def not_found(self, ex: Exchange) -> None:
        ex.send_json(404, {"detail": {"status": "not_found", "message": "Not found"}})

    def _synthesize(self, ex: Exchange) -> None:
        received = ex.received
        body = received.body if received.body is not None else {}
        if isinstance(body, bytes):
            ex.send_json(400, {"detail": {"status": "invalid_json", "message": "Bad JSON"}})
            return
        record = Synthesis(
            voice_id=ex.params["voice"],
            query=received.query,
            body=body,
            api_key=received.headers.get("xi-api-key"),
            client_port=received.client_port,
            started=received.at,
        )
        with self.lock:
            self.syntheses.append(record)
            mode = self.mode
        try:
            self._respond(ex, record, mode)
        except ClientGone:
            record.outcome = "aborted"
            ex.hang_up()
        record.ended_at = time.monotonic()

    def _respond(self, ex: Exchange, record: Synthesis, mode: str) -> None:
        if mode == "401" or record.api_key != self.api_key:
            record.outcome = "error"
            error = {"status": "invalid_api_key", "message": "Invalid API key"}
            ex.send_json(401, {"detail": error})
            return
        if mode == "500":
            record.outcome = "error"
            error = {"status": "internal_error", "message": "Something broke"}
            ex.send_json(500, {"detail": error})
            return
        if mode == "stall":
            ex.wait(self.stall_s)
        ex.wait(self.first_byte_delay_s)
        if mode == "json200":
            record.outcome = "error"
            ex.send_json(200, {"detail": {"status": "oops", "message": "Not audio"}})
            return
        audio = self.audio_for(str(record.body.get("text", "")))
        if mode == "odd":
            audio += b"\x01"
        step = max(1, self.chunk_bytes)
        chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
        if mode == "cut":
            chunks = chunks[: max(1, len(chunks) // 2)]
        ex.start_chunked(200, "audio/pcm")
        factor = self.realtime_factor
        first_at = time.monotonic()
        for i, chunk in enumerate(chunks):
            if i and factor:  # generated `factor` times faster than it plays, on a schedule
                due = first_at + i * step / _BYTES_PER_S / factor
                ex.wait(max(0.0, due - time.monotonic()))
            elif i:
                ex.wait(self.chunk_delay_s)
            ex.chunk(chunk)
            with self.lock:
                record.bytes_sent += len(chunk)
                if record.first_byte_at is None:
                    record.first_byte_at = time.monotonic()
            if mode == "stall_mid":
                ex.wait(self.stall_s)
        if mode == "cut":
            record.outcome = "cut"
            ex.drop()
            return
        ex.end_chunks()
        record.outcome = "complete"
