"""An OpenAI brain: streamed Chat Completions with per-call history, call context and tools.

Works with OpenAI and any OpenAI-compatible server (``base_url``).  One `OpenAiBrain` serves
every call of a worker; it keeps each call's conversation, keyed by ``CallContext.call_id``:

* the system prompt comes first, with ``{from_number}``, ``{to_number}``, ``{call_uuid}``
  and ``{call_id}`` filled in (no other braces are touched) and a short "Call context:"
  block appended (From, To, CallUUID and the call's other X-PH- values, where non-empty);
* then the greeting, the caller's turns and the agent's replies, tool calls and results.

Memory is bounded: at most ``max_calls`` conversations (least recently used dropped) and
``max_history_turns`` caller turns each (the oldest turns dropped); `forget` drops one.

A turn (`respond_stream`) streams the model's text deltas as they arrive.  Tools:

* ``end_call`` - the reply carries the ``hangup`` action; the text the model produced is
  spoken, or ``goodbye_line`` when it produced none;
* ``transfer_call`` (offered only with a ``transfer_target``) - the reply speaks
  ``transfer_line`` (after any text the model produced) and carries the action
  ``"transfer:<target>"``: the conversation transfers the call (REFER or Plivo's REST
  API, `gateway.policy.transfer`); if that fails the agent says so and the call goes on;
* every `HttpTool` - the arguments are POSTed as JSON to the tool's URL; the JSON answer
  (or ``{"error": ...}`` on failure or timeout) goes back to the model as a ``tool``
  message and the model's follow-up is streamed too, for up to ``max_tool_rounds`` rounds
  (after that the model is asked to answer without tools).

Interruption (barge-in): `ReplyStream.aclose` cancels the request at once.  The turn is
still recorded: the caller's words, any finished tool rounds, and the assistant text received
so far followed by `INTERRUPTED_MARK` (" [interrupted by the caller]"), so the model knows
the caller heard at most that much.  A turn that fails (`ProviderError`) leaves the
history as it was, so a retry or another brain can take the same turn again.

Errors are `ProviderError("openai", kind, ...)`: ``auth`` (401/403), ``http`` (other
statuses), ``timeout`` (no first token within ``first_token_timeout_s``, or no chunk for
``stream_timeout_s`` once streaming), ``disconnect`` (connection failed or dropped, or the
stream ended early), ``malformed`` (a chunk or the tool arguments are not valid JSON).
The SDK never retries (``max_retries=0``): retrying is the failover layer's job.  Error
messages never contain the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import httpx
import openai

from gateway.providers.base import Brain, BrainReply, CallContext, ProviderError, ReplyStream
from sip_config import Settings, vendor_key

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
    from openai.types.chat.chat_completion_tool_union_param import ChatCompletionToolUnionParam

__all__ = ["INTERRUPTED_MARK", "HttpTool", "OpenAiBrain"]

PROVIDER = "openai"
INTERRUPTED_MARK = " [interrupted by the caller]"
"""Appended to the assistant's partial text in the history when the caller barged in."""

END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"
EMPTY_TURN = "[the caller said something that could not be understood]"
"""The user message for a turn whose transcript is empty."""

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PLACEHOLDERS = re.compile(r"\{(from_number|to_number|call_uuid|call_id)\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_CONTEXT_VALUE = 200
_MAX_TOOL_RESULT_CHARS = 8000

Message = dict[str, Any]


@dataclass(frozen=True)
class HttpTool:
    """A function the model may call; the brain POSTs its JSON arguments to `url`.

    `parameters` is the JSON schema of the arguments (an ``"object"`` schema).  The answer
    must be JSON; it is handed to the model as the call's result.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    url: str
    timeout_s: float = 5.0


@dataclass
class _ToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _Round:
    """What one streamed completion produced."""

    text: str = ""
    calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None


def _clean(value: str) -> str:
    return _CONTROL.sub(" ", value).strip()[:_MAX_CONTEXT_VALUE]


def _key_free(text: str, api_key: str) -> str:
    return text.replace(api_key, "***") if api_key else text


class OpenAiBrain(Brain):
    """A `Brain` backed by an OpenAI(-compatible) chat model, streamed, with tools."""

    name = "openai"
    streams = True

    def __init__(
        self,
        *,
        api_key: str,
        system_prompt: str,
        greeting: str,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        temperature: float | None = None,
        first_token_timeout_s: float = 3.0,
        stream_timeout_s: float = 10.0,
        transfer_target: str | None = None,
        transfer_line: str = "Let me transfer you to a colleague now.",
        goodbye_line: str = "Thank you for calling. Goodbye.",
        http_tools: Sequence[HttpTool] = (),
        max_tool_rounds: int = 3,
        no_input_prompts: tuple[str, str] = (
            "Sorry, I didn't catch that. Are you still there?",
            "I can't hear you, so I'll hang up now. Goodbye.",
        ),
        max_calls: int = 256,
        max_history_turns: int = 20,
    ) -> None:
        """Configure the brain; nothing connects until the first turn.

        ``no_input_prompts`` is (re-prompt after the first silence, goodbye after the
        second).  Raises ``ProviderError(kind="config")`` for unusable settings.
        """
        if not api_key:
            raise ProviderError(PROVIDER, "config", "no API key")
        if first_token_timeout_s <= 0 or stream_timeout_s <= 0:
            raise ProviderError(PROVIDER, "config", "timeouts must be positive")
        if max_tool_rounds < 0 or max_calls < 1 or max_history_turns < 1:
            raise ProviderError(PROVIDER, "config", "limits must be positive")
        names = {END_CALL, TRANSFER_CALL}
        for tool in http_tools:
            if not _TOOL_NAME.match(tool.name):
                raise ProviderError(PROVIDER, "config", f"bad tool name {tool.name!r}")
            if tool.name in names:
                raise ProviderError(PROVIDER, "config", f"duplicate tool name {tool.name!r}")
            names.add(tool.name)
        self._api_key = api_key
        self.model = model
        self.base_url = base_url
        self.system_prompt = system_prompt
        self.greeting_text = greeting
        self.temperature = temperature
        self.first_token_timeout_s = first_token_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.transfer_target = transfer_target or None
        self.transfer_line = transfer_line
        self.goodbye_line = goodbye_line
        self.http_tools = {tool.name: tool for tool in http_tools}
        self.max_tool_rounds = max_tool_rounds
        self.no_input_prompts = no_input_prompts
        self.max_calls = max_calls
        self.max_history_turns = max_history_turns
        self._histories: OrderedDict[str, list[Message]] = OrderedDict()
        self._client: openai.AsyncOpenAI | None = None
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAiBrain(model={self.model!r}, base_url={self.base_url!r})"

    # -- clients --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the clients now, off the calls' loop (the worker builds its providers in a
        thread): building them loads TLS contexts, ~110 ms of CPU that would otherwise
        land on the loop in the middle of the first caller's first turn (seen as 1.1 s on a
        loaded machine). The first loop that uses them adopts them."""
        if self._client is None:
            self._client, self._http = self._new_clients()
            self._loop = None

    def _new_clients(self) -> tuple[openai.AsyncOpenAI, httpx.AsyncClient]:
        client = openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            max_retries=0,
            # A backstop only: the brain enforces its own deadlines (see _round).
            timeout=max(self.first_token_timeout_s, self.stream_timeout_s) + 5.0,
        )
        return client, httpx.AsyncClient()

    def _clients(self) -> tuple[openai.AsyncOpenAI, httpx.AsyncClient]:
        """The SDK and tool clients of the running event loop: the prepared ones on first
        use, new ones on another loop (a client's connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._http is not None and self._loop is None:
            self._loop = loop  # prepared, not used yet: this loop's now
        if self._client is None or self._http is None or self._loop is not loop:
            self._client, self._http = self._new_clients()
            self._loop = loop
        return self._client, self._http

    async def close(self) -> None:
        """Release the HTTP connection pools."""
        client, http = self._client, self._http
        self._client = self._http = None
        self._loop = None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        if http is not None:
            with contextlib.suppress(Exception):
                await http.aclose()

    # -- history --------------------------------------------------------------------------

    def system_message(self, ctx: CallContext) -> str:
        """The system prompt for `ctx`: placeholders filled in, the call context appended."""
        values = {
            "from_number": _clean(ctx.from_number),
            "to_number": _clean(ctx.to_number),
            "call_uuid": _clean(ctx.call_uuid),
            "call_id": _clean(ctx.call_id),
        }
        prompt = _PLACEHOLDERS.sub(lambda m: values[m.group(1)], self.system_prompt)
        lines = []
        for label, value in (
            ("From", ctx.from_number or ctx.from_uri),
            ("Caller name", ctx.plivo.get("caller_name", "")),
            ("Forwarded from", ctx.plivo.get("forwarded_from", "")),
            ("To", ctx.to_number or ctx.to_uri),
            ("CallUUID", ctx.call_uuid),
            ("Call record id", ctx.plivo.get("record_id", "")),
        ):
            if _clean(value):
                lines.append(f"- {label}: {_clean(value)}")
        for key, value in sorted(ctx.plivo.items()):
            if key in ("caller_name", "forwarded_from", "record_id"):
                continue
            if _clean(key) and _clean(value):
                lines.append(f"- X-PH-{_clean(key)}: {_clean(value)}")
        if lines:
            prompt = prompt.rstrip() + "\n\nCall context:\n" + "\n".join(lines)
        return prompt

    def _history(self, ctx: CallContext) -> list[Message]:
        history = self._histories.get(ctx.call_id)
        if history is None:
            history = [{"role": "system", "content": self.system_message(ctx)}]
            self._histories[ctx.call_id] = history
            while len(self._histories) > self.max_calls:
                self._histories.popitem(last=False)
        else:
            self._histories.move_to_end(ctx.call_id)
        return history

    def history(self, call_id: str) -> list[Message]:
        """A copy of the messages kept for `call_id` (empty when none)."""
        return [dict(m) for m in self._histories.get(call_id, [])]

    def observe(self, ctx: CallContext, note: str) -> None:
        """Add `note` to the call's history as a system message, so the model's next answer
        knows it (e.g. that the transfer its tool call asked for failed)."""
        self._commit(ctx, [{"role": "system", "content": note}])

    def forget(self, call_id: str) -> None:
        """Drop the conversation of `call_id` (call it when the call ends)."""
        self._histories.pop(call_id, None)

    def _commit(self, ctx: CallContext, messages: Sequence[Message]) -> None:
        history = self._history(ctx)
        history.extend(messages)
        users = [i for i, m in enumerate(history) if i and m.get("role") == "user"]
        if len(users) > self.max_history_turns:
            # Keep the system prompt, then start at a caller turn so no tool message is
            # orphaned from the assistant message that called it.
            del history[1 : users[len(users) - self.max_history_turns]]

    # -- Brain ----------------------------------------------------------------------------

    async def greeting(self, ctx: CallContext) -> BrainReply:
        """The configured greeting, spoken as is; it opens the call's history."""
        self._commit(ctx, [{"role": "assistant", "content": self.greeting_text}])
        return BrainReply(text=self.greeting_text, intent="greeting")

    async def no_input(self, ctx: CallContext, attempt: int) -> BrainReply:
        """Re-prompt after the first silence, say goodbye and hang up after the second."""
        reprompt, goodbye = self.no_input_prompts
        if attempt <= 1:
            self._commit(ctx, [{"role": "assistant", "content": reprompt}])
            return BrainReply(text=reprompt, intent="reprompt")
        self._commit(ctx, [{"role": "assistant", "content": goodbye}])
        return BrainReply(text=goodbye, actions=("hangup",), intent="no_input")

    def respond_stream(self, text: str, ctx: CallContext) -> ReplyStream:
        """Stream the reply to `text`; see the module docstring."""
        return _OpenAiReplyStream(self, text, ctx)

    def prepare_stream(self, text: str, ctx: CallContext) -> ReplyStream:
        """`respond_stream` ahead of the turn's end: the turn enters the history, and HTTP
        tools run, only once the stream is kept (`Brain.prepare_stream`)."""
        return _OpenAiReplyStream(self, text, ctx, held=True)

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        """The whole reply to `text` (`respond_stream`, collected)."""
        stream = self.respond_stream(text, ctx)
        try:
            async for _ in stream:
                pass
        finally:
            await stream.aclose()
        assert stream.reply is not None
        return stream.reply

    # -- one completion -------------------------------------------------------------------

    def _tools(self) -> list[ChatCompletionToolUnionParam]:
        tools: list[dict[str, Any]] = [
            {
                "type": "function",
                "function": {
                    "name": END_CALL,
                    "description": (
                        "End the phone call. Use it when the caller is done or asks to hang "
                        "up; say goodbye in your reply text."
                    ),
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ]
        if self.transfer_target:
            tools.append(
                {
                    "type": "function",
                    "function": {
                        "name": TRANSFER_CALL,
                        "description": (
                            "Transfer the caller to a human colleague, when they ask for a "
                            "person or you cannot help."
                        ),
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "reason": {
                                    "type": "string",
                                    "description": "Why the caller is transferred.",
                                }
                            },
                        },
                    },
                }
            )
        for tool in self.http_tools.values():
            tools.append(
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": dict(tool.parameters),
                    },
                }
            )
        return cast("list[ChatCompletionToolUnionParam]", tools)

    def _error(self, exc: BaseException) -> ProviderError:
        """Map an SDK (or decoding) error to a `ProviderError` without the key."""
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = ""
            body = exc.body
            if isinstance(body, Mapping):
                inner = body.get("error", body)
                if isinstance(inner, Mapping):
                    parts = [str(inner.get(k)) for k in ("type", "code") if inner.get(k)]
                    detail = " (" + ", ".join(parts) + ")" if parts else ""
            kind = "auth" if status in (401, 403) else "http"
            message = _key_free(f"HTTP {status}{detail}", self._api_key)
            return ProviderError(PROVIDER, kind, message, status=status)
        if isinstance(exc, openai.APITimeoutError | TimeoutError):
            return ProviderError(PROVIDER, "timeout", "request timed out")
        if isinstance(exc, openai.APIConnectionError):
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
            return ProviderError(PROVIDER, "disconnect", f"connection failed or dropped ({cause})")
        if isinstance(exc, json.JSONDecodeError):
            return ProviderError(PROVIDER, "malformed", f"chunk is not JSON: {exc.msg}")
        if isinstance(exc, openai.APIError):
            message = _key_free(f"stream error: {exc.message}"[:300], self._api_key)
            return ProviderError(PROVIDER, "http", message)
        return ProviderError(PROVIDER, "malformed", f"unexpected chunk ({type(exc).__name__})")


class _OpenAiReplyStream(ReplyStream):
    """One turn. A background task talks to the API and fills a queue with text pieces, so
    `aclose` can cancel it from any task, whether or not someone is iterating."""

    def __init__(
        self, brain: OpenAiBrain, text: str, ctx: CallContext, *, held: bool = False
    ) -> None:
        self._brain = brain
        self._ctx = ctx
        # Set once the turn is the caller's for sure: a stream generated ahead (`held`)
        # commits nothing and runs no HTTP tool before, and leaves no trace if closed.
        self._kept = asyncio.Event()
        if not held:
            self._kept.set()
        self._user: Message = {"role": "user", "content": text.strip() or EMPTY_TURN}
        self._queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Turn state, read by the interruption handler.
        self._turn: list[Message] = [self._user]
        self._spoken: list[str] = []
        self._partial = ""
        self._calls_pending: list[_ToolCall] = []
        self._sdk_stream: openai.AsyncStream[ChatCompletionChunk] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        if self._task is None:
            if self._closed:
                return
            self._task = asyncio.ensure_future(self._run())
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def keep(self) -> None:
        """The reply generated ahead is the turn's: commit it and run its tools."""
        self._kept.set()

    async def aclose(self) -> None:
        """Stop at once (barge-in); the partial reply is kept in the history, marked
        (a reply generated ahead and never kept leaves no trace)."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
            self._queue.put_nowait(None)  # in case the task was cancelled before it ran

    # -- the producer ---------------------------------------------------------------------

    def _say(self, piece: str) -> None:
        if not piece:
            return
        spoken = "".join(self._spoken)
        if spoken and not spoken[-1].isspace() and not piece[0].isspace() and not self._partial:
            piece = " " + piece  # a new round or a fixed line: keep sentences apart
        self._spoken.append(piece)
        self._partial += piece
        self._queue.put_nowait(piece)

    async def _run(self) -> None:
        try:
            self.reply = await self._turn_loop()
            self._queue.put_nowait(None)
            await self._kept.wait()
            self._brain._commit(self._ctx, self._turn)
        except asyncio.CancelledError:
            self._interrupted()
            self._queue.put_nowait(None)
            raise
        except Exception as exc:  # handed to whoever iterates
            self._queue.put_nowait(self._brain._error(exc))

    def _interrupted(self) -> None:
        """Record the turn as far as it went, with the marker after the partial text."""
        if not self._kept.is_set():
            return  # generated ahead and dropped: the caller went on, nothing was said
        answered = {m.get("tool_call_id") for m in self._turn if m.get("role") == "tool"}
        for call in self._calls_pending:
            if call.id not in answered:
                self._turn.append(_tool_message(call.id, {"error": "interrupted by the caller"}))
        partial = self._partial.strip()
        self._turn.append({"role": "assistant", "content": (partial + INTERRUPTED_MARK).strip()})
        self._brain._commit(self._ctx, self._turn)
        self.reply = BrainReply(text="".join(self._spoken), intent="interrupted")

    async def _turn_loop(self) -> BrainReply:
        brain = self._brain
        tool_rounds = 0
        intent = "llm"
        while True:
            tools_allowed = tool_rounds < brain.max_tool_rounds
            self._partial = ""
            result = await self._round(tools_allowed)
            calls = [result.calls[i] for i in sorted(result.calls)] if tools_allowed else []
            if not calls:
                self._turn.append({"role": "assistant", "content": result.text})
                return BrainReply(text="".join(self._spoken), intent=intent)
            for call in calls:
                if not call.id:
                    raise ProviderError(PROVIDER, "malformed", "tool call without an id")
            self._turn.append(
                {
                    "role": "assistant",
                    "content": result.text or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in calls
                    ],
                }
            )
            self._calls_pending = calls
            parsed = [(call, _arguments(call)) for call in calls]
            names = {call.name for call in calls}
            if TRANSFER_CALL in names and brain.transfer_target:
                return self._finish(calls, TRANSFER_CALL)
            if END_CALL in names:
                return self._finish(calls, END_CALL)
            await self._kept.wait()  # no side effect for a turn that may not be the caller's
            http = await self._run_http_tools(parsed)
            for call, answer in zip(calls, http, strict=True):
                self._turn.append(_tool_message(call.id, answer))
                if call.name in brain.http_tools:
                    intent = call.name
            self._calls_pending = []
            tool_rounds += 1

    def _finish(self, calls: Sequence[_ToolCall], tool: str) -> BrainReply:
        """End the turn on a call-control tool (end_call / transfer_call)."""
        brain = self._brain
        for call in calls:
            outcome = {"ok": True} if call.name == tool else {"error": "not run: call ended"}
            self._turn.append(_tool_message(call.id, outcome))
        self._calls_pending = []
        self._partial = ""
        if tool == TRANSFER_CALL:
            line = brain.transfer_line
            actions: tuple[str, ...] = (f"transfer:{brain.transfer_target}",)
        else:
            line = "" if "".join(self._spoken).strip() else brain.goodbye_line
            actions = ("hangup",)
        if line:
            self._say(line)
            self._turn.append({"role": "assistant", "content": line})
        return BrainReply(text="".join(self._spoken), actions=actions, intent=tool)

    async def _run_http_tools(
        self, parsed: Sequence[tuple[_ToolCall, dict[str, Any]]]
    ) -> list[Any]:
        _, http = self._brain._clients()
        return list(await asyncio.gather(*(self._post(http, c, a) for c, a in parsed)))

    async def _post(self, http: httpx.AsyncClient, call: _ToolCall, args: dict[str, Any]) -> Any:
        tool = self._brain.http_tools.get(call.name)
        if tool is None:
            return {"error": f"unknown tool {call.name!r}"}
        try:
            response = await http.post(tool.url, json=args, timeout=tool.timeout_s)
        except httpx.TimeoutException:
            return {"error": f"the tool {tool.name} timed out"}
        except httpx.HTTPError as exc:
            return {"error": f"the tool {tool.name} failed: {type(exc).__name__}"}
        if response.status_code >= 400:
            return {"error": f"the tool {tool.name} failed: HTTP {response.status_code}"}
        try:
            return response.json()
        except ValueError:
            return {"error": f"the tool {tool.name} answered with something that is not JSON"}

    async def _round(self, tools_allowed: bool) -> _Round:
        """One streamed completion: speak its text, collect its tool calls."""
        brain = self._brain
        client, _ = brain._clients()
        history = brain._history(self._ctx)
        messages = cast("list[ChatCompletionMessageParam]", [*history, *self._turn])
        tools = self._brain._tools()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + brain.first_token_timeout_s
        result = _Round()
        first = True
        try:
            async with asyncio.timeout_at(deadline) as scope:
                self._sdk_stream = await client.chat.completions.create(
                    model=brain.model,
                    messages=messages,
                    stream=True,
                    tools=tools,
                    tool_choice="auto" if tools_allowed else "none",
                    temperature=(
                        brain.temperature if brain.temperature is not None else openai.omit
                    ),
                )
                chunks = self._sdk_stream.__aiter__()
                while True:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    if self._absorb(chunk, result):
                        first = False
                    if not first:
                        scope.reschedule(loop.time() + brain.stream_timeout_s)
        except TimeoutError:
            what = "no first token" if first else "the stream stalled"
            limit = brain.first_token_timeout_s if first else brain.stream_timeout_s
            raise ProviderError(PROVIDER, "timeout", f"{what} within {limit:g} s") from None
        finally:
            stream, self._sdk_stream = self._sdk_stream, None
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.close()
        if result.finish_reason is None:
            raise ProviderError(PROVIDER, "disconnect", "the stream ended before it finished")
        return result

    def _absorb(self, chunk: ChatCompletionChunk, result: _Round) -> bool:
        """Take one chunk; True when it carried content, a tool call or the finish."""
        try:
            choices = chunk.choices
            if not choices:
                return False
            choice = choices[0]
            delta = choice.delta
            meaningful = False
            if delta is not None and delta.content:
                result.text += delta.content
                self._say(delta.content)
                meaningful = True
            for fragment in (delta.tool_calls if delta is not None else None) or ():
                call = result.calls.setdefault(int(fragment.index), _ToolCall())
                if fragment.id:
                    call.id = fragment.id
                function = fragment.function
                if function is not None:
                    if function.name:
                        call.name += function.name
                    if function.arguments:
                        call.arguments += function.arguments
                meaningful = True
            if choice.finish_reason:
                result.finish_reason = choice.finish_reason
                meaningful = True
            return meaningful
        except (AttributeError, TypeError, ValueError) as exc:
            raise ProviderError(
                PROVIDER, "malformed", f"unexpected chunk ({type(exc).__name__})"
            ) from None


def _tool_message(call_id: str, payload: Any) -> Message:
    content = json.dumps(payload, ensure_ascii=False, default=str)
    if len(content) > _MAX_TOOL_RESULT_CHARS:
        content = content[:_MAX_TOOL_RESULT_CHARS] + "... [truncated]"
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _arguments(call: _ToolCall) -> dict[str, Any]:
    """The call's arguments as a JSON object ("" counts as no arguments)."""
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except ValueError:
        raise ProviderError(
            PROVIDER, "malformed", f"arguments of tool {call.name!r} are not JSON"
        ) from None
    if not isinstance(value, dict):
        raise ProviderError(
            PROVIDER, "malformed", f"arguments of tool {call.name!r}: not an object"
        )
    return value


def build(s: Settings) -> OpenAiBrain:
    """The provider as the settings configure it (the registry's factory for it)."""
    o = s.openai
    brain = OpenAiBrain(
        api_key=vendor_key(s, "openai"),
        system_prompt=o.system_prompt,
        greeting=o.greeting,
        model=o.model,
        base_url=o.base_url,
        temperature=o.temperature,
        first_token_timeout_s=s.providers.brain_timeout_s,
        # Likewise a stream that stalls after its first words (was a fixed 10 s).
        stream_timeout_s=s.providers.brain_timeout_s,
        transfer_target=o.transfer_target or s.transfer.target,
        transfer_line=o.transfer_line,
        http_tools=[
            HttpTool(t.name, t.description, dict(t.parameters), t.url, t.timeout_s) for t in o.tools
        ],
    )
    brain.prepare()
    return brain
