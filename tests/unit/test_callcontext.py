"""Tests for gateway.plivo.callcontext: the Dial sipHeaders encoding and its decoding."""

from __future__ import annotations

import re

import pytest

from gateway.plivo.callcontext import (
    MAX_VALUE_LEN,
    decode_call_context,
    decode_value,
    encode_sip_headers,
    encode_value,
    record_key,
)
from gateway.sip.calls import parse_sip_headers

UUID = "3f2a9c1e-7b4d-4e8a-9f01-23456789abcd"
# Plivo's rules: name = capital + lowercase/digits (<= 24), value alphanumeric (<= 120).
_PLIVO_KEY = re.compile(r"^[A-Z][a-z0-9]{0,23}$")
_PLIVO_VALUE = re.compile(r"^[A-Za-z0-9]{1,120}$")


def as_invite_headers(sip_headers: str) -> dict[str, str]:
    """What the SIP side sees: Plivo turns each ``k=v`` into ``X-PH-k: v`` on the INVITE."""
    lines = ["INVITE sip:agent@127.0.0.1:5070 SIP/2.0", "Call-ID: abc@host"]
    for pair in sip_headers.split(","):
        key, _, value = pair.partition("=")
        lines.append(f"X-PH-{key}: {value}")
    return parse_sip_headers("\r\n".join([*lines, "", ""]))


def assert_plivo_valid(sip_headers: str) -> None:
    for pair in sip_headers.split(","):
        key, sep, value = pair.partition("=")
        assert sep == "=", pair
        assert _PLIVO_KEY.match(key), key
        assert _PLIVO_VALUE.match(value), value


@pytest.mark.parametrize(
    ("caller", "called"),
    [
        ("+14155550100", "+442071234567"),
        ("14155550100", "442071234567"),
        ("sip:alice@phone.plivo.com", "+14155550199"),
        ("sip:bob;x=1@example.com:5061", "sip:agent12345@phone.plivo.com"),
        ("anonymous", "0"),
        ("+", "caf\u00e9"),
    ],
)
def test_round_trip_through_the_invite(caller: str, called: str) -> None:
    encoded = encode_sip_headers(UUID, caller, called)
    assert_plivo_valid(encoded)
    context = decode_call_context(as_invite_headers(encoded))
    assert context == {"call_uuid": UUID, "from": caller, "to": called}


def test_uuid_is_sent_as_its_hex_digits_and_case_is_kept() -> None:
    upper = UUID.upper()
    encoded = encode_sip_headers(upper, "1", "2")
    assert encoded.startswith("Calluuid=" + upper.replace("-", "") + ",")
    assert decode_call_context(as_invite_headers(encoded))["call_uuid"] == upper


def test_numbers_use_the_documented_forms() -> None:
    assert encode_value("14155550100") == "14155550100"
    assert encode_value("+14155550100") == "p14155550100"
    assert encode_value("sip:a@b") == "x" + b"sip:a@b".hex()
    assert decode_value("p14155550100") == "+14155550100"
    assert decode_value("14155550100") == "14155550100"


def test_non_canonical_call_uuid_round_trips() -> None:
    for odd in ("not-a-uuid", "0123456789abcdef0123456789abcdef", "abc"):
        encoded = encode_sip_headers(odd, "1", "2")
        assert_plivo_valid(encoded)
        assert decode_call_context(as_invite_headers(encoded))["call_uuid"] == odd


def test_too_long_values_are_left_out() -> None:
    long_uri = "sip:" + "a" * 80 + "@example.com"
    assert encode_value(long_uri) is None
    encoded = encode_sip_headers(UUID, long_uri, "+1234")
    assert "From=" not in encoded
    assert_plivo_valid(encoded)
    assert decode_call_context(as_invite_headers(encoded)) == {"call_uuid": UUID, "to": "+1234"}
    assert encode_value("1" * MAX_VALUE_LEN) == "1" * MAX_VALUE_LEN
    assert encode_value("1" * (MAX_VALUE_LEN + 1)) is None
    assert encode_value("") is None
    assert encode_sip_headers("", "", "") == ""


def test_decode_matches_names_case_insensitively_and_keeps_other_headers() -> None:
    headers = {
        "x-ph-calluuid": UUID.replace("-", ""),
        "X-PH-FROM": "p15550001111",
        "X-Ph-To": "15550002222",
        "X-PH-Customerid": "AB12",
        "X-Other": "ignored",
        "Call-ID": "abc",
        "X-PH-": "no name",
    }
    assert decode_call_context(headers) == {
        "call_uuid": UUID,
        "from": "+15550001111",
        "to": "15550002222",
        "customerid": "AB12",
    }


def test_decode_tolerates_values_in_no_encoded_form() -> None:
    headers = {"X-PH-From": "xzz", "X-PH-To": "x" + "ff", "X-PH-Calluuid": "plain"}
    assert decode_call_context(headers) == {"from": "xzz", "to": "xff", "call_uuid": "plain"}
    assert decode_call_context({}) == {}


def test_a_call_recorded_under_another_id_carries_both() -> None:
    ours = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    encoded = encode_sip_headers(UUID, "+14155550100", "+14155550199", record_id=ours)
    context = decode_call_context(as_invite_headers(encoded))
    assert (context["call_uuid"], context["record_id"]) == (UUID, ours)
    assert record_key(context) == ours
    # The same id twice is sent once; a call with only a CallUUID is recorded under it.
    once = encode_sip_headers(UUID, "1", "2", record_id=UUID)
    plain = decode_call_context(as_invite_headers(once))
    assert "record_id" not in plain and record_key(plain) == UUID
    assert record_key({}) == ""


def test_extra_pairs_cannot_take_the_apps_own_keys() -> None:
    encoded = encode_sip_headers(
        UUID, "1", "2", caller_name="Ana", extra={"Recordid": "x", "Customerid": "A1"}
    )
    context = decode_call_context(as_invite_headers(encoded))
    assert "record_id" not in context
    assert (context["caller_name"], context["customerid"]) == ("Ana", "A1")
