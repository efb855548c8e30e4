"""Tests for gateway.providers.textchunks.speech_chunks."""

from __future__ import annotations

import random

import pytest

from gateway.providers.scripted import DEMO_PLAYBOOK, load_playbook
from gateway.providers.textchunks import SentenceCutter, speech_chunks


def normalised(text: str) -> str:
    return " ".join(text.split())


def test_empty_and_blank_text_give_no_pieces() -> None:
    assert speech_chunks("") == []
    assert speech_chunks("   \n\t  ") == []


@pytest.mark.parametrize("text", ["Goodbye.", "Hello there!", "Yes", "Is that all?"])
def test_single_short_sentence_is_unchanged(text: str) -> None:
    assert speech_chunks(text) == [text]


def test_whitespace_is_normalised() -> None:
    assert speech_chunks("  Hello   there \n friend.  ") == ["Hello there friend."]


def test_rest_after_the_first_sentence_stays_one_piece() -> None:
    text = "Thanks for calling. We are open today. Closed on Sunday!"
    assert speech_chunks(text) == ["Thanks for calling.", "We are open today. Closed on Sunday!"]


@pytest.mark.parametrize("end", [".", "!", "?", ";"])
def test_sentence_ends(end: str) -> None:
    assert speech_chunks(f"Right away{end} Anything else?") == [
        f"Right away{end}",
        "Anything else?",
    ]


def test_no_split_without_whitespace_after_the_stop() -> None:
    assert speech_chunks("It costs 3.50 dollars") == ["It costs 3.50 dollars"]


# Cases spelled out by speech_chunks' docstring ------------------------------------------------


def test_long_first_sentence_is_cut_at_its_first_clause_break() -> None:
    text = "We are at one twenty four Maple Street, right next to the public library."
    assert speech_chunks(text) == [
        "We are at one twenty four Maple Street,",
        "right next to the public library.",
    ]


def test_colon_is_a_clause_break_too() -> None:
    text = "Here is what we have today: bread, muffins and cookies."
    assert speech_chunks(text) == ["Here is what we have today:", "bread, muffins and cookies."]


def test_only_the_first_clause_break_is_used() -> None:
    text = "Our breads are sourdough, whole wheat, and rye, all baked fresh."
    assert speech_chunks(text) == [
        "Our breads are sourdough,",
        "whole wheat, and rye, all baked fresh.",
    ]


def test_first_sentence_of_at_most_first_max_words_is_not_cut() -> None:
    six_words = "Sure, I can help with that."
    assert len(six_words.split()) == 6
    assert speech_chunks(six_words) == [six_words]
    seven_words = "Sure, I can help you with that."
    assert speech_chunks(seven_words) == [seven_words]  # clause "Sure," has one word
    assert speech_chunks(seven_words, first_max_words=7) == [seven_words]


def test_clause_shorter_than_three_words_is_not_cut_off() -> None:
    text = "Hello, thanks for calling Maple Street Bakery."
    assert speech_chunks(text) == [text]
    two_words = "Hello there, thanks for calling Maple Street Bakery."
    assert speech_chunks(two_words) == [two_words]
    three_words = "Hello there friend, thanks for calling Maple Street Bakery."
    assert speech_chunks(three_words) == [
        "Hello there friend,",
        "thanks for calling Maple Street Bakery.",
    ]


def test_long_first_piece_is_cut_before_a_phrase_word() -> None:
    # 16 words, no comma: cut before a phrase start near word 6 ("and" at index 6).
    text = "Our breads include sourdough whole wheat and rye at about six dollars a loaf and more."
    assert speech_chunks(text) == [
        "Our breads include sourdough whole wheat",
        "and rye at about six dollars a loaf and more.",
    ]


def test_phrase_cut_picks_the_boundary_nearest_first_max_words() -> None:
    # Phrase words at index 3 ("in") and 8 ("with"); |8 - 6| < |3 - 6|, so the cut is at 8.
    text = "We make bread in the oven every morning with flour from the mill next door."
    assert speech_chunks(text) == [
        "We make bread in the oven every morning",
        "with flour from the mill next door.",
    ]
    # Equal distance: min() keeps the earlier boundary.
    tie = "One two three and five six seven eight nine or eleven twelve thirteen."
    assert speech_chunks(tie) == [
        "One two three",
        "and five six seven eight nine or eleven twelve thirteen.",
    ]


def test_phrase_cut_needs_three_words_before_and_two_after() -> None:
    # The only phrase words are at index 1 ("and") and at index len-2 ("to"): no valid cut.
    text = "Bread and butter croissants muffins cookies cakes tarts rolls buns pies to go."
    assert speech_chunks(text) == [text]


def test_phrase_cut_only_within_phrase_max_words() -> None:
    # The only phrase word sits at index 12, beyond phrase_max_words=10: no cut.
    text = "One two three four five six seven eight nine ten eleven twelve and fourteen fifteen."
    assert speech_chunks(text) == [text]
    assert speech_chunks(text, phrase_max_words=12) == [
        "One two three four five six seven eight nine ten eleven twelve",
        "and fourteen fifteen.",
    ]


def test_first_piece_of_exactly_phrase_max_words_is_not_cut() -> None:
    text = "One two three and five six seven eight nine ten."
    assert len(text.split()) == 10
    assert speech_chunks(text) == [text]


def test_phrase_words_match_case_insensitively() -> None:
    text = "Please tell me all About your cakes tarts pies rolls buns tonight."
    assert speech_chunks(text) == [
        "Please tell me all",
        "About your cakes tarts pies rolls buns tonight.",
    ]


def test_clause_cut_then_phrase_cut() -> None:
    text = (
        "We are open Monday to Friday from seven in the morning to six in the evening, "
        "and on Saturday from eight to two. We are closed on Sunday."
    )
    assert speech_chunks(text) == [
        "We are open Monday to Friday",
        "from seven in the morning to six in the evening,",
        "and on Saturday from eight to two.",
        "We are closed on Sunday.",
    ]


def test_custom_limits() -> None:
    text = "Yes, we deliver, to every street in town."
    assert speech_chunks(text) == [text]  # 8 words but the first clause is one word
    text = "Yes we do, we deliver to every street in town."
    assert speech_chunks(text, first_max_words=3) == [
        "Yes we do,",
        "we deliver to every street in town.",
    ]
    assert speech_chunks(text, first_max_words=10) == [text]


# Properties --------------------------------------------------------------------------------


def _demo_texts() -> list[str]:
    book = load_playbook(DEMO_PLAYBOOK)
    texts = [book.greeting, book.fallback, book.reprompt, book.goodbye]
    texts += [intent.reply for intent in book.intents]
    return texts


def _random_texts(count: int) -> list[str]:
    rng = random.Random(1234)
    vocab = [
        *("we", "are", "open", "and", "from", "to", "with", "on", "in", "at", "for"),
        *("about", "when", "where", "which", "that", "bread", "cake", "Monday"),
        *("morning", "street", "library", "cookies", "the", "a", "of"),
    ]
    stops = ["", "", "", ",", ":", ".", "!", "?", ";"]
    spaces = [" ", " ", "  ", "\n", "\t "]
    texts = []
    for _ in range(count):
        words = []
        for _ in range(rng.randint(1, 40)):
            words.append(rng.choice(vocab) + rng.choice(stops))
        texts.append(rng.choice(spaces) + "".join(w + rng.choice(spaces) for w in words))
    return texts


@pytest.mark.parametrize("text", _demo_texts() + _random_texts(300))
def test_pieces_join_back_to_the_normalised_text(text: str) -> None:
    pieces = speech_chunks(text)
    assert " ".join(pieces) == normalised(text)
    assert all(piece and piece == piece.strip() for piece in pieces)


@pytest.mark.parametrize("text", _demo_texts())
def test_demo_first_pieces_are_short(text: str) -> None:
    first = speech_chunks(text)[0]
    assert len(first.split()) <= 10, first


def test_demo_playbook_replies() -> None:
    book = load_playbook(DEMO_PLAYBOOK)
    assert speech_chunks(book.greeting) == [
        "Hello, thanks for calling Maple Street Bakery.",
        "How can I help you today?",
    ]
    address = next(i for i in book.intents if i.name == "address")
    assert speech_chunks(address.reply) == [
        "We are at one twenty four Maple Street,",
        "right next to the public library.",
        "There is free parking behind the building.",
    ]


def _cut_stream(deltas: list[str]) -> list[str]:
    cutter = SentenceCutter()
    out: list[str] = []
    for d in deltas:
        out += cutter.push(d)
    return out + cutter.flush()


def test_cutter_hands_out_each_sentence_when_it_is_complete() -> None:
    cutter = SentenceCutter()
    assert cutter.push("We open") == []
    assert cutter.push(" at seven. We") == ["We open at seven."]
    assert cutter.push(" close at six!") == []  # no space after yet: maybe "six!!" or "6.5"
    assert cutter.push(" Bye") == ["We close at six!"]
    assert cutter.flush() == ["Bye"]
    assert cutter.flush() == []


def test_cutter_cuts_the_first_sentence_at_its_first_clause() -> None:
    words = "Well, we are open every weekday from seven, until six in the evening. Thanks."
    pieces = _cut_stream([w + " " for w in words.split()])
    assert pieces == [
        "Well,",  # a lead-in is spoken while the rest of the sentence is written
        "we are open every weekday from seven, until six in the evening.",
        "Thanks.",
    ]


def test_cutter_hands_out_a_lead_in_as_soon_as_its_comma_is_followed() -> None:
    cutter = SentenceCutter()
    assert cutter.push("Sure,") == []  # "Sure,000"? not yet a clause break
    assert cutter.push(" I") == ["Sure,"]
    assert cutter.push(" can help with that, gladly. Anything") == ["I can help with that, gladly."]
    assert cutter.flush() == ["Anything"]


def test_cutter_never_cuts_inside_numbers_and_keeps_all_text() -> None:
    text = "It costs 3.50 dollars, plus tax; that is all. Really"
    for size in (1, 2, 5, 100):
        deltas = [text[i : i + size] for i in range(0, len(text), size)]
        pieces = _cut_stream(deltas)
        assert " ".join(pieces) == text
        assert all("3.50" in p or "3." not in p for p in pieces)
