"""Keypad menus and digit entries of the scripted brain's playbook."""

from __future__ import annotations

import asyncio
import tomllib

import pytest

from gateway.providers.base import CallContext, KeyInput
from gateway.providers.scripted import PlaybookError, ScriptedBrain, parse_playbook

BOOK = """
[agent]
name = "T"
greeting = "Hi."
fallback = "Pardon?"
reprompt = "Hello?"
goodbye = "Bye."

[[intents]]
name = "hours"
key = "1"
keywords = ["hours"]
reply = "Nine to five."

[[intents]]
name = "order"
key = "4"
keywords = ["order"]
reply = "Your order number?"
[intents.collect]
min_digits = 3
max_digits = 4
reply = "Order {digits} found."
invalid = "Three or four digits."
"""

CTX = CallContext(call_id="c1")


def brain(text: str = BOOK) -> ScriptedBrain:
    return ScriptedBrain(parse_playbook(tomllib.loads(text)))


def test_menu_key_entry_and_invalid_key() -> None:
    async def scenario() -> None:
        b = brain()
        assert (await b.respond_keys(KeyInput("1"), CTX)).intent == "hours"
        bad = await b.respond_keys(KeyInput("7"), CTX)
        assert bad.text == "Pardon?" and bad.intent == "invalid_key"
        ask = await b.respond_keys(KeyInput("4"), CTX)
        assert ask.collect is not None and (ask.collect.min_digits, ask.collect.max_digits) == (
            3,
            4,
        )
        short = await b.respond_keys(KeyInput("12", "terminator"), CTX)
        assert short.text == "Three or four digits." and short.collect == ask.collect
        done = await b.respond_keys(KeyInput("123", "terminator"), CTX)
        assert done.text == "Order 1 2 3 found." and done.collect is None
        # The entry is over: "1" is the menu again.
        assert (await b.respond_keys(KeyInput("1"), CTX)).intent == "hours"

    asyncio.run(scenario())


def test_speech_ends_a_pending_entry() -> None:
    async def scenario() -> None:
        b = brain()
        await b.respond("I want my order", CTX)
        assert (await b.respond("what are your hours", CTX)).intent == "hours"
        assert (await b.respond_keys(KeyInput("123"), CTX)).intent == "invalid_key"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("patch", "error"),
    [
        (('key = "1"', 'key = "12"'), "one keypad key"),
        (('key = "4"', 'key = "1"'), 'key "1" picks both'),
        (('key = "1"', 'key = "x"'), "keypad keys"),
        (("min_digits = 3", "min_digits = 5"), "min_digits"),
        (("max_digits = 4", "max_digits = 4\nspeed = 1"), 'unknown key(s) "speed"'),
        (("max_digits = 4", 'max_digits = 4\nspeech = "yes"'), '"speech" must be true or false'),
    ],
)
def test_bad_keypad_settings_are_named(patch: tuple[str, str], error: str) -> None:
    with pytest.raises(PlaybookError, match=error.replace("(", r"\(").replace(")", r"\)")):
        brain(BOOK.replace(*patch, 1))


def test_an_entry_may_be_said_unless_the_playbook_says_keys_only() -> None:
    async def scenario() -> None:
        ask = await brain().respond_keys(KeyInput("4"), CTX)
        assert ask.collect is not None and ask.collect.spoken
        keys_only = brain(BOOK.replace("max_digits = 4", "max_digits = 4\nspeech = false"))
        ask = await keys_only.respond_keys(KeyInput("4"), CTX)
        assert ask.collect is not None and not ask.collect.spoken

    asyncio.run(scenario())
