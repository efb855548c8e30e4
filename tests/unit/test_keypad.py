"""Tests for gateway.pipeline.keypad.KeypadEntry: keys and times in, decisions out."""

from __future__ import annotations

import pytest

from gateway.pipeline.keypad import KeypadEntry, spoken_entry
from gateway.providers.base import EXPECT_DIGITS, DigitCollect, KeyInput


def test_without_a_request_each_key_is_a_turn_of_its_own() -> None:
    pad = KeypadEntry()
    assert pad.press("5", 0.0) == KeyInput("5", "key")
    assert not pad.underway and pad.deadline is None


def test_an_entry_ends_at_its_terminator_without_it() -> None:
    pad = KeypadEntry()
    pad.arm(DigitCollect(max_digits=6, terminator="#", timeout_s=3.0))
    assert pad.press("1", 10.0) is None
    assert pad.press("2", 11.0) is None
    assert pad.underway and pad.deadline == 14.0  # the inter-digit timeout, from the last key
    assert pad.press("#", 12.0) == KeyInput("12", "terminator")
    assert not pad.underway and pad.collect is None  # the request is used up


def test_an_entry_ends_at_max_digits_and_swallows_a_late_terminator() -> None:
    pad = KeypadEntry()
    pad.arm(DigitCollect(max_digits=2, terminator="#", timeout_s=2.0))
    pad.press("4", 0.0)
    assert pad.press("2", 0.5) == KeyInput("42", "max")
    assert pad.swallows("#", 1.0)  # pressed out of habit right after
    assert not pad.swallows("#", 1.1)  # only once
    pad.press("4", 5.0)
    pad.arm(DigitCollect(max_digits=1, terminator="#", timeout_s=2.0))
    assert pad.press("7", 6.0) == KeyInput("7", "max")
    assert not pad.swallows("#", 9.0)  # too late: a key of its own


def test_an_entry_times_out_with_its_keys() -> None:
    pad = KeypadEntry()
    pad.arm(DigitCollect(max_digits=4, timeout_s=1.0))
    pad.press("9", 3.0)
    assert pad.deadline == 4.0
    assert pad.expire() == KeyInput("9", "timeout")
    assert pad.deadline is None


def test_a_reprompt_without_a_request_keeps_the_question_and_speech_drops_it() -> None:
    pad = KeypadEntry()
    ask = DigitCollect(max_digits=3)
    pad.arm(ask)
    pad.arm(None, reprompt=True)
    assert pad.collect == ask
    pad.arm(None)  # any other reply without one ends it
    assert pad.collect is None
    pad.arm(ask)
    pad.drop_request()
    assert pad.press("1", 0.0) == KeyInput("1", "key")


@pytest.mark.parametrize(
    ("said", "keys"),
    [
        ("one two three four five six", "123456"),
        ("It's 4 5 6.", "456"),
        ("it\u2019s four five six", "456"),
        ("my number is 1234 56", "123456"),
        ("Oh seven, nine!", "079"),
        ("order two", None),  # words of a request, not an entry
        ("one two three please", None),
        ("I don't know it", None),
        ("number", None),
        ("", None),
    ],
)
def test_a_spoken_entry_is_digits_alone_after_at_most_a_lead_in(
    said: str, keys: str | None
) -> None:
    assert spoken_entry(said) == keys


def test_an_entry_that_may_be_said_is_expected_until_a_key_or_a_turn() -> None:
    pad = KeypadEntry()
    assert pad.expected is None
    pad.arm(DigitCollect(max_digits=6))
    assert pad.expected == EXPECT_DIGITS
    pad.press("1", 0.0)
    assert pad.expected is None  # keys came: speech is ignored now
    pad.expire()
    pad.arm(DigitCollect(max_digits=6))
    assert pad.said("one two three") == KeyInput("123", "speech")
    assert pad.expected is None and pad.collect is None  # the request is used up
    pad.arm(DigitCollect(max_digits=6))
    assert pad.said("what are your hours") is None and pad.collect is None
    pad.arm(DigitCollect(max_digits=6, spoken=False))
    assert pad.expected is None
    assert pad.said("one two three") is None and pad.collect is None
    assert pad.said("one two three") is None  # nothing asked for
