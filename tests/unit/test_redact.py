"""Tests for gateway.records.redact (PII in what callers and the agent said) and for where the
worker applies it: the turn records it logs and reports."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from gateway.pipeline.activity import Activity
from gateway.pipeline.session import TurnRecord
from gateway.pool.conversations import redact_turn, turn_reporter
from gateway.records.model import CallTurn, SipCallEnd, SipCallStart
from gateway.records.redact import CARD, EMAIL, NUMBER, PHONE, luhn_valid, redact
from sip_config import load_settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # payment cards: Luhn-valid 13 to 19 digits, any grouping
        ("my card is 4111 1111 1111 1111 thanks", f"my card is {CARD} thanks"),
        ("4111-1111-1111-1111", CARD),
        ("5500005555555559", CARD),
        ("amex 3782 822463 10005.", f"amex {CARD}."),
        ("4222222222222", CARD),  # 13 digits
        ("4111 1111 1111 1112", NUMBER),  # not Luhn-valid: still a long number
        # phone numbers
        ("+14155550100", PHONE),
        ("call +1 415 555 0100 now", f"call {PHONE} now"),
        ("+44 20 7946 0958", PHONE),
        ("+49 (30) 901820", PHONE),
        ("(415) 555-0100, please", f"{PHONE}, please"),
        ("415-555-0100", PHONE),
        ("415.555.0100", PHONE),
        ("1-800-555-0199", PHONE),
        ("07700 900123", PHONE),
        ("it's 555-0100.", f"it's {PHONE}."),
        # other long digit runs
        ("account 12345678 please", f"account {NUMBER} please"),
        ("order 123456", f"order {NUMBER}"),
        ("1 2 3 4 5 6", NUMBER),
        ("ip 192.168.1.10", f"ip {NUMBER}"),
        # e-mail addresses, written and spoken
        ("write to jo.doe+calls@mail.example.co.uk.", f"write to {EMAIL}."),
        ("it's jo dot doe at example dot com", f"it's {EMAIL}"),
        ("JANE at gmail.com please", f"{EMAIL} please"),
        # spoken digits (speech-to-text writes words)
        ("four one one one one one one one one one one one one one one one", CARD),
        ("my number is five five five zero one zero zero", f"my number is {NUMBER}"),
        ("plus four four two zero seven nine four six zero nine five eight", PHONE),
        ("four one five, five five five, zero one zero zero", PHONE),
        ("double five triple one two", NUMBER),
        ("oh, one two three four five six", f"oh, {NUMBER}"),
        ("zero seven seven zero zero nine zero zero one two three", PHONE),
        ("one two three 4 5 6", NUMBER),
    ],
)
def test_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "What are your opening hours?",
        "We open at 10:30 and close at 17:45:00.",
        "Your appointment is on 2024-01-15 at 9.",
        "That was 15.01.2024, or 1/15/2024, or 01-15-2024.",
        "It costs $1,299.99, or €250000, or £12.50.",
        "About 1,000,000 people, 3.75 percent, 12345 steps.",
        "Room 1204, flight A320, version v2.15.1, gate B12.",
        "I have 2 kids and 3 dogs, 4 5 times.",
        "one two three",
        "I want one, maybe two.",
        "Zip code 94105.",
        "between 9 30 and 10 30",
        "Oh no, one moment.",
        "mail@ alone and @handle are not addresses",
        "look at the example dot org page",
    ],
)
def test_kept(text: str) -> None:
    assert redact(text) == text


def test_several_kinds_in_one_sentence() -> None:
    text = "Card 4111111111111111, phone +14155550100, mail a@b.io, ref 987654, at 10:30."
    assert redact(text) == f"Card {CARD}, phone {PHONE}, mail {EMAIL}, ref {NUMBER}, at 10:30."


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("4111-1111")


def _record(**texts: Any) -> TurnRecord:
    return TurnRecord(call_id="c1", turn=2, kind="reply", total_ms=640.0, **texts)


def test_redact_turn_copies_the_record_with_both_texts_redacted() -> None:
    rec = _record(user_text="it is 4111 1111 1111 1111", agent_text="I'll text +14155550100")
    out = redact_turn(rec)
    assert out.user_text == f"it is {CARD}" and out.agent_text == f"I'll text {PHONE}"
    assert out.total_ms == 640.0 and out.turn == 2
    assert rec.user_text == "it is 4111 1111 1111 1111"  # the conversation's own copy


class _Listener:
    def __init__(self) -> None:
        self.turns: list[CallTurn] = []

    def call_started(self, start: SipCallStart) -> None:
        pass

    def call_ended(self, end: SipCallEnd) -> None:
        pass

    def leg_changed(self, sip_call_id: str, up: bool) -> None:
        pass

    def registration_changed(self, registered: bool, status: str) -> None:
        pass

    def turn_recorded(self, turn: CallTurn) -> None:
        self.turns.append(turn)

    def activity_changed(self, sip_call_id: str, activity: Activity) -> None:
        pass


@pytest.mark.parametrize("redact_pii", [True, False])
def test_worker_redacts_the_logged_and_reported_turn(
    redact_pii: bool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(env_file=None, overrides={"records": {"redact_pii": redact_pii}})
    said = "mail me at jo@example.com, card 4111 1111 1111 1111"
    listener = _Listener()

    # What both worker kinds hand their conversations as `on_turn`.
    report = turn_reporter(settings, listener, "c1@host", lambda: None)
    with caplog.at_level(logging.INFO, logger="sipagent"):
        report(_record(user_text=said, agent_text="Noted."))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TURN ")]
    logged = json.loads(line.removeprefix("TURN "))
    (reported,) = listener.turns
    expected = f"mail me at {EMAIL}, card {CARD}" if redact_pii else said
    assert logged["user_text"] == reported.turn["user_text"] == expected
    assert reported.sip_call_id == "c1@host"
    assert logged["agent_text"] == "Noted."
