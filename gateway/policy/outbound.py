"""Outbound-call policy: who may be called, when, and how fast (pure code, no pjsua2).

* `DncList`: the do-not-call file, one number per line, ``#`` comments, numbers compared
  in E.164 form (`normalise_number`).
* `calling_hours_refusal`: the calling-hours window in the callee's time zone (from the
  request, else the longest matching prefix of ``outbound.zones``, else
  ``outbound.timezone``).  The window is local wall-clock time, so it follows DST.
* `TokenBucket` / `CpsLimiter`: calls per second across the whole pool (the supervisor's
  process holds the one limiter).  A request beyond the rate *waits its turn*: each one
  reserves the next free start time; only when more than ``max_queue`` requests are
  already waiting is it refused instead.

`OutboundPolicy.check` applies the DNC list and the hours; the caller then takes a CPS
slot.  Refusals carry a `Refusal`: what kind, and a reason for people and the call record
(the answer_url app picks the HTTP status).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "CpsLimiter",
    "DncList",
    "OutboundPolicy",
    "Refusal",
    "RefusalKind",
    "TokenBucket",
    "callee_number",
    "calling_hours_refusal",
    "normalise_number",
    "zone_for",
]

_SEPARATORS = re.compile(r"[\s().\-/]")
_DIGITS = re.compile(r"^\+?[0-9]{3,15}$")


def normalise_number(text: str, default_country: str = "1") -> str | None:
    """A phone number in E.164 form (``+14155550123``), or None when it is not one.

    Spaces, dots, dashes, slashes and brackets are dropped; ``00`` is the international
    prefix; a bare national number of 10 digits gets ``default_country``; any other bare
    digit string is taken as already international.
    """
    digits = _SEPARATORS.sub("", text.strip())
    if not _DIGITS.match(digits):
        return None
    if digits.startswith("+"):
        return digits
    if digits.startswith("00"):
        rest = digits[2:]
        return "+" + rest if len(rest) >= 3 else None
    if len(digits) == 10 and default_country:
        return f"+{default_country}{digits}"
    return "+" + digits


def callee_number(to: str) -> str | None:
    """The E.164 number a destination names: a number, or the user part of a
    ``sip:+1415...@host`` URI when it is a number; None otherwise (a SIP name)."""
    text = to.strip()
    if text.startswith(("sip:", "sips:")):
        user = text.split(":", 1)[1].split("@", 1)[0].split(";", 1)[0]
        return normalise_number(user) if "@" in text else None
    return normalise_number(text)


class RefusalKind(StrEnum):
    """What kind of rule refused a call."""

    DO_NOT_CALL = "do-not-call"
    OUTSIDE_HOURS = "outside-hours"
    UNKNOWN_ZONE = "unknown-zone"  # the callee's time zone is not one we know


@dataclass(frozen=True)
class Refusal:
    """Why a call is not placed: the kind of rule, and a reason for people and records."""

    kind: RefusalKind
    reason: str


class DncList:
    """The do-not-call numbers (E.164)."""

    def __init__(self, numbers: Iterable[str] = ()) -> None:
        self.numbers = frozenset(numbers)

    @classmethod
    def parse(cls, text: str, source: str = "do-not-call list") -> DncList:
        """One number per line; ``#`` starts a comment; blank lines are skipped.  A line
        that is not a number raises ValueError naming the line."""
        numbers: list[str] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            number = normalise_number(entry)
            if number is None:
                raise ValueError(f"{source} line {lineno}: {entry!r} is not a phone number")
            numbers.append(number)
        return cls(numbers)

    @classmethod
    def load(cls, path: Path | None) -> DncList:
        """Read the file (None: an empty list)."""
        if path is None:
            return cls()
        return cls.parse(path.read_text(encoding="utf-8"), str(path))

    def __contains__(self, number: object) -> bool:
        return isinstance(number, str) and number in self.numbers

    def __len__(self) -> int:
        return len(self.numbers)


def zone_for(number: str | None, zones: Mapping[str, str], default: str) -> str:
    """The callee's time zone: the longest ``zones`` prefix (digits, no '+') that the
    number starts with, else ``default``."""
    if number:
        digits = number.lstrip("+")
        best = ""
        for prefix in zones:
            if digits.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        if best:
            return zones[best]
    return default


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def calling_hours_refusal(now: float, zone: str, start: str, end: str) -> Refusal | None:
    """None when unix time ``now`` is within [start, end) local time in ``zone``; else a
    refusal saying the callee's local time.  A local time skipped or repeated by a DST
    change is judged by the wall clock the callee sees at that instant."""
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return Refusal(RefusalKind.UNKNOWN_ZONE, f"unknown time zone {zone!r}")
    local = datetime.fromtimestamp(now, UTC).astimezone(tz)
    minute = local.hour * 60 + local.minute
    if _minutes(start) <= minute < _minutes(end):
        return None
    return Refusal(
        RefusalKind.OUTSIDE_HOURS,
        f"outside calling hours: {local:%H:%M} in {zone} (calls allowed {start}-{end})",
    )


class TokenBucket:
    """A token bucket that queues instead of refusing (pure: the caller passes the time).

    ``rate`` tokens per second, at most ``burst`` saved up.  `take` always takes a token;
    the balance may go negative, and ``-balance`` tokens are owed by requests waiting for
    their start time.  With ``max_queue`` requests already waiting, `take` refuses.
    """

    def __init__(self, rate: float, burst: int = 1, max_queue: int = 20) -> None:
        if rate <= 0 or burst < 1 or max_queue < 0:
            raise ValueError("rate must be > 0, burst >= 1, max_queue >= 0")
        self.rate = rate
        self.burst = burst
        self.max_queue = max_queue
        self._tokens = float(burst)
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now

    def waiting(self, now: float) -> int:
        """Requests holding a future start time."""
        self._refill(now)
        return math.ceil(-self._tokens - 1e-9) if self._tokens < 0 else 0

    def take(self, now: float) -> float | None:
        """Seconds to wait before this call may start (0: at once), or None when the
        queue is full."""
        self._refill(now)
        if self._tokens < 1 - 1e-9 and self.waiting(now) >= self.max_queue:
            return None
        self._tokens -= 1.0
        if self._tokens >= -1e-9:
            return 0.0
        return -self._tokens / self.rate


class CpsLimiter:
    """Thread-safe `TokenBucket` for request threads: `acquire` sleeps until the call's
    turn, or returns False at once when the queue is full."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        max_queue: int = 20,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket = TokenBucket(rate, burst, max_queue)
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def acquire(self) -> float | None:
        """Wait for a slot; returns the seconds waited, or None when refused (queue full)."""
        with self._lock:
            delay = self.bucket.take(self._clock())
        if delay is None:
            return None
        if delay > 0:
            self._sleep(delay)
        return delay


@dataclass
class OutboundPolicy:
    """DNC and calling hours for one destination (the CPS limit is separate: it waits)."""

    dnc: DncList
    zones: Mapping[str, str]
    default_zone: str
    window_start: str
    window_end: str

    def zone(self, number: str | None, requested: str | None = None) -> str:
        """The callee's zone: the request's, else by prefix, else the default."""
        return requested or zone_for(number, self.zones, self.default_zone)

    def check(self, to: str, now: float, timezone: str | None = None) -> Refusal | None:
        """None when ``to`` may be called at unix time ``now``; else why not."""
        number = callee_number(to)
        if number is not None and number in self.dnc:
            return Refusal(RefusalKind.DO_NOT_CALL, f"{number} is on the do-not-call list")
        return calling_hours_refusal(
            now, self.zone(number, timezone), self.window_start, self.window_end
        )
