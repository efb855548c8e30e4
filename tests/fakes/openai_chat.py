"""A loopback fake of OpenAI's Chat Completions API (streaming) plus a tiny HTTP tool server.

`FakeOpenAi` is an `HttpFake` (`tests.fakes.http`: HTTP/1.1 on 127.0.0.1, a free port).
``POST /v1/chat/completions`` with ``"stream": true`` answers with Server-Sent Events in
OpenAI's format, sent with chunked transfer encoding like the real API::

    data: {"id": "chatcmpl-...", "object": "chat.completion.chunk", "created": ...,
           "model": ..., "choices": [{"index": 0, "delta": {...}, "finish_reason": null}]}

    data: [DONE]

It checks ``Authorization: Bearer <api_key>`` (401 with OpenAI's error JSON otherwise; the
error message quotes the key it was given, so tests can check a client never repeats it)
and records every request in `requests` (`tests.fakes.http.Received`).  Each request takes
the next scripted response from the queue (`script`): `Text`, `ToolCalls`, `HttpError`,
`Stall`, `Drop` or `Malformed`.  ``POST /tools/<name>`` is the HTTP tool server: it records
the posted JSON in `tool_posts` and answers with ``tool_results[name]`` (JSON; default
``{"ok": true}``).

With `by_position` set, the queue is not consumed: a request whose messages hold n user
and tool messages gets the n-th response, as a deterministic model answers the same
conversation the same way.  A reply generated ahead of the turn's end and dropped (the
caller went on) is then asked again with the whole turn and gets the same response.

`fault`, while set, answers every chat request instead of the queue (a vendor outage a test
switches on and off between turns); `default`, when set, answers once the queue is empty.

While it waits between deltas the server watches the socket, so it notices a client that
goes away (`disconnects` counts them, `disconnected` is set) without writing to it.

Realistic token stream (`Text(..., tokens_per_s=50)`): OpenAI streams a completion as
``chat.completion.chunk`` events, each delta carrying what the model generated since the
last one, in practice one token (https://platform.openai.com/docs/api-reference/chat-streaming,
https://developers.openai.com/api/docs/guides/streaming-responses?api-mode=chat).  The fake
then cuts the text into token-sized pieces (`token_pieces`: a word with its leading space,
a punctuation mark, longer words in pieces of about four characters, OpenAI's rule of thumb
of 1 token ≈ 4 characters of English,
https://help.openai.com/en/articles/4936856-what-are-tokens-and-how-to-count-them) and sends
them at `tokens_per_s` from the first token on (on a schedule, so the rate does not drift).
OpenAI publishes no fixed output speed: its latency guide measures it in tokens per second
and ties it to the model (https://developers.openai.com/api/docs/guides/latency-optimization);
the rate is the test's or bench's assumption.  Each `StreamLog` records the client port of
the connection it was sent on, so a test can tell whether a client reused its connection.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import ClientGone, Exchange, HttpFake

__all__ = [
    "Drop",
    "FakeOpenAi",
    "HttpError",
    "Malformed",
    "Stall",
    "Text",
    "ToolCall",
    "ToolCalls",
    "token_pieces",
]

# A word with its leading space, a run of digits or of punctuation, or whitespace.
_TOKEN_RE = re.compile(r" ?[^\W\d_]+| ?\d+| ?[^\w\s]+|\s+")
_LONG_TOKEN = 8  # pieces longer than this are cut in pieces of about 4 characters


def token_pieces(text: str) -> list[str]:
    """`text` cut in about the pieces a tokenizer makes (see the module docstring); they
    join back to `text`."""
    pieces: list[str] = []
    pos = 0
    for match in _TOKEN_RE.finditer(text):
        if match.start() > pos:  # anything the pattern does not name (e.g. "_")
            pieces.append(text[pos : match.start()])
        piece = match.group()
        if len(piece) > _LONG_TOKEN:
            pieces.extend(piece[i : i + 4] for i in range(0, len(piece), 4))
        else:
            pieces.append(piece)
        pos = match.end()
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


@dataclass(frozen=True)
class Text:
    """Stream `text` in deltas of `chunk_chars` characters `delay_s` apart or, with
    `tokens_per_s`, in token-sized deltas at that rate (see the module docstring)."""

    text: str
    chunk_chars: int = 4
    first_delay_s: float = 0.0  # before the first delta (time to first token)
    delay_s: float = 0.0  # between deltas
    tokens_per_s: float | None = None


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
class StreamLog:
    """What the fake sent for one streamed response (monotonic timestamps)."""

    delta_times: list[float] = field(default_factory=list)
    finished_at: float = 0.0  # 0.0 = never finished (client left, drop, stall)
    client_left: bool = False
    client_port: int = 0  # the client's end of the connection it was sent on


def _error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


_ASKS = ("user", "tool")  # messages that ask the model for its next response


class FakeOpenAi(HttpFake):
    """The fake OpenAI server; use as a context manager (``with FakeOpenAi("sk-x") as fake``)."""

    thread_name = "fake-openai"

    def __init__(self, api_key: str = "sk-test-fake-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.script: deque[Scripted] = deque()
        self.fault: Scripted | None = None
        self.default: Scripted | None = None
        self.by_position = False
        self.streams: list[StreamLog] = []
        self.tool_posts: list[tuple[str, Any]] = []
        self.tool_results: dict[str, Any] = {}
        self.tool_delay_s: float = 0.0
        self.disconnects = 0
        self.disconnected = threading.Event()
        self._ids = 0
        self.route("POST", "/v1/chat/completions/?", self._chat)
        self.route("POST", "/tools/(?P<name>.+)", self._tool)

    @property
    def base_url(self) -> str:
        """What to give an OpenAI client as ``base_url``."""
        return f"{self.origin}/v1"

    def tool_url(self, name: str) -> str:
        """The URL of the fake HTTP tool `name`."""
        return f"{self.origin}/tools/{name}"

    # -- script ---------------------------------------------------------------------------

    def add(self, *responses: Scripted) -> None:
        """Queue responses; each chat request takes the next one."""
        with self.lock:
            self.script.extend(responses)

    def chat_client_ports(self) -> list[int]:
        """The client port of each chat completion request, in order: equal ports are
        one kept-alive connection."""
        with self.lock:
            return [r.client_port for r in self.requests if r.path.endswith("/chat/completions")]

    def chat_requests(self) -> list[dict[str, Any]]:
        """The bodies of the chat completion requests, in order."""
        with self.lock:
            return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    # -- internals ------------------------------------------------------------------------

    def _next(self, messages: list[Any]) -> Scripted | None:
        with self.lock:
            if self.fault is not None:
                return self.fault
            if self.by_position:
                n = sum(1 for m in messages if isinstance(m, dict) and m.get("role") in _ASKS)
                return self.script[n - 1] if 0 < n <= len(self.script) else self.default
            return self.script.popleft() if self.script else self.default

    def _new_id(self, prefix: str) -> str:
        with self.lock:
            self._ids += 1
            return f"{prefix}{self._ids}"

    def _client_left(self, log: StreamLog | None) -> None:
        with self.lock:
            self.disconnects += 1
            if log is not None:
                log.client_left = True
        self.disconnected.set()

    # -- the endpoints ----------------------------------------------------------------------

    def not_found(self, ex: Exchange) -> None:
        ex.send_json(404, _error(f"Unknown path {ex.path}", "invalid_request_error"))

    def _chat(self, ex: Exchange) -> None:
        body = ex.received.body
        auth = ex.received.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            given = auth.removeprefix("Bearer ")
            message = (
                f"Incorrect API key provided: {given}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            ex.send_json(401, _error(message, "invalid_request_error", "invalid_api_key"))
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            ex.send_json(400, _error("messages is required", "invalid_request_error"))
            return
        step = self._next(body["messages"])
        if step is None:
            ex.send_json(500, _error("fake: no scripted response left", "server_error"))
            return
        if isinstance(step, HttpError):
            ex.send_json(step.status, _error(step.message, step.type, step.code))
            return
        if not body.get("stream"):
            ex.send_json(400, _error("fake: only stream=true is scripted", "invalid_request_error"))
            return
        log = StreamLog(client_port=ex.received.client_port)
        with self.lock:
            self.streams.append(log)
        try:
            self._stream(ex, step, str(body.get("model", "")), log)
        except ClientGone:
            self._client_left(log)
            ex.hang_up()

    def _tool(self, ex: Exchange) -> None:
        name = ex.params["name"]
        with self.lock:
            self.tool_posts.append((name, ex.received.body))
            result = self.tool_results.get(name, {"ok": True})
            delay = self.tool_delay_s
        if delay:
            ex.wait(delay)  # ClientGone: no answer
        if isinstance(result, HttpError):
            ex.send_json(result.status, _error(result.message, result.type, result.code))
        else:
            ex.send_json(200, result)

    def _stream(self, ex: Exchange, step: Scripted, model: str, log: StreamLog) -> None:
        ex.start_chunked(200, "text/event-stream; charset=utf-8", {"Cache-Control": "no-cache"})
        completion_id = self._new_id("chatcmpl-fake")
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
            ex.chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            log.delta_times.append(time.monotonic())

        def text(
            value: str, size: int, first_delay: float, delay: float, rate: float | None = None
        ) -> None:
            if rate:
                pieces = token_pieces(value)
            else:
                pieces = [value[i : i + size] for i in range(0, len(value), max(1, size))]
            ex.wait(first_delay)
            first_at = time.monotonic()
            event({"role": "assistant", "content": "", "refusal": None})
            for n, piece in enumerate(pieces):
                if rate:  # token n is due n / rate after the first: no drift
                    ex.wait(max(0.0, first_at + n / rate - time.monotonic()))
                elif n:
                    ex.wait(delay)
                event({"content": piece})

        def done(finish: str) -> None:
            event({}, finish)
            ex.chunk(b"data: [DONE]\n\n")
            ex.end_chunks()
            log.finished_at = time.monotonic()

        if isinstance(step, Text):
            text(step.text, step.chunk_chars, step.first_delay_s, step.delay_s, step.tokens_per_s)
            done("stop")
        elif isinstance(step, ToolCalls):
            if step.text:
                text(step.text, step.chunk_chars, step.first_delay_s, step.delay_s)
            else:
                ex.wait(step.first_delay_s)
                event({"role": "assistant", "content": None, "refusal": None})
            for index, call in enumerate(step.calls):
                call_id = call.id or self._new_id("call_fake")
                ex.wait(step.delay_s)
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
                    ex.wait(step.delay_s)
                    fragment = call.arguments[i : i + size]
                    event({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            done("tool_calls")
        elif isinstance(step, Stall):
            if step.text_before:
                text(step.text_before, 4, 0.0, 0.0)
            ex.wait(step.seconds)
            ex.hang_up()
        elif isinstance(step, Drop):
            if step.text_before:
                text(step.text_before, 4, 0.0, 0.0)
            ex.drop()
        elif isinstance(step, Malformed):
            if step.text_before:
                text(step.text_before, 4, 0.0, 0.0)
            ex.chunk(b'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n')
            ex.chunk(b"data: [DONE]\n\n")
            ex.end_chunks()
            log.finished_at = time.monotonic()
