"""Pure helpers of the agent's SIP side: the source allow-list, registration retry backoff
and the registration status text (no SIP stack runs here)."""

from __future__ import annotations

import ipaddress
import re

import pytest

from gateway.sip.allowlist import parse_networks, source_allowed, source_ip
from gateway.sip.refusals import RefusalLog
from gateway.sip.registration import RetryBackoff, registration_status

LOCAL_V4 = parse_networks(["127.0.0.1/32"])
MIXED = parse_networks(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1/128"])


# -- allow-list -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("127.0.0.1:5060", "127.0.0.1"),
        ("10.1.2.3:40000", "10.1.2.3"),
        ("[::1]:5060", "::1"),
        ("[2001:db8::5]:5080", "2001:db8::5"),
        ("[fe80::1%eth0]:5060", "fe80::1"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::7", "2001:db8::7"),
        (" 127.0.0.1:5060 ", "127.0.0.1"),
    ],
)
def test_source_ip_reads_pjsip_address_forms(source: str, expected: str) -> None:
    assert source_ip(source) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("source", ["", "sipp.example:5060", "[::1", "1.2.3:5060", "[]:5060"])
def test_source_ip_of_garbage_is_none(source: str) -> None:
    assert source_ip(source) is None


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("127.0.0.1:5060", True),
        ("127.0.0.2:5060", False),
        ("127.0.0.1:1", True),
        ("[::1]:5060", False),  # an IPv6 source never matches an IPv4 network
        ("[::ffff:127.0.0.1]:5060", True),  # IPv4-mapped
        ("garbage", False),
    ],
)
def test_single_ipv4_host(source: str, allowed: bool) -> None:
    assert source_allowed(source, LOCAL_V4) is allowed


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("10.255.0.1:5060", True),
        ("11.0.0.1:5060", False),
        ("192.0.2.7:5060", True),
        ("192.0.2.8:5060", False),
        ("[2001:db8:ffff::1]:5060", True),
        ("[2001:db9::1]:5060", False),
        ("[::1]:5060", True),
        ("::1", True),
        ("[::2]:5060", False),
        ("[::ffff:10.0.0.9]:5060", True),
    ],
)
def test_mixed_networks(source: str, allowed: bool) -> None:
    assert source_allowed(source, MIXED) is allowed


def test_empty_list_allows_everyone_even_garbage() -> None:
    assert source_allowed("203.0.113.9:5060", ())
    assert source_allowed("not an address", ())


def test_networks_are_parsed_like_the_settings_validator() -> None:
    (net,) = parse_networks([" 10.1.2.3/8 "])  # host bits ignored, spaces stripped
    assert net == ipaddress.ip_network("10.0.0.0/8")
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is not an IP network")):
        parse_networks(["10.0.0.0/33"])


def test_refusal_log_warns_once_per_source_per_window() -> None:
    rl = RefusalLog(window_s=60.0, max_sources=2)
    assert rl.note("a", 0.0) == 0
    assert rl.note("a", 1.0) is None
    assert rl.note("a", 2.0) is None
    assert rl.note("b", 2.0) == 0  # another source still warns
    assert rl.note("a", 61.0) == 2  # next window: says how many were not logged
    assert rl.note("c", 62.0) == 0  # table full: cleared, stays bounded
    assert len(rl._seen) <= 2


# -- registration retry backoff -------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = RetryBackoff(5.0, 60.0)
    assert [b.next_delay() for _ in range(6)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    b.reset()
    assert b.next_delay() == 5.0


def test_backoff_with_a_cap_below_the_first_retry_uses_the_cap() -> None:
    b = RetryBackoff(10.0, 4.0)
    assert [b.next_delay() for _ in range(3)] == [4.0, 4.0, 4.0]


# -- registration status text ---------------------------------------------------------------
def _status(code: int, reason: str, *, expires: int = 0, retry_in: float | None = None) -> str:
    return registration_status(
        code,
        reason,
        registrar="127.0.0.1:5090",
        username="agent1",
        expires=expires,
        retry_in=retry_in,
    )


def test_status_of_success_names_the_expiry() -> None:
    assert _status(200, "OK", expires=300) == "200 OK, expires in 300 s"
    assert _status(200, "OK", expires=0) == "200 OK, unregistered"


@pytest.mark.parametrize(("code", "reason"), [(403, "Forbidden"), (401, "Unauthorized")])
def test_status_of_rejected_credentials_names_the_account_and_the_setting(
    code: int, reason: str
) -> None:
    assert _status(code, reason, retry_in=5.0) == (
        f"{code} {reason}: the registrar rejected the credentials of agent1"
        " (check registration.accounts password), retrying in 5 s"
    )


def test_status_of_a_timeout_names_the_registrar_and_the_retry() -> None:
    assert _status(408, "Request Timeout", retry_in=5.0) == (
        "408 Request Timeout: registrar 127.0.0.1:5090 did not answer, retrying in 5 s"
    )


def test_status_of_other_failures() -> None:
    assert "does not know agent1" in _status(404, "Not Found", retry_in=1.5)
    assert _status(404, "Not Found", retry_in=1.5).endswith("retrying in 1.5 s")
    assert "unreachable or unavailable" in _status(503, "Service Unavailable", retry_in=60.0)
    assert _status(500, "Server Error") == (
        "500 Server Error: registrar 127.0.0.1:5090 refused the registration"
    )
    sent = _status(0, "Invalid URI (PJSIP_EINVALIDURI)", retry_in=5.0)
    assert sent.startswith("Invalid URI (PJSIP_EINVALIDURI): cannot send REGISTER to registrar")
