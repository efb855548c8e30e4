"""A loopback fake of an Ori-style OCS talking to sipagent as its DCS.

`FakeOcs` is an `HttpFake` (`tests.fakes.http`: HTTP/1.1 on 127.0.0.1, a free port):

* ``POST /ocs`` (``external.ocs_url``) records the event (``start``, ``message``,
  ``end``) and acknowledges it with the next scripted `Reply`/`Raw`/`Hang` step of
  `acks` (`tests.fakes.http`), or ``200 OK`` (text) when none is scripted.  Then, like
  OCS, it answers asynchronously: `answer` (event -> reply payload or None) decides what
  to deliver, and a background thread POSTs it, ``call_id`` added, to `response_url` (the
  DCS_RESPONSE_URL: sipagent's ``/dcs/response``) with `token` as the bearer, after
  `answer_delay_s`.  The outcomes (status, JSON) are kept in `deliveries`.
* ``GET /audio/<name>`` serves ``files[name]`` (what OCS's AI_TTS_URL produced).

`start_call` plays OCS starting a call through its DCS_URL (sipagent's ``/dcs/calls``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from tests.fakes.http import Exchange, HttpFake, Step, post_json

__all__ = ["FakeOcs"]

Answer = Callable[[dict[str, Any]], dict[str, Any] | None]


class FakeOcs(HttpFake):
    """The fake OCS; use as a context manager (stops its server and delivery threads)."""

    thread_name = "fake-ocs"

    def __init__(self, answer: Answer | None = None, answer_delay_s: float = 0.3) -> None:
        super().__init__()
        self.answer = answer
        self.answer_delay_s = answer_delay_s
        self.response_url = ""
        self.token = ""
        self.acks: deque[Step] = deque()
        self.files: dict[str, tuple[bytes, str]] = {}
        self.events: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.deliveries: list[tuple[int, dict[str, Any]]] = []
        self._senders: list[threading.Thread] = []
        self.route("POST", "/ocs", self._event)
        self.route("GET", "/audio/(?P<name>.+)", self._audio)

    @property
    def url(self) -> str:
        return self.origin + "/ocs"

    def audio_url(self, name: str) -> str:
        return self.origin + f"/audio/{name}"

    def stop(self) -> None:
        super().stop()
        for sender in list(self._senders):
            sender.join(timeout=15)

    # -- what OCS saw and did ------------------------------------------------------------

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("event") == kind]

    def wait_events(self, kind: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The first `count` events of `kind`, once they came (AssertionError after
        `timeout`)."""
        with self.lock:
            ok = self.lock.wait_for(
                lambda: len([e for e in self.events if e.get("event") == kind]) >= count,
                timeout,
            )
            found = [e for e in self.events if e.get("event") == kind]
        assert ok, f"fake OCS: {count} {kind!r} event(s) expected, got {found}"
        return found[:count]

    def wait_deliveries(self, count: int, timeout: float = 60.0) -> list[tuple[int, Any]]:
        with self.lock:
            ok = self.lock.wait_for(lambda: len(self.deliveries) >= count, timeout)
            got = list(self.deliveries)
        assert ok, f"fake OCS: {count} deliveries expected, got {got}"
        return got

    def start_call(self, dcs_url: str, api_key: str, body: Any) -> tuple[int, dict[str, Any]]:
        """Start a call the way OCS does, through its DCS_URL."""
        return post_json(dcs_url, body, api_key)

    # -- the endpoints -------------------------------------------------------------------

    def _audio(self, ex: Exchange) -> None:
        found = self.files.get(ex.params["name"])
        if found is None:
            self.not_found(ex)
        else:
            ex.send(200, *found)

    def _event(self, ex: Exchange) -> None:
        event = ex.received.body
        with self.lock:
            if isinstance(event, dict):
                self.events.append(event)
            self.headers.append(ex.received.headers)
            self.lock.notify_all()
            step = self.acks.popleft() if self.acks else None
        if isinstance(event, dict) and self.answer is not None:
            reply = self.answer(event)
            if reply is not None:
                payload = {"call_id": event.get("call_id"), **reply}
                sender = threading.Thread(target=self._deliver, args=(payload,), daemon=True)
                self._senders.append(sender)
                sender.start()
        if step is None:
            ex.send(200, b"OK", "text/plain")
        else:
            ex.answer(step)

    def _deliver(self, payload: dict[str, Any]) -> None:
        if self.stopping.wait(self.answer_delay_s):
            return
        try:
            outcome = post_json(self.response_url, payload, self.token)
        except OSError as exc:
            outcome = (0, {"error": str(exc)})
        with self.lock:
            self.deliveries.append(outcome)
            self.lock.notify_all()
