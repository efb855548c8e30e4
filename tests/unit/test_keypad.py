"""Tests for gateway.pipeline.keypad.KeypadEntry: keys and times in, decisions out."""

from __future__ import annotations

from gateway.pipeline.keypad import KeypadEntry
from gateway.providers.base import DigitCollect, KeyInput


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
