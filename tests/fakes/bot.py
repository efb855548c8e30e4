"""A loopback fake of a customer's bot (webhook mode), its audio file server and its HTTP TTS.

`FakeBot` is an `HttpFake` (`tests.fakes.http`: HTTP/1.1 on 127.0.0.1, a free port):

* ``POST /bot/start`` (the call-start endpoint, ``webhook.start_url``) and ``POST
  /bot/turn`` (the per-turn endpoint, ``webhook.turn_url``) each answer with the next step
  scripted for that path (`on_start` / `on_turn`): `Reply` (JSON), `Raw` (any bytes and
  status) or `Hang` (answer nothing for a while), from `tests.fakes.http`.  An empty queue
  answers 500.
* ``POST /tts`` answers with `tts_audio` (bytes and content type) - the HTTP TTS
  (``webhook.tts_url``).
* ``GET /audio/<name>`` serves ``files[name]`` (bytes, content type), 404 otherwise; with
  `chunked` set the body is sent without Content-Length, in chunks.

Every request is recorded in `requests` (`tests.fakes.http.Received`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from tests.fakes.http import Exchange, HttpFake, Step

__all__ = ["FakeBot"]

_CHUNK = 65536


class FakeBot(HttpFake):
    """The fake bot server; use as a context manager."""

    thread_name = "fake-bot"

    def __init__(self) -> None:
        super().__init__()
        self.start_script: deque[Step] = deque()
        self.turn_script: deque[Step] = deque()
        self.tts_audio: tuple[bytes, str] = (b"", "audio/wav")
        self.files: dict[str, tuple[bytes, str]] = {}
        self.chunked = False
        self.route("POST", "/bot/start", lambda ex: self._scripted(ex, self.start_script))
        self.route("POST", "/bot/turn", lambda ex: self._scripted(ex, self.turn_script))
        self.route("POST", "/tts", lambda ex: ex.send(200, *self.tts_audio))
        self.route("GET", "/audio/(?P<name>.+)", self._audio)

    @property
    def base_url(self) -> str:
        return self.origin

    def url(self, path: str) -> str:
        return self.origin + path

    # -- script ---------------------------------------------------------------------------

    def on_start(self, *steps: Step) -> None:
        with self.lock:
            self.start_script.extend(steps)

    def on_turn(self, *steps: Step) -> None:
        with self.lock:
            self.turn_script.extend(steps)

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies posted to `path`, in order."""
        with self.lock:
            return [r.body for r in self.requests if r.path == path]

    # -- the endpoints ----------------------------------------------------------------------

    def _scripted(self, ex: Exchange, script: deque[Step]) -> None:
        with self.lock:
            step = script.popleft() if script else None
        if step is None:
            ex.send(500, b'{"error": "fake: nothing scripted"}', "application/json")
        else:
            ex.answer(step)

    def _audio(self, ex: Exchange) -> None:
        found = self.files.get(ex.params["name"])
        if found is None:
            self.not_found(ex)
        elif not self.chunked:
            ex.send(200, *found)
        else:
            body, content_type = found
            ex.start_chunked(200, content_type)
            for i in range(0, len(body), _CHUNK):
                ex.chunk(body[i : i + _CHUNK])
            ex.end_chunks()
