"""What the supervisor knows about its workers, shared with the answer_url app.

Pure bookkeeping (no processes, no pjsua2): the supervisor updates it from the workers'
status messages; the app asks it for a worker with a free slot.  A slot handed to the app
is *reserved* until the INVITE for that call reaches the worker (matched by the Plivo
CallUUID carried in ``X-PH-CallUUID``) or until the reservation expires, so a burst of
answer requests cannot send more calls to a worker than it can take.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from gateway.pipeline.activity import ACTIVITIES, Activity

WorkerKind = Literal["sip", "stream"]
"""A SIP worker (pjsua2, 4 calls) or a stream worker (Plivo audio streams over WebSocket)."""


@dataclass(frozen=True)
class DialTarget:
    """Where the answer_url app should send a call."""

    worker: int
    uri: str


@dataclass(frozen=True)
class LiveCall:
    """A call in progress on a worker, as its start was reported, and what the agent is
    doing on it as last reported (None: nothing yet) (for the console)."""

    sip_call_id: str
    call_uuid: str | None
    from_uri: str | None
    to_uri: str | None
    direction: str
    started_at: float  # unix time the worker reported
    activity: Activity | None = None

    def as_dict(self, worker: int) -> dict[str, Any]:
        """JSON-friendly view, with the worker's index."""
        return {
            "worker": worker,
            "sip_call_id": self.sip_call_id,
            "call_uuid": self.call_uuid,
            "from_uri": self.from_uri,
            "to_uri": self.to_uri,
            "direction": self.direction,
            "started_at": self.started_at,
            "activity": self.activity,
        }


@dataclass
class WorkerInfo:
    """One worker slot of the pool (the process in it may be restarted)."""

    index: int
    max_calls: int
    kind: WorkerKind = "sip"
    uri: str = ""
    pid: int | None = None
    up: bool = False
    registered: bool | None = None  # None: not a registering worker
    registration: str = ""  # last registration status text
    accepting: bool = True
    calls: set[str] = field(default_factory=set)  # SIP Call-IDs in progress
    uuids: dict[str, str] = field(default_factory=dict)  # CallUUID -> SIP Call-ID, in progress
    reservations: dict[str, float] = field(default_factory=dict)  # CallUUID -> expiry
    # Calls without a conversation holding a call slot (a warm transfer's call to the
    # human), by SIP Call-ID.
    legs: set[str] = field(default_factory=set)
    live: dict[str, LiveCall] = field(default_factory=dict)  # SIP Call-ID -> its start
    restarts: int = 0
    started_at: float = 0.0

    def free_slots(self, now: float) -> int:
        """Calls this worker could still take, counting unexpired reservations."""
        live = sum(1 for exp in self.reservations.values() if exp > now)
        return self.max_calls - len(self.calls) - len(self.legs) - live

    def routable(self) -> bool:
        """Up, accepting, and registered when it registers."""
        return self.up and self.accepting and self.registered is not False and bool(self.uri)

    def as_dict(self, now: float) -> dict[str, Any]:
        """JSON-friendly view."""
        return {
            "index": self.index,
            "kind": self.kind,
            "max_calls": self.max_calls,
            "pid": self.pid,
            "uri": self.uri,
            "up": self.up,
            "registered": self.registered,
            "registration": self.registration,
            "accepting": self.accepting,
            "calls": len(self.calls),
            "legs": len(self.legs),
            "reserved": sum(1 for exp in self.reservations.values() if exp > now),
            "free": max(0, self.free_slots(now)) if self.routable() else 0,
            "restarts": self.restarts,
        }


class PoolState:
    """Thread-safe worker table.  All methods may be called from any thread."""

    def __init__(
        self,
        workers: int,
        max_calls: int,
        *,
        stream_workers: int = 0,
        stream_max_calls: int = 0,
        reserve_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.reserve_s = reserve_s
        self.draining = False
        # SIP workers first (index 0..workers-1), then the stream workers.
        self.workers = [WorkerInfo(index=i, max_calls=max_calls) for i in range(workers)]
        self.workers += [
            WorkerInfo(index=workers + i, max_calls=stream_max_calls, kind="stream")
            for i in range(stream_workers)
        ]

    # --- queries (answer_url app) -------------------------------------------------------
    def reserve(self, call_uuid: str, kind: WorkerKind = "sip") -> DialTarget | None:
        """Pick the routable worker of ``kind`` with the most free slots and hold one slot
        for ``call_uuid`` (``reserve_s``).  Returns None when no worker can take a call (or
        while draining).  A stream call's connection goes to whichever stream worker the
        kernel hands it (they share one port): for streams the slots count pool-wide."""
        return self.reserve_for(call_uuid, self.reserve_s, kind)

    def reserve_for(
        self, call_uuid: str, hold: float, kind: WorkerKind = "sip"
    ) -> DialTarget | None:
        """`reserve` with a hold of ``hold`` seconds (an outbound call holds its slot while
        the callee's phone rings).  Reserving again refreshes the hold."""
        with self._lock:
            now = self._clock()
            if self.draining:
                return None
            for w in self.workers:
                if call_uuid in w.reservations and w.routable() and w.kind == kind:
                    w.reservations[call_uuid] = now + hold
                    return DialTarget(w.index, w.uri)
            best: WorkerInfo | None = None
            best_free = 0
            for w in self.workers:
                if not w.routable() or w.kind != kind:
                    continue
                free = w.free_slots(now)
                if free > best_free:
                    best, best_free = w, free
            if best is None:
                return None
            self._expire(best, now)
            best.reservations[call_uuid] = now + hold
            return DialTarget(best.index, best.uri)

    def release(self, call_uuid: str) -> None:
        """Drop a reservation (e.g. the dial failed before the INVITE arrived)."""
        with self._lock:
            for w in self.workers:
                w.reservations.pop(call_uuid, None)

    def ready(self, kind: WorkerKind | None = None) -> bool:
        """True when at least one worker (of ``kind``, None: any) can take a call now."""
        with self._lock:
            now = self._clock()
            return not self.draining and any(
                w.routable() and w.free_slots(now) > 0 and kind in (None, w.kind)
                for w in self.workers
            )

    def kinds(self) -> set[WorkerKind]:
        """The kinds of worker the pool runs."""
        return {w.kind for w in self.workers}

    def snapshot(self) -> list[dict[str, Any]]:
        """Every worker's state, for status pages and logs."""
        with self._lock:
            now = self._clock()
            return [w.as_dict(now) for w in self.workers]

    def live_calls(self) -> list[dict[str, Any]]:
        """The calls in progress whose start was reported, oldest first, each with its
        worker's index (`LiveCall.as_dict`)."""
        with self._lock:
            calls = [c.as_dict(w.index) for w in self.workers for c in w.live.values()]
        return sorted(calls, key=lambda c: c["started_at"])

    def total_calls(self) -> int:
        """Calls in progress across the pool."""
        with self._lock:
            return sum(len(w.calls) for w in self.workers)

    # --- updates (supervisor) -----------------------------------------------------------
    def worker_up(self, index: int, pid: int, uri: str, registers: bool) -> None:
        """A worker process is listening at ``uri``."""
        with self._lock:
            w = self.workers[index]
            w.pid, w.uri, w.up = pid, uri, True
            w.registered = False if registers else None
            w.registration = "registering" if registers else ""
            w.accepting = not self.draining
            w.started_at = self._clock()

    def worker_down(self, index: int) -> set[str]:
        """The worker's process is gone; returns the calls it had in progress."""
        with self._lock:
            w = self.workers[index]
            calls = set(w.calls)
            w.up, w.pid = False, None
            w.restarts += 1
            w.calls.clear()
            w.live.clear()
            w.legs.clear()
            w.uuids.clear()
            w.reservations.clear()
            if w.registered is not None:
                w.registered = False
                w.registration = "worker restarting"
            return calls

    def set_registration(self, index: int, registered: bool, status: str) -> None:
        """Registration state reported by a worker."""
        with self._lock:
            w = self.workers[index]
            w.registered, w.registration = registered, status

    def call_started(
        self, index: int, sip_call_id: str, call_uuid: str | None, live: LiveCall | None = None
    ) -> None:
        """A worker took a call; its reservation (if any) becomes a call.  ``live``: what
        the worker reported of it, listed by `live_calls`."""
        with self._lock:
            w = self.workers[index]
            w.calls.add(sip_call_id)
            if live is not None:
                w.live[sip_call_id] = live
            if call_uuid:
                w.uuids[call_uuid] = sip_call_id
                for other in self.workers:
                    other.reservations.pop(call_uuid, None)

    def call_ended(self, index: int, sip_call_id: str) -> None:
        """A worker's call ended."""
        with self._lock:
            w = self.workers[index]
            w.calls.discard(sip_call_id)
            w.live.pop(sip_call_id, None)
            for uuid in [u for u, c in w.uuids.items() if c == sip_call_id]:
                del w.uuids[uuid]

    def set_activity(self, index: int, sip_call_id: str, activity: str) -> bool:
        """What the agent now does on a live call of worker ``index``; ignored (False) for
        a call not listed (its start unreported, or it ended) or a value not an `Activity`."""
        if activity not in ACTIVITIES:
            return False
        with self._lock:
            w = self.workers[index]
            live = w.live.get(sip_call_id)
            if live is None:
                return False
            w.live[sip_call_id] = replace(live, activity=activity)
            return True

    def leg_changed(self, index: int, sip_call_id: str, up: bool) -> None:
        """A worker's call without a conversation took (``up``) or freed a call slot."""
        with self._lock:
            legs = self.workers[index].legs
            if up:
                legs.add(sip_call_id)
            else:
                legs.discard(sip_call_id)

    def find_call(self, key: str) -> tuple[int, str] | None:
        """(worker index, SIP Call-ID) of the call in progress whose SIP Call-ID or Plivo
        CallUUID is `key`; None when no worker has it."""
        with self._lock:
            for w in self.workers:
                if key in w.calls:
                    return w.index, key
                if key in w.uuids:
                    return w.index, w.uuids[key]
        return None

    def start_draining(self) -> None:
        """Route no new calls."""
        with self._lock:
            self.draining = True
            for w in self.workers:
                w.accepting = False
                w.reservations.clear()

    @staticmethod
    def _expire(w: WorkerInfo, now: float) -> None:
        for uuid in [u for u, exp in w.reservations.items() if exp <= now]:
            del w.reservations[uuid]
