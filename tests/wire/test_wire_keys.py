"""Keypad input over SIP: a real `sipagent serve` (fake STT/TTS, the scripted brain with a
menu playbook) and the softphone pressing keys by RFC 4733 and by SIP INFO; the agent
sending keys back. What the agent understood is read from its TURN log lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.devtools.demo import AgentProcess
from tests.helpers.wire import place_call, running_agent, uri, wait_for

pytestmark = [pytest.mark.wire, pytest.mark.timeout(240)]

GREETING = (
    "Welcome. Press one for hours, two for the address, four to check an order,"
    " or nine to reach the operator desk."
)
PLAYBOOK = """
[agent]
name = "Keypad Test"
greeting = "GREETING"
fallback = "Sorry, I did not get that."
reprompt = "Are you there?"
goodbye = "Goodbye."
invalid_key = "That key is not on the menu."

[[intents]]
name = "hours"
key = "1"
keywords = ["hours"]
reply = "We open at nine."

[[intents]]
name = "address"
key = "2"
keywords = ["address"]
reply = "We are on Main Street."

[[intents]]
name = "order_status"
key = "4"
keywords = ["order"]
reply = "Enter your order number, then pound."

[intents.collect]
min_digits = 6
max_digits = 6
terminator = "#"
timeout_s = 4
reply = "Order {digits} is ready."
invalid = "Six digits, please."

[[intents]]
name = "operator"
key = "9"
keywords = ["operator"]
reply = "Connecting."
send_dtmf = "42#"
""".replace("GREETING", GREETING)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("keys")
    playbook = tmp / "keys.toml"
    playbook.write_text(PLAYBOOK)
    with running_agent(
        tmp,
        providers__stt="fake",
        providers__tts="fake",
        providers__brain="scripted",
        playbook=str(playbook),
    ) as a:
        yield a


def turns(agent: AgentProcess) -> list[dict[str, Any]]:
    out = []
    for line in list(agent.lines):
        if "TURN {" in line:
            out.append(json.loads(line[line.index("TURN {") + 5 :]))
    return out


def call_turns(agent: AgentProcess, before: int, count: int) -> list[dict[str, Any]]:
    """The `count` agent turns after the first `before` ones (waits for them)."""
    wait_for(lambda: len(turns(agent)) >= before + count, 10, f"{count} agent turns")
    return turns(agent)[before : before + count]


@pytest.mark.parametrize("method", ["rfc4733", "info"])
def test_menu_keys_and_a_digit_entry(agent: AgentProcess, method: str) -> None:
    before = len(turns(agent))
    r = place_call(
        uri(agent),
        "--dtmf-method",
        method,
        "--dtmf",
        "2",
        "--dtmf",
        "4",
        "--dtmf",
        "123456#",
        "--dtmf",
        "7",
    )
    assert r["returncode"] == 0, r
    assert [s["ok"] for s in r["steps"]] == [True] * 4, r["steps"]
    got = call_turns(agent, before, 5)
    assert [t["kind"] for t in got] == ["greeting", "keys", "keys", "keys", "keys"]
    assert [t["intent"] for t in got[1:]] == [
        "address",
        "order_status",
        "order_status:entered",
        "invalid_key",
    ]
    # Six digits end the entry; the '#' typed after them is swallowed, not a menu key.
    assert got[3]["user_text"] == "[keys] 123456 (max)"
    assert got[3]["agent_text"] == "Order 1 2 3 4 5 6 is ready."
    assert got[4]["user_text"] == "[keys] 7"
    assert len(turns(agent)) == before + 5


def test_a_key_cuts_the_greeting_short(agent: AgentProcess) -> None:
    before = len(turns(agent))
    r = place_call(uri(agent), "--barge-dtmf", "1", "--barge-after", "1.0")
    assert r["returncode"] == 0, r
    assert r["steps"][0]["ok"], r
    # The greeting alone is ~7 s of tone (60 ms per character); heard: ~1 s of it, then
    # the ~1 s reply.
    heard_ms = sum(s["duration_ms"] for s in r["segments"])
    assert heard_ms < 3500, r["segments"]
    got = call_turns(agent, before, 2)
    assert got[0]["kind"] == "greeting" and got[0]["interrupted"]
    assert got[1]["intent"] == "hours" and got[1]["barge_in"]


def test_the_agent_sends_dtmf(agent: AgentProcess) -> None:
    before = len(turns(agent))
    r = place_call(uri(agent), "--dtmf", "9", "--hold", "2")
    assert r["returncode"] == 0, r
    assert r["dtmf_received"] == "42#", r
    assert {e["method"] for e in r["dtmf_events"]} == {"rfc4733"}
    got = call_turns(agent, before, 2)
    assert got[1]["intent"] == "operator" and got[1]["actions"] == ["dtmf:42#"]
    # The keys went out after the reply's audio: after the last agent segment began.
    last_audio = max(s["start_ms"] for s in r["segments"])
    assert min(e["at_ms"] for e in r["dtmf_events"]) > last_audio


def test_the_demo_playbook_has_a_keypad_menu() -> None:
    # The bundled demo playbook has a keypad menu too.
    from gateway.providers.scripted import DEMO_PLAYBOOK, load_playbook

    book = load_playbook(DEMO_PLAYBOOK)
    assert book.by_key("1") is not None and book.by_key("1").name == "hours"  # type: ignore[union-attr]
    entry = book.by_key("4")
    assert entry is not None and entry.collect is not None
    assert entry.collect.spec.min_digits == entry.collect.spec.max_digits == 6
