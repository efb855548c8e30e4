"""The offline recogniser expects the playbook: its language model is trained on the
playbook and on what any caller says, interpolated with the general model, and built again
when the playbook file changes (issue 17)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.providers.base import CallContext
from gateway.providers.pocketsphinx_stt import PocketsphinxStt, decode_stream, new_decoder
from gateway.providers.scripted import (
    DEMO_PLAYBOOK,
    PlaybookFile,
    ScriptedBrain,
    load_playbook,
)
from gateway.providers.sphinx_bias import (
    CALL_PHRASES,
    DIGITS,
    corpus,
    playbook_phrases,
    reply_phrases,
    spoken_digits,
    words_of,
)
from gateway.providers.sphinx_native import dictionary_path
from tests.helpers.speech import PUMPERNICKEL_INTENT, recognise


def test_the_training_text_holds_the_playbook_and_any_call() -> None:
    playbook = load_playbook(DEMO_PLAYBOOK)
    lines = playbook_phrases(playbook)
    hours = next(i for i in playbook.intents if i.name == "hours")
    assert set(hours.keywords) <= set(lines)
    assert set(hours.examples) <= set(lines)
    assert {"one", "press one", "option one"} <= set(lines)  # hours is key 1
    assert set(CALL_PHRASES) <= set(lines)
    assert set(DIGITS) <= set(lines)
    # Every digit follows every digit somewhere: any spoken number is a likely path.
    walk = max(lines, key=len).split()
    assert len(set(itertools.pairwise(walk))) == 100
    # Without a playbook (an LLM brain) the call phrases are still expected.
    assert set(CALL_PHRASES) <= set(playbook_phrases(None))


def test_words_are_spelled_as_the_dictionary_has_them() -> None:
    assert words_of("That\u2019s all, THANKS!") == ["that's", "all", "thanks"]
    assert words_of("Press 4 or 12") == ["press", "four", "or", "one", "two"]


def test_words_the_dictionary_lacks_are_left_out_and_named() -> None:
    text, unknown = corpus(["I want a ciabatta", "Pumpernickel please"], dictionary_path())
    assert unknown == ["ciabatta"]
    assert text.splitlines() == ["i want a", "pumpernickel please"]


@pytest.mark.parametrize(
    ("said", "heard"),
    [
        ("Goodbye.", "goodbye"),  # the general model: "the bike"
        ("Eight six zero five.", "eight six zero five"),  # "it took zero five"
    ],
)
def test_the_biased_model_hears_what_callers_say_on_a_fresh_decoder(
    phone_line: Callable[[str], bytes], demo_text: str, said: str, heard: str
) -> None:
    general = decode_stream(phone_line(said), new_decoder())
    assert decode_stream(phone_line(said), new_decoder(demo_text)) == heard, general


def test_speech_outside_the_playbook_still_comes_through(
    phone_line: Callable[[str], bytes], demo_text: str
) -> None:
    # Words the playbook never mentions, recognised by the general model's share.
    pcm = phone_line("Can you repeat that?")
    assert decode_stream(pcm, new_decoder(demo_text)) == "can you repeat that"
    pcm = phone_line("I would like to book a flight to Paris.")
    assert decode_stream(pcm, new_decoder(demo_text)).startswith("i would like to book a")


def test_weight_zero_is_the_general_model(phone_line: Callable[[str], bytes]) -> None:
    pcm = phone_line("Goodbye.")
    assert decode_stream(pcm, new_decoder("goodbye\n", weight=0.0)) == decode_stream(
        pcm, new_decoder()
    )


@pytest.fixture
def playbook_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "playbook.toml"
    path.write_text(DEMO_PLAYBOOK.read_text())
    yield path


def test_a_changed_playbook_is_expected_from_the_next_utterance(
    playbook_file: Path, phone_line: Callable[[str], bytes]
) -> None:
    source = PlaybookFile(playbook_file, check_every_s=0.0)
    stt = PocketsphinxStt(decoders=1, playbook=source)
    try:
        pcm = phone_line("Pumpernickel.")
        assert "pumpernickel" not in asyncio.run(recognise(stt, pcm))
        playbook_file.write_text(DEMO_PLAYBOOK.read_text() + PUMPERNICKEL_INTENT)
        # The next utterance asks the decoding process to build the model again first.
        assert asyncio.run(recognise(stt, pcm)) == "pumpernickel"
        assert stt.wait_models_built(1, timeout=30)
        assert source.version == 2
    finally:
        asyncio.run(stt.close())


def test_a_broken_edit_keeps_the_last_good_playbook(
    playbook_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = PlaybookFile(playbook_file, check_every_s=0.0)
    brain = ScriptedBrain(source)
    ctx = CallContext(call_id="c1")
    playbook_file.write_text("[agent]\nname = \n")
    assert asyncio.run(brain.respond("when are you open", ctx)).intent == "hours"
    assert "keeping the last good one" in caplog.text
    assert source.version == 1
    playbook_file.write_text(DEMO_PLAYBOOK.read_text() + PUMPERNICKEL_INTENT)
    reply = asyncio.run(brain.respond("do you have pumpernickel", ctx))
    assert reply.intent == "special" and source.version == 2


def test_a_phrase_outweighs_a_word_it_contains() -> None:
    playbook = load_playbook(DEMO_PLAYBOOK)
    for said in ("I want to check my order status", "Can you track my order?"):
        intent = playbook.match(said)
        assert intent is not None and intent.name == "order_status", said
    intent = playbook.match("I would like to order a cake")
    assert intent is not None and intent.name == "order"


def test_every_demo_example_matches_its_own_intent() -> None:
    playbook = load_playbook(DEMO_PLAYBOOK)
    for intent in playbook.intents:
        for example in intent.examples:
            got = playbook.match(example)
            assert got is not None and got.name == intent.name, (example, got)


def test_the_demo_softphone_expects_what_the_agent_says() -> None:
    playbook = load_playbook(DEMO_PLAYBOOK)
    lines = reply_phrases(playbook)
    assert "We are closed on Sunday." in lines  # the hours reply, sentence by sentence
    assert playbook.greeting.split(". ")[0] + "." in lines
    assert not any("{" in line for line in lines)  # the entry's "{digits}" is left out


@pytest.mark.parametrize(
    ("heard", "meant"),
    [
        ("six to nine four one eight", "six two nine four one eight"),
        ("four to seven one", "four two seven one"),
        ("five five five oh one two three", "five five five zero one two three"),
        ("one for three two", "one four three two"),
        # Not a number: the words stay.
        ("from nine to five", "from nine to five"),
        ("i want to four two seven one", "i want to four two seven one"),
        ("oh thanks", "oh thanks"),
        ("we open at seven to eight for two", "we open at seven to eight for two"),
    ],
)
def test_digits_said_in_a_row_stay_digits(heard: str, meant: str) -> None:
    assert spoken_digits(heard) == meant


def test_the_playbook_is_expected_only_when_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.providers import pocketsphinx_stt
    from sip_config import load_settings

    seen: list[object] = []
    monkeypatch.setattr(
        pocketsphinx_stt, "PocketsphinxStt", lambda **kw: seen.append(kw["playbook"])
    )
    pocketsphinx_stt.build(load_settings(env_file=None))
    pocketsphinx_stt.build(
        load_settings(
            env_file=None, overrides={"providers": {"brain": "openai"}, "openai": {"api_key": "k"}}
        )
    )
    assert isinstance(seen[0], PlaybookFile) and seen[1] is None
