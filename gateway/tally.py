"""What only a worker process sees, counted for the supervisor's metrics: vendor errors,
failovers to a secondary provider, and refused stream connections.

Counting is a dict increment under a lock: cheap enough for any code path but the media
clock thread's (nothing on it counts).  The worker sends what was counted since its last
report as deltas (`take`), in a `gateway.pool.protocol.Tallied` message: every few
seconds when something was counted, and before each call's end is reported, so a call's
errors are in the metrics by the time the call is.

One `Tally` per process (`TALLY`); a process that runs no pool worker (``sipagent call``,
the tests) counts into it and nobody reads it.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from gateway.providers.base import ProviderError

__all__ = ["TALLY", "Tally", "TallyDelta", "count_vendor_error", "counted"]


@dataclass(frozen=True)
class TallyDelta:
    """What was counted since the last `Tally.take`: vendor errors by (vendor, kind),
    failovers by stage (``stt``, ``tts``, ``brain``), refused stream connections by reason."""

    vendor_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    failovers: dict[str, int] = field(default_factory=dict)
    streams_refused: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.vendor_errors or self.failovers or self.streams_refused)


class Tally:
    """Counters of one process; every method may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: Counter[tuple[str, str]] = Counter()
        self._failovers: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()

    def vendor_error(self, vendor: str, kind: str) -> None:
        """A call to ``vendor`` failed with a `ProviderError` of ``kind``."""
        with self._lock:
            self._errors[(vendor, kind)] += 1

    def failover(self, stage: str) -> None:
        """Stage ``stage`` handed its work to its next provider (a secondary)."""
        with self._lock:
            self._failovers[stage] += 1

    def stream_refused(self, reason: str) -> None:
        """A Plivo stream connection was refused for ``reason``."""
        with self._lock:
            self._refused[reason] += 1

    def take(self) -> TallyDelta:
        """Everything counted since the last call, and start again from zero."""
        with self._lock:
            delta = TallyDelta(dict(self._errors), dict(self._failovers), dict(self._refused))
            self._errors.clear()
            self._failovers.clear()
            self._refused.clear()
        return delta


TALLY = Tally()
"""This process's counters."""

_COUNTED = "_sipagent_counted"


def count_vendor_error(exc: ProviderError) -> ProviderError:
    """Count ``exc`` once (the failover layer sees an error first and the turn it failed
    may see it again: the second sighting is not another error); returns it."""
    if not getattr(exc, _COUNTED, False):
        setattr(exc, _COUNTED, True)
        TALLY.vendor_error(exc.provider, exc.kind)
    return exc


def counted(exc: ProviderError) -> ProviderError:
    """``exc`` marked as counted without counting it: a summary of failures counted one by
    one already ("every TTS provider failed")."""
    setattr(exc, _COUNTED, True)
    return exc
