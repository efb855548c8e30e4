"""Outbound-call policy: DNC list, calling hours in the callee's zone, the CPS bucket."""

from __future__ import annotations

import re
import threading
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.policy.outbound import (
    CpsLimiter,
    DncList,
    OutboundPolicy,
    RefusalKind,
    TokenBucket,
    callee_number,
    calling_hours_refusal,
    normalise_number,
    zone_for,
)
from gateway.sip.calls import outbound_outcome


def ts(zone: str, year: int, month: int, day: int, hour: int, minute: int) -> float:
    """Unix time of a local wall-clock time in ``zone`` (the first one, if repeated)."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+14155550123", "+14155550123"),
        ("+1 (415) 555-0123", "+14155550123"),
        ("0044 20 7946 0958", "+442079460958"),
        ("4155550123", "+14155550123"),  # 10 national digits: the default country
        ("442079460958", "+442079460958"),  # otherwise already international
        ("415.555.0123", "+14155550123"),
        ("12", None),
        ("call me", None),
        ("+1415555012345678", None),  # longer than E.164 allows
    ],
)
def test_numbers_are_normalised_to_e164(text: str, expected: str | None) -> None:
    assert normalise_number(text) == expected


def test_callee_number_of_uris() -> None:
    assert callee_number("sip:+14155550123@trunk.example") == "+14155550123"
    assert callee_number("sip:alice@example.com") is None
    assert callee_number("(415) 555-0123") == "+14155550123"


def test_dnc_file_with_comments_and_formats() -> None:
    dnc = DncList.parse(
        "# opted out\n+1 415 555 0123\n\n0044 20 7946 0958  # UK\n   # indented comment\n"
    )
    assert len(dnc) == 2
    assert "+14155550123" in dnc and "+442079460958" in dnc
    assert "+14155550199" not in dnc


def test_dnc_file_bad_line_is_named() -> None:
    with pytest.raises(ValueError, match=r"dnc.txt line 2: 'not-a-number'"):
        DncList.parse("+14155550123\nnot-a-number\n", "dnc.txt")


def test_zone_by_longest_prefix() -> None:
    zones = {"1": "America/Chicago", "1212": "America/New_York", "44": "Europe/London"}
    assert zone_for("+12125550100", zones, "UTC") == "America/New_York"
    assert zone_for("+13125550100", zones, "UTC") == "America/Chicago"
    assert zone_for("+33140000000", zones, "UTC") == "UTC"
    assert zone_for(None, zones, "Asia/Tokyo") == "Asia/Tokyo"


def test_hours_window_in_the_callee_zone() -> None:
    ny = "America/New_York"
    assert calling_hours_refusal(ts(ny, 2026, 6, 3, 9, 0), ny, "09:00", "20:00") is None
    assert calling_hours_refusal(ts(ny, 2026, 6, 3, 19, 59), ny, "09:00", "20:00") is None
    late = calling_hours_refusal(ts(ny, 2026, 6, 3, 20, 0), ny, "09:00", "20:00")
    assert late is not None and late.kind is RefusalKind.OUTSIDE_HOURS
    assert "20:00 in America/New_York" in late.reason
    early = calling_hours_refusal(ts(ny, 2026, 6, 3, 8, 59), ny, "09:00", "20:00")
    assert early is not None
    # The same instant is fine in London (13:59) and refused in Los Angeles (05:59).
    instant = ts(ny, 2026, 6, 3, 8, 59)
    assert calling_hours_refusal(instant, "Europe/London", "09:00", "20:00") is None
    assert calling_hours_refusal(instant, "America/Los_Angeles", "09:00", "20:00") is not None


def test_hours_follow_dst_changes() -> None:
    ny = "America/New_York"
    # 2026-03-08: clocks go 02:00 EST -> 03:00 EDT.  13:30 UTC is 08:30 EST the day before
    # (refused) but 09:30 EDT on the day (allowed): a fixed UTC offset would get one wrong.
    before = datetime(2026, 3, 7, 13, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    after = datetime(2026, 3, 8, 13, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    assert calling_hours_refusal(before, ny, "09:00", "20:00") is not None
    assert calling_hours_refusal(after, ny, "09:00", "20:00") is None
    # 2026-11-01: 01:00-02:00 happens twice; a window ending 01:30 refuses 01:45 both times.
    first = ts(ny, 2026, 11, 1, 1, 45)  # EDT
    assert calling_hours_refusal(first, ny, "00:00", "01:30") is not None
    assert calling_hours_refusal(first + 3600, ny, "00:00", "01:30") is not None
    # 01:15 is allowed both times (EDT, then EST an hour later): the callee's wall clock.
    assert calling_hours_refusal(first - 1800, ny, "00:00", "01:30") is None
    assert calling_hours_refusal(first + 1800, ny, "00:00", "01:30") is None


def test_policy_checks_dnc_before_hours() -> None:
    policy = OutboundPolicy(
        dnc=DncList(["+14155550123"]),
        zones={"1415": "America/Los_Angeles"},
        default_zone="UTC",
        window_start="09:00",
        window_end="20:00",
    )
    noon_la = ts("America/Los_Angeles", 2026, 6, 3, 12, 0)
    refusal = policy.check("+14155550123", noon_la)
    assert refusal is not None and "do-not-call" in refusal.reason
    assert policy.check("sip:+14155550123@trunk", noon_la) is not None
    assert policy.check("+14155550124", noon_la) is None
    # A per-call zone wins over the prefix table: noon in LA is 04:00 in Tokyo's next day.
    refusal = policy.check("+14155550124", noon_la, "Asia/Tokyo")
    assert refusal is not None and "Asia/Tokyo" in refusal.reason
    # A SIP name has no number: default zone (UTC: 19:00, allowed).
    assert policy.check("sip:bob@example.com", noon_la) is None


def test_token_bucket_spaces_calls_and_queues() -> None:
    bucket = TokenBucket(rate=2.0, burst=1, max_queue=3)
    assert bucket.take(100.0) == 0.0
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.0) == pytest.approx(1.0)
    assert bucket.take(100.0) == pytest.approx(1.5)
    assert bucket.waiting(100.0) == 3
    assert bucket.take(100.0) is None  # queue full: refused, nothing reserved
    assert bucket.take(100.2) is None
    # Half a second later one waiter has started: room for one more, at t=102.0.
    assert bucket.take(100.5) == pytest.approx(1.5)
    # After a long idle time the bucket holds at most `burst` tokens.
    assert bucket.take(200.0) == 0.0
    assert bucket.take(200.0) == pytest.approx(0.5)


def test_token_bucket_burst_and_no_queue() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, max_queue=0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) is None
    assert bucket.take(0.999) is None
    assert bucket.take(1.0) == 0.0


def test_cps_limiter_sleeps_its_turn_with_a_fake_clock() -> None:
    now = [10.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter = CpsLimiter(2.0, 1, 1, clock=lambda: now[0], sleep=sleep)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(0.5)
    assert limiter.acquire() is None
    assert slept == [pytest.approx(0.5)]
    now[0] += 0.5
    assert limiter.acquire() == pytest.approx(0.5)


def test_cps_limiter_is_thread_safe() -> None:
    limiter = CpsLimiter(1.0, 1, 100, clock=lambda: 0.0, sleep=lambda s: None)
    delays: list[float | None] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            d = limiter.acquire()
            with lock:
                delays.append(d)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(d for d in delays if d is not None) == [float(i) for i in range(50)]


@pytest.mark.parametrize(
    ("answered", "code", "outcome"),
    [
        (True, 200, "answered"),
        (False, 486, "busy"),
        (False, 603, "busy"),
        (False, 480, "no-answer"),
        (False, 408, "no-answer"),
        (False, 487, "no-answer"),
        (False, 404, "failed"),
        (False, 503, "failed"),
    ],
)
def test_outbound_outcomes(answered: bool, code: int, outcome: str) -> None:
    assert outbound_outcome(answered, code) == outcome


def test_outbound_settings_are_validated() -> None:
    from sip_config import ConfigError, load_settings

    def load(**outbound: Any) -> Any:
        return load_settings(None, env_file=None, overrides={"outbound": outbound})

    s = load(zones={"+1212": "America/New_York"}, headers={"X-A": "b"})
    assert s.outbound.zones == {"1212": "America/New_York"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"timezone": "Mars/Base"}, "outbound.timezone"),
        ({"zones": {"12x": "UTC"}}, "must be digits"),
        ({"zones": {"1": "Nowhere/City"}}, "unknown time zone"),
        ({"window_start": "20:00", "window_end": "09:00"}, "window_start"),
        ({"window_end": "25:00"}, "HH:MM"),
        ({"headers": {"Call-ID": "x"}}, "written by the SIP stack"),
        ({"cps": 0}, "outbound.cps"),
        ({"api_key": "k", "max_queue": 8}, "below app.threads"),
        ({"dnc_file": "/nonexistent/dnc.txt"}, "outbound.dnc_file"),
    ]
    for bad, problem in cases:
        with pytest.raises(ConfigError, match=re.escape(problem)):
            load(**bad)
