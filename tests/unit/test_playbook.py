"""Tests for the scripted brain and its TOML playbooks (gateway.providers.scripted)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.providers.base import Brain, BrainReply, CallContext
from gateway.providers.scripted import (
    DEMO_PLAYBOOK,
    Intent,
    Playbook,
    PlaybookError,
    ScriptedBrain,
    load_playbook,
    normalize_words,
    stem,
)

CTX = CallContext(call_id="test-call", from_uri="sip:alice@example.com")

MINIMAL_AGENT = """
[agent]
name = "Shop"
greeting = "Hi."
fallback = "Pardon?"
reprompt = "Still there?"
goodbye = "Bye now."
"""


@pytest.fixture(scope="module")
def demo() -> Playbook:
    return load_playbook(DEMO_PLAYBOOK)


def keyword_playbook(*intents: Intent) -> Playbook:
    """A playbook of `intents` alone, its prompts one letter each."""
    return Playbook(
        name="x", greeting="g", fallback="f", reprompt="r", goodbye="b", intents=intents
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "playbook.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_playbook_loads(demo: Playbook) -> None:
    assert demo.name == "Maple Street Bakery"
    assert demo.greeting == (
        "Hello, thanks for calling Maple Street Bakery. How can I help you today?"
    )
    names = [i.name for i in demo.intents]
    for required in ("hours", "address", "menu", "order", "human", "goodbye"):
        assert required in names
    by_name = {i.name: i for i in demo.intents}
    assert by_name["goodbye"].actions == ("hangup",)
    assert by_name["goodbye"].reply == "Thanks for calling Maple Street Bakery. Goodbye!"
    assert by_name["human"].actions == ()
    assert all(i.actions == () for i in demo.intents if i.name != "goodbye")


def test_demo_replies_are_tts_friendly(demo: Playbook) -> None:
    texts = [demo.greeting, demo.fallback, demo.reprompt, demo.goodbye]
    texts += [i.reply for i in demo.intents]
    for text in texts:
        assert not any(ch.isdigit() for ch in text), text
        assert not any(ch in "$%&@#/*" for ch in text), text


def test_demo_menu_reply_is_long(demo: Playbook, speech_8k: Callable[[str], bytes]) -> None:
    menu = next(i for i in demo.intents if i.name == "menu")
    assert len(menu.reply.split(".")) >= 5  # four or five sentences
    seconds = len(speech_8k(menu.reply)) / 2 / 8000
    assert seconds >= 12.0


@pytest.mark.parametrize(
    ("transcript", "intent"),
    [
        ("what are your opening hours", "hours"),
        ("when do you open", "hours"),
        ("what time do you close on saturday", "hours"),
        ("are you open on sundays", "hours"),
        ("where are you located", "address"),
        ("what's your address", "address"),
        ("how do i get there", "address"),
        ("what is on the menu", "menu"),
        ("how much are the croissants", "menu"),
        ("do you have gluten free bread", "menu"),
        ("i would like to order a birthday cake", "order"),
        ("can i talk to a person please", "human"),
        ("i want to speak to someone", "human"),
        ("operator", "human"),
        ("can i speak to a representative", "human"),
        ("okay thank you bye", "goodbye"),
        ("no that's all", "goodbye"),
        ("goodbye", "goodbye"),
        ("What are your OPENING hours?!", "hours"),
    ],
)
def test_demo_matches_transcripts(demo: Playbook, transcript: str, intent: str) -> None:
    matched = demo.match(transcript)
    assert matched is not None, transcript
    assert matched.name == intent


@pytest.mark.parametrize("transcript", ["", "   ", "uh", "the weather is nice", "banana"])
def test_demo_no_match(demo: Playbook, transcript: str) -> None:
    assert demo.match(transcript) is None


def test_words_and_phrases_match_whole_words_only() -> None:
    pb = keyword_playbook(
        Intent("bye", ("bye",), "Bye."),
        Intent("phrase", ("talk to a person",), "Hold on."),
    )
    assert pb.match("standby mode") is None  # "bye" is not a word in it
    assert pb.match("bye") is not None
    assert pb.match("a person to talk to") is None  # phrase words out of order
    matched = pb.match("can i talk to a person")
    assert matched is not None and matched.name == "phrase"


def test_highest_score_wins_and_ties_go_first() -> None:
    pb = keyword_playbook(
        Intent("a", ("cake",), "A."),
        Intent("b", ("cake", "birthday"), "B."),
        Intent("c", ("birthday",), "C."),
    )
    assert (m := pb.match("a birthday cake")) is not None and m.name == "b"
    assert (m := pb.match("cake")) is not None and m.name == "a"
    assert (m := pb.match("birthday")) is not None and m.name == "b"


def test_normalisation_and_plural_tolerance() -> None:
    assert normalize_words("It's seven O'Clock, OK?") == ["its", "seven", "oclock", "ok"]
    assert normalize_words("that\u2019s all") == ["thats", "all"]
    assert stem("hours") == stem("hour")
    assert stem("opening") == stem("open")
    assert stem("pastries") == stem("pastry")
    assert stem("cookies") == stem("cookie")
    assert stem("addresses") == stem("address")
    assert stem("bye") == "bye"
    pb = keyword_playbook(
        Intent("hours", ("opening hour",), "Nine."), Intent("t", ("o'clock",), "T.")
    )
    assert (m := pb.match("your opening hours")) is not None and m.name == "hours"
    assert (m := pb.match("at nine oclock")) is not None and m.name == "t"


@pytest.mark.parametrize(
    "transcript",
    [
        "Thanks, bye bye.",
        "okay thanks a lot bye now",
        "Alright, I'll hang up now.",
        "ok that's great thank you very much bye",
        "okay him down bye",  # a garbled goodbye: two stray words
    ],
)
def test_a_goodbye_with_closing_talk_hangs_up(demo: Playbook, transcript: str) -> None:
    matched = demo.match(transcript)
    assert matched is not None and matched.name == "goodbye" and matched.ends_call


@pytest.mark.parametrize(
    "transcript",
    [
        "i think i bye on the wrong number",  # "I think I dialled the wrong number"
        "goodbye bit of a couple of loaves",  # "Could I reserve a couple of loaves?"
    ],
)
def test_a_bye_inside_other_talk_does_not_hang_up(demo: Playbook, transcript: str) -> None:
    assert demo.match(transcript) is None
    reply = asyncio.run(ScriptedBrain(demo).respond(transcript, CTX))
    assert reply == BrainReply(text=demo.fallback, actions=(), intent=None)


def test_a_passed_over_hangup_leaves_the_turn_to_the_next_intent() -> None:
    pb = keyword_playbook(
        Intent("bye", ("bye", "wrong number"), "Bye.", actions=("hangup",)),
        Intent("order", ("loaves",), "Order."),
    )
    # "bye" and "wrong number" outscore "loaves", but three words are not closing talk.
    assert (m := pb.match("bye wrong number a couple of fresh loaves")) is not None
    assert m.name == "order"
    assert (m := pb.match("okay wrong number bye")) is not None and m.name == "bye"


def test_scripted_brain(demo: Playbook) -> None:
    brain = ScriptedBrain(demo)
    assert isinstance(brain, Brain)
    assert brain.name == "scripted"

    greeting = asyncio.run(brain.greeting(CTX))
    assert greeting == BrainReply(text=demo.greeting, intent="greeting")

    hours = asyncio.run(brain.respond("what are your opening hours", CTX))
    assert hours.intent == "hours"
    assert hours.text.startswith("We are open Monday to Friday")
    assert hours.actions == ()

    bye = asyncio.run(brain.respond("okay thank you bye", CTX))
    assert bye == BrainReply(
        text="Thanks for calling Maple Street Bakery. Goodbye!",
        actions=("hangup",),
        intent="goodbye",
    )

    human = asyncio.run(brain.respond("can i talk to a person please", CTX))
    assert human.intent == "human" and "hold" in human.text.lower() and human.actions == ()

    for text in ("", "purple monkey dishwasher"):
        fallback = asyncio.run(brain.respond(text, CTX))
        assert fallback == BrainReply(text=demo.fallback, actions=(), intent=None)

    first = asyncio.run(brain.no_input(CTX, 1))
    assert first.text == demo.reprompt and first.actions == ()
    for attempt in (2, 3):
        last = asyncio.run(brain.no_input(CTX, attempt))
        assert last.text == demo.goodbye and last.actions == ("hangup",)


def test_minimal_playbook_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL_AGENT
        + """
[[intents]]
name = "x"
keywords = ["foo bar"]
reply = "Foo."
""",
    )
    pb = load_playbook(path)
    assert pb.greeting == "Hi."
    assert pb.intents == (Intent("x", ("foo bar",), "Foo."),)


def _intent(body: str) -> str:
    return MINIMAL_AGENT + '\n[[intents]]\nname = "ok"\nkeywords = ["a"]\nreply = "A."\n' + body


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL_AGENT.replace('greeting = "Hi."\n', ""), "missing agent.greeting"),
        (MINIMAL_AGENT.replace('fallback = "Pardon?"', "fallback = 3"), "agent.fallback must"),
        (MINIMAL_AGENT.replace('reprompt = "Still there?"', 'reprompt = "  "'), "agent.reprompt"),
        (MINIMAL_AGENT.replace("name =", "nmae ="), '"nmae"'),
        ("[[intents]]\nname='a'\nkeywords=['a']\nreply='b'\n", "missing [agent] table"),
        (
            _intent('[[intents]]\nname = "address"\nkeywords = ["where"]\n'),
            'intent #2 ("address"): missing "reply"',
        ),
        (_intent('[[intents]]\nkeywords = ["where"]\nreply = "R."\n'), 'intent #2: missing "name"'),
        (
            _intent(
                '[[intents]]\nname = "x"\nkeywords = ["a"]\nreply = "R."\nactions = ["dance"]\n'
            ),
            'unknown action "dance" in intent "x"',
        ),
        (_intent('[[intents]]\nname = "e"\nkeywords = []\nreply = "R."\n'), '"keywords" is empty'),
        (_intent('[[intents]]\nname = "e"\nreply = "R."\n'), 'intent #2 ("e"): missing "keywords"'),
        (_intent('[[intents]]\nname = "e"\nkeywords = "a"\nreply = "R."\n'), "list of strings"),
        (_intent('[[intents]]\nname = "e"\nkeywords = ["?!"]\nreply = "R."\n'), "no words"),
        (_intent('[[intents]]\nname = "ok"\nkeywords = ["b"]\nreply = "R."\n'), "duplicate"),
        (_intent('[[intents]]\nname = "e"\nkeyword = ["b"]\nreply = "R."\n'), '"keyword"'),
        (MINIMAL_AGENT + '\n[intents]\nname = "x"\n', "array of tables"),
        ("intents = 3\n" + MINIMAL_AGENT, "array of tables"),
        (MINIMAL_AGENT + "\n[extra]\n", 'unknown key(s) "extra"'),
        ("[agent\nname = 1", "not valid TOML"),
    ],
)
def test_playbook_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PlaybookError) as info:
        load_playbook(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError, match="not found"):
        load_playbook(tmp_path / "nope.toml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe[agent]")
    with pytest.raises(PlaybookError, match="UTF-8"):
        load_playbook(path)
