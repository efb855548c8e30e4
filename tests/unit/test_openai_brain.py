"""Tests for gateway.providers.openai_brain.OpenAiBrain against a loopback fake of OpenAI.

`tests.fakes.openai_chat.FakeOpenAi` speaks the Chat Completions wire protocol (SSE over
chunked HTTP/1.1) on 127.0.0.1; the brain talks to it with the official SDK through
``base_url``, the way it would talk to any OpenAI-compatible server.  Each test scripts the
fake's answers, runs the brain inside ``asyncio.run`` and checks what the brain yielded and
what the fake received.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from gateway.providers.base import BrainReply, CallContext, ProviderError
from gateway.providers.openai_brain import INTERRUPTED_MARK, HttpTool, OpenAiBrain
from tests.fakes.openai_chat import (
    Drop,
    FakeOpenAi,
    HttpError,
    Malformed,
    Stall,
    Text,
    ToolCall,
    ToolCalls,
    token_pieces,
)

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
KEY = "sk-test-0123456789abcdef"
CTX = CallContext(
    call_id="sip-call-1",
    from_uri="sip:+14155550100@plivo",
    to_uri="sip:agent@worker",
    call_uuid="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    from_number="+14155550100",
    to_number="+442071234567",
    plivo={"customer": "gold", "caller_name": "Ana María"},
)
OTHER = CallContext(call_id="sip-call-2", from_number="+15550001111")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def fake() -> Iterator[FakeOpenAi]:
    with FakeOpenAi(KEY) as server:
        yield server


def make_brain(fake: FakeOpenAi, **options: Any) -> OpenAiBrain:
    settings: dict[str, Any] = {
        "api_key": KEY,
        "base_url": fake.base_url,
        "system_prompt": "You answer the phone for Maple Street Bakery.",
        "greeting": "Maple Street Bakery, how can I help?",
    }
    settings.update(options)
    return OpenAiBrain(**settings)


async def collect(brain: OpenAiBrain, text: str, ctx: CallContext = CTX) -> BrainReply:
    try:
        return await brain.respond(text, ctx)
    finally:
        await brain.close()


async def failure(brain: OpenAiBrain, text: str = "hello") -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await collect(brain, text)
    return info.value


def tool_names(request: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in request.get("tools", [])]


# -- streaming, history, context ---------------------------------------------------------


def test_deltas_arrive_while_the_server_is_still_streaming(fake: FakeOpenAi) -> None:
    text = "We open at seven. We close at six. Sundays we rest."
    fake.add(Text(text, chunk_chars=5, delay_s=0.05))  # 11 deltas over about 0.5 s
    brain = make_brain(fake)

    async def main() -> tuple[list[tuple[float, str]], BrainReply | None]:
        stream = brain.respond_stream("When are you open?", CTX)
        pieces = [(time.monotonic(), piece) async for piece in stream]
        await brain.close()
        return pieces, stream.reply

    pieces, reply = run(main())
    assert "".join(p for _, p in pieces) == text
    assert len(pieces) == 11
    finished = fake.streams[0].finished_at
    assert finished > 0
    assert pieces[0][0] < finished - 0.3  # the first piece long before the fake was done
    assert pieces[-1][0] - pieces[0][0] > 0.3
    assert reply == BrainReply(text=text, actions=(), intent="llm")


def test_realistic_stream_sends_a_token_at_a_time_at_the_token_rate(fake: FakeOpenAi) -> None:
    text = "Sure, I can help with that. We are open from seven until six."
    fake.add(Text(text, first_delay_s=0.15, tokens_per_s=40))
    brain = make_brain(fake)

    async def main() -> tuple[float, list[str]]:
        started = time.monotonic()
        stream = brain.respond_stream("When are you open?", CTX)
        pieces = [piece async for piece in stream]
        await brain.close()
        return started, pieces

    started, pieces = run(main())
    assert "".join(pieces) == text
    [log] = fake.streams
    deltas = token_pieces(text)
    assert len(deltas) == 16  # about one token (4 characters) each, not the whole text
    assert max(len(d) for d in deltas) <= 8
    # role chunk + one per token + the finish chunk
    assert len(log.delta_times) == len(deltas) + 2
    first, last = log.delta_times[1], log.delta_times[-2]
    assert first - started >= 0.15  # the time to the first token
    assert last - first == pytest.approx((len(deltas) - 1) / 40, abs=0.05)  # 40 tokens a second


def test_turns_reuse_one_kept_alive_connection(fake: FakeOpenAi) -> None:
    """The brain's HTTP connection to the model stays open between turns (and calls on the
    same loop): no new TCP/TLS handshake in the middle of a turn."""
    fake.add(Text("One."), Text("Two."), Text("Three."))
    brain = make_brain(fake)

    async def main() -> None:
        try:
            await brain.respond("first", CTX)
            await asyncio.sleep(0.2)  # the caller speaks meanwhile
            await brain.respond("second", CTX)
            await brain.respond("other call", OTHER)
        finally:
            await brain.close()

    run(main())
    ports = fake.chat_client_ports()
    assert len(ports) == 3
    assert len(set(ports)) == 1
    assert [log.client_port for log in fake.streams] == ports


def test_history_grows_per_call_and_stays_separate(fake: FakeOpenAi) -> None:
    fake.add(Text("First answer."), Text("Other answer."), Text("Second answer."))
    brain = make_brain(fake)

    async def main() -> None:
        await brain.greeting(CTX)
        await brain.respond("first question", CTX)
        await brain.respond("other question", OTHER)
        await brain.respond("second question", CTX)
        await brain.close()

    run(main())
    first, other, second = fake.chat_requests()
    roles = [m["role"] for m in first["messages"]]
    assert roles == ["system", "assistant", "user"]
    assert first["messages"][1]["content"] == "Maple Street Bakery, how can I help?"
    assert [(m["role"], m["content"]) for m in other["messages"][1:]] == [
        ("user", "other question")
    ]
    assert [(m["role"], m["content"]) for m in second["messages"][1:]] == [
        ("assistant", "Maple Street Bakery, how can I help?"),
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question"),
    ]
    assert second["model"] == "gpt-4o-mini"
    assert second["stream"] is True
    assert tool_names(second) == ["end_call"]  # no transfer_call without a target
    assert brain.history(CTX.call_id)[-1] == {"role": "assistant", "content": "Second answer."}
    brain.forget(CTX.call_id)
    assert brain.history(CTX.call_id) == []
    assert len(brain.history(OTHER.call_id)) == 3


def test_history_is_bounded(fake: FakeOpenAi) -> None:
    fake.add(*(Text(f"Answer {n}.") for n in range(5)))
    brain = make_brain(fake, max_calls=2, max_history_turns=2)

    def users(messages: list[dict[str, Any]]) -> list[str]:
        return [m["content"] for m in messages if m["role"] == "user"]

    async def main() -> list[str]:
        for n in range(4):
            await brain.respond(f"question {n}", CTX)
        kept = users(brain.history(CTX.call_id))
        await brain.respond("hi", OTHER)
        await brain.greeting(CallContext(call_id="third"))  # evicts the least recent call
        await brain.close()
        return kept

    assert run(main()) == ["question 2", "question 3"]
    assert users(fake.chat_requests()[3]["messages"]) == ["question 1", "question 2", "question 3"]
    assert fake.chat_requests()[3]["messages"][0]["role"] == "system"
    assert brain.history(CTX.call_id) == []
    assert [m["role"] for m in brain.history(OTHER.call_id)] == ["system", "user", "assistant"]


def test_call_context_is_in_the_system_message(fake: FakeOpenAi) -> None:
    fake.add(Text("Hello."))
    prompt = "Agent for {to_number}. Caller {from_number}, call {call_uuid} / {call_id}. {json}"
    brain = make_brain(fake, system_prompt=prompt)
    run(collect(brain, "hi"))
    system = fake.chat_requests()[0]["messages"][0]
    assert system["role"] == "system"
    content = system["content"]
    assert content.startswith(
        "Agent for +442071234567. Caller +14155550100, call "
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 / sip-call-1. {json}"
    )
    assert "Call context:" in content
    assert "- From: +14155550100" in content
    assert "- To: +442071234567" in content
    assert "- CallUUID: 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0" in content
    assert "- X-PH-customer: gold" in content
    assert "- Caller name: Ana María" in content and "X-PH-caller_name" not in content
    assert fake.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_greeting_and_no_input_make_no_request(fake: FakeOpenAi) -> None:
    brain = make_brain(fake, no_input_prompts=("Still there?", "Goodbye for now."))

    async def main() -> list[BrainReply]:
        return [
            await brain.greeting(CTX),
            await brain.no_input(CTX, 1),
            await brain.no_input(CTX, 2),
        ]

    greeting, reprompt, goodbye = run(main())
    assert greeting == BrainReply("Maple Street Bakery, how can I help?", intent="greeting")
    assert reprompt == BrainReply("Still there?", intent="reprompt")
    assert goodbye == BrainReply("Goodbye for now.", actions=("hangup",), intent="no_input")
    assert fake.requests == []


# -- tools -------------------------------------------------------------------------------


def test_end_call_hangs_up_after_the_model_text(fake: FakeOpenAi) -> None:
    fake.add(ToolCalls((ToolCall("end_call"),), text="Thanks for calling, bye!"))
    reply = run(collect(make_brain(fake), "that's all, bye"))
    assert reply == BrainReply("Thanks for calling, bye!", actions=("hangup",), intent="end_call")


def test_end_call_without_text_says_the_goodbye_line(fake: FakeOpenAi) -> None:
    fake.add(ToolCalls((ToolCall("end_call", ""),)))
    reply = run(collect(make_brain(fake, goodbye_line="Goodbye!"), "bye"))
    assert reply == BrainReply("Goodbye!", actions=("hangup",), intent="end_call")


def test_transfer_call(fake: FakeOpenAi) -> None:
    fake.add(ToolCalls((ToolCall("transfer_call", '{"reason": "wants a human"}'),)))
    brain = make_brain(fake, transfer_target="sip:desk@example.com", transfer_line="One moment.")
    reply = run(collect(brain, "let me talk to a person"))
    assert reply == BrainReply(
        "One moment.",
        actions=("transfer:sip:desk@example.com",),
        intent="transfer_call",
    )
    assert tool_names(fake.chat_requests()[0]) == ["end_call", "transfer_call"]


def test_a_failed_transfer_is_in_the_history_of_the_next_request(fake: FakeOpenAi) -> None:
    fake.add(ToolCalls((ToolCall("transfer_call", '{"reason": "wants a human"}'),)))
    fake.add(Text("Sorry, nobody is free. Can I help instead?"))
    brain = make_brain(fake, transfer_target="sip:desk@example.com", transfer_line="One moment.")
    run(collect(brain, "let me talk to a person"))
    brain.observe(CTX, "The transfer to sip:desk@example.com failed (486 Busy Here).")
    run(collect(brain, "hello?"))
    messages = fake.chat_requests()[1]["messages"]
    notes = [m for m in messages if m["role"] == "system"][1:]  # after the system prompt
    assert [m["content"] for m in notes] == [
        "The transfer to sip:desk@example.com failed (486 Busy Here)."
    ]
    assert messages[-1] == {"role": "user", "content": "hello?"}


def test_http_tool_round_trip(fake: FakeOpenAi) -> None:
    fake.tool_results["order_status"] = {"status": "baked", "ready_at": "15:00"}
    fake.add(
        ToolCalls(
            (ToolCall("order_status", '{"order_id": "A-17"}', id="call_xyz"),),
            text="Let me check.",
        ),
        Text("Your cake is baked and ready at three.", delay_s=0.02),
    )
    tool = HttpTool(
        name="order_status",
        description="Look up an order.",
        parameters={"type": "object", "properties": {"order_id": {"type": "string"}}},
        url=fake.tool_url("order_status"),
    )
    brain = make_brain(fake, http_tools=[tool])

    async def main() -> tuple[list[str], BrainReply | None]:
        stream = brain.respond_stream("where is my order A-17?", CTX)
        pieces = [piece async for piece in stream]
        await brain.close()
        return pieces, stream.reply

    pieces, reply = run(main())
    assert fake.tool_posts == [("order_status", {"order_id": "A-17"})]
    first, second = fake.chat_requests()
    assert tool_names(first) == ["end_call", "order_status"]
    assert first["tools"][1]["function"]["parameters"] == tool.parameters
    assistant, result = second["messages"][-2:]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == "Let me check."
    assert assistant["tool_calls"][0]["id"] == "call_xyz"
    assert assistant["tool_calls"][0]["function"]["name"] == "order_status"
    assert result["role"] == "tool"
    assert result["tool_call_id"] == "call_xyz"
    assert '"ready_at": "15:00"' in result["content"]
    assert len(pieces) > 3  # the follow-up came in deltas too
    assert reply is not None
    assert reply.text == "Let me check. Your cake is baked and ready at three."
    assert reply.actions == ()
    assert reply.intent == "order_status"


def test_http_tool_failure_goes_back_to_the_model_as_an_error(fake: FakeOpenAi) -> None:
    fake.tool_results["lookup"] = HttpError(503, "down")
    fake.add(ToolCalls((ToolCall("lookup", "{}", id="call_1"),)), Text("Sorry, try later."))
    tool = HttpTool("lookup", "Look up.", {"type": "object"}, fake.tool_url("lookup"))
    reply = run(collect(make_brain(fake, http_tools=[tool]), "look it up"))
    assert reply.text == "Sorry, try later."
    result = fake.chat_requests()[1]["messages"][-1]
    assert result["tool_call_id"] == "call_1"
    assert "error" in result["content"] and "503" in result["content"]


def test_tool_rounds_are_capped(fake: FakeOpenAi) -> None:
    call = ToolCall("lookup", "{}")
    fake.add(ToolCalls((call,)), Text("Done."))
    tool = HttpTool("lookup", "Look up.", {"type": "object"}, fake.tool_url("lookup"))
    reply = run(collect(make_brain(fake, http_tools=[tool], max_tool_rounds=1), "go"))
    assert reply.text == "Done."
    first, second = fake.chat_requests()
    assert first["tool_choice"] == "auto"
    assert second["tool_choice"] == "none"


def test_tool_arguments_that_are_not_json_are_malformed(fake: FakeOpenAi) -> None:
    fake.add(ToolCalls((ToolCall("transfer_call", '{"reason": '),)))
    brain = make_brain(fake, transfer_target="sip:desk@example.com")
    assert run(failure(brain)).kind == "malformed"


# -- barge-in ----------------------------------------------------------------------------


def test_aclose_mid_stream_stops_at_once_and_keeps_the_partial_text(fake: FakeOpenAi) -> None:
    fake.add(Text("One two three four five six seven eight nine ten.", delay_s=0.2))
    brain = make_brain(fake)

    async def main() -> tuple[str, float]:
        stream = brain.respond_stream("count", CTX)
        pieces: list[str] = []
        async for piece in stream:
            pieces.append(piece)
            if len(pieces) == 2:
                break
        started = time.monotonic()
        await stream.aclose()
        await stream.aclose()  # safe twice
        elapsed = time.monotonic() - started
        await brain.close()
        return "".join(pieces), elapsed

    partial, elapsed = run(main())
    assert partial == "One two "
    assert elapsed < 0.8  # the rest of the text would take 1.6 s more
    assert fake.disconnected.wait(2.0)
    assert fake.streams[0].client_left
    assert fake.streams[0].finished_at == 0.0
    last = brain.history(CTX.call_id)[-2:]
    assert last[0] == {"role": "user", "content": "count"}
    assert last[1]["role"] == "assistant"
    assert last[1]["content"].startswith("One two")
    assert last[1]["content"].endswith(INTERRUPTED_MARK)


def test_cancelling_the_consumer_then_aclose(fake: FakeOpenAi) -> None:
    """The session's way: cancel the task that iterates, then `aclose()`."""
    fake.add(Text("Hello there, this will be cut off.", delay_s=0.2), Text("Okay."))
    brain = make_brain(fake)

    async def main() -> BrainReply:
        stream = brain.respond_stream("hi", CTX)
        got: list[str] = []

        async def consume() -> None:
            async for piece in stream:
                got.append(piece)

        task = asyncio.ensure_future(consume())
        while not got:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.aclose()
        return await collect(brain, "go on")

    assert run(main()).text == "Okay."
    assert fake.disconnected.wait(2.0)
    messages = fake.chat_requests()[1]["messages"]
    assert messages[-2]["content"].endswith(INTERRUPTED_MARK)
    assert messages[-1] == {"role": "user", "content": "go on"}


# -- errors ------------------------------------------------------------------------------


def test_wrong_key_is_auth_and_never_leaks(fake: FakeOpenAi) -> None:
    wrong = "sk-wrong-secret-key-42"
    err = run(failure(make_brain(fake, api_key=wrong)))
    assert (err.provider, err.kind, err.status) == ("openai", "auth", 401)
    assert wrong not in str(err)
    assert KEY not in str(err)
    assert len(fake.requests) == 1  # no SDK retries


def test_server_error_is_http_and_leaves_the_history_alone(fake: FakeOpenAi) -> None:
    fake.add(Text("Fine."), HttpError(500))
    brain = make_brain(fake)

    async def main() -> ProviderError:
        await brain.respond("first", CTX)
        return await failure(brain, "second")

    err = run(main())
    assert (err.kind, err.status) == ("http", 500)
    assert len(fake.chat_requests()) == 2  # no SDK retries
    assert [m["content"] for m in brain.history(CTX.call_id)[1:]] == ["first", "Fine."]


def test_no_first_token_is_a_timeout(fake: FakeOpenAi) -> None:
    fake.add(Stall(seconds=10))
    brain = make_brain(fake, first_token_timeout_s=0.5)
    started = time.monotonic()
    err = run(failure(brain))
    elapsed = time.monotonic() - started
    assert err.kind == "timeout"
    # Not before the limit; well before the 10 s stall ends (a loaded machine adds delay).
    assert 0.45 < elapsed < 5.0
    assert fake.disconnected.wait(2.0)


def test_a_stall_mid_stream_is_a_timeout(fake: FakeOpenAi) -> None:
    fake.add(Stall(text_before="Let me see", seconds=10))
    brain = make_brain(fake, stream_timeout_s=0.4)
    started = time.monotonic()
    err = run(failure(brain))
    assert err.kind == "timeout"
    assert time.monotonic() - started < 5.0  # the timeout, not the 10 s stall's end


def test_dropped_connection_is_a_disconnect(fake: FakeOpenAi) -> None:
    fake.add(Drop(text_before="Half a sen"))
    assert run(failure(make_brain(fake))).kind == "disconnect"


def test_unreachable_server_is_a_disconnect() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    brain = OpenAiBrain(
        api_key=KEY,
        base_url=f"http://127.0.0.1:{port}/v1",
        system_prompt="x",
        greeting="y",
    )
    assert run(failure(brain)).kind == "disconnect"


def test_malformed_chunk_is_malformed(fake: FakeOpenAi) -> None:
    fake.add(Malformed(text_before="Hello"))
    err = run(failure(make_brain(fake)))
    assert err.kind == "malformed"


def test_bad_configuration_is_rejected() -> None:
    tool = HttpTool("end_call", "clash", {"type": "object"}, "http://127.0.0.1:9/")
    with pytest.raises(ProviderError) as info:
        OpenAiBrain(api_key=KEY, system_prompt="x", greeting="y", http_tools=[tool])
    assert info.value.kind == "config"
    with pytest.raises(ProviderError):
        OpenAiBrain(api_key="", system_prompt="x", greeting="y")


def test_prepared_clients_serve_the_first_turn_on_the_calls_loop(fake: FakeOpenAi) -> None:
    """Making the clients costs ~110 ms of CPU (TLS contexts): `prepare` does it when the
    worker builds its providers, and the first turn on the calls' loop uses those clients
    rather than making its own in the middle of the turn."""
    fake.add(Text("Hello."))
    brain = make_brain(fake)
    brain.prepare()
    prepared = brain._client
    assert prepared is not None

    async def turn() -> tuple[str, object]:
        try:
            reply = await brain.respond("hi", CTX)
            return reply.text, brain._client
        finally:
            await brain.close()

    assert run(turn()) == ("Hello.", prepared)


# -- replies generated ahead of the turn's end (Brain.prepare_stream) --------------------------


def test_a_reply_generated_ahead_and_dropped_leaves_no_trace(fake: FakeOpenAi) -> None:
    fake.add(Text("We open at seven."), Text("Your order is ready."))
    brain = make_brain(fake)

    async def main() -> tuple[str, list[dict[str, Any]]]:
        await brain.greeting(CTX)
        before = list(brain.history(CTX.call_id))
        ahead = brain.prepare_stream("when do you open", CTX)
        text = "".join([piece async for piece in ahead])  # generated in full...
        await ahead.aclose()  # ...then the caller went on
        assert brain.history(CTX.call_id) == before
        reply = await brain.respond("when do you open and is my order ready", CTX)
        await brain.close()
        return text + "|" + reply.text, brain.history(CTX.call_id)[len(before) :]

    texts, added = run(main())
    assert texts == "We open at seven.|Your order is ready."
    assert added == [
        {"role": "user", "content": "when do you open and is my order ready"},
        {"role": "assistant", "content": "Your order is ready."},
    ]
    # The second request did not carry the dropped turn.
    second = fake.chat_requests()[1]["messages"]
    assert [m["content"] for m in second if m["role"] == "user"] == [
        "when do you open and is my order ready"
    ]


def test_a_kept_reply_generated_ahead_enters_the_history(fake: FakeOpenAi) -> None:
    fake.add(Text("We open at seven."))
    brain = make_brain(fake)

    async def main() -> list[dict[str, Any]]:
        ahead = brain.prepare_stream("when do you open", CTX)
        text = "".join([piece async for piece in ahead])
        assert text == "We open at seven."
        ahead.keep()  # the turn ended with these words
        await asyncio.sleep(0)
        await ahead.aclose()
        await brain.close()
        return brain.history(CTX.call_id)[1:]

    assert run(main()) == [
        {"role": "user", "content": "when do you open"},
        {"role": "assistant", "content": "We open at seven."},
    ]


def test_a_reply_generated_ahead_runs_no_http_tool_before_it_is_kept(fake: FakeOpenAi) -> None:
    fake.tool_results["order_status"] = {"status": "baked"}
    fake.add(
        ToolCalls((ToolCall("order_status", '{"order_id": "A-17"}', id="call_1"),), "One moment."),
        Text("It is baked."),
    )
    tool = HttpTool("order_status", "Look up.", {"type": "object"}, fake.tool_url("order_status"))
    brain = make_brain(fake, http_tools=[tool])

    async def main() -> tuple[list[Any], str]:
        ahead = brain.prepare_stream("is order A-17 ready", CTX)
        pieces = aiter(ahead)
        first = await anext(pieces)
        await asyncio.sleep(0.3)  # the tool call has long arrived: it waits for keep()
        posted_before = list(fake.tool_posts)
        ahead.keep()
        rest = "".join([piece async for piece in pieces])
        await brain.close()
        return posted_before, first + rest

    posted_before, text = run(main())
    assert posted_before == []
    assert fake.tool_posts == [("order_status", {"order_id": "A-17"})]
    assert text == "One moment. It is baked."
