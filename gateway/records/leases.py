"""Gateways and their liveness leases in the record store, and the closing of the calls of
gateways that died.

A gateway killed with ``kill -9`` (or by the OOM killer) cannot end its calls, so each serve
process has a row in ``gateways`` and renews its ``seen_at``
(:meth:`~gateway.records.store.CallRecords.heartbeat`, every ``lease_s / 3``);
``calls.gateway`` names the gateway whose worker answered the SIP call.  A gateway is *live*
while it is not stopped and its ``seen_at`` is within the larger of its own lease and the
reader's, by the database's clock (never a machine's: clocks of gateways sharing PostgreSQL
may be skewed).  Open calls (``start_at`` set, ``sip_end_at`` NULL) of gateways that are not
live are closed with the end reason :data:`~gateway.records.model.GATEWAY_RESTARTED`: by
:func:`claim` when serve starts (calls of its own id included: it holds that gateway's SIP
port now, so the old process is dead) and by :func:`heartbeat` while it runs.  The row times
the closing writes (``sip_end_at``, ``end_at``) are the closer's ``time.time()``, like every
other row time.  Gateway ids must be unique among the gateways sharing a store (serve uses
``<hostname>:<sip listen port>``): a second gateway with the same id closes the first's calls.

Open calls with no gateway were written before migration 5, by a version without leases.
:func:`claim` closes them only when no other gateway is live: on a store that was not
shared, or whose gateways were all stopped, they are dead.  A gateway of an older version
that still runs on a shared PostgreSQL has no lease to see, so upgrade the gateways sharing
a database together; a call closed by mistake gets its real ``sip_end_at`` and end reason
when the gateway that runs it records its end.

Every function here runs inside the store's write transaction (:func:`gateway_rows`: under
its lock), on the connection it is given.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Final

from gateway.records.backends import Backend
from gateway.records.model import GATEWAY_RESTARTED

__all__ = ["claim", "gateway_rows", "heartbeat", "release"]

# A gateway is live while it is not stopped and was seen within the larger of its own lease
# and the reader's (parameters: the reader's lease twice, the database's time now).
_LIVE: Final = "stopped_at IS NULL AND seen_at + CASE WHEN lease_s > ? THEN lease_s ELSE ? END >= ?"
# An open call: the SIP side started and has not ended.
_OPEN: Final = "start_at IS NOT NULL AND sip_end_at IS NULL"


def _close_dead_calls(
    db: Backend, gateway_id: str, lease_s: float, now: float, *, claim: bool
) -> int:
    """Close the open calls of gateways that are not live (``now``: the database's clock);
    return how many.

    At a claim, ``gateway_id`` (ours) counts as dead, and calls with no gateway are closed
    when no other gateway is live; at a heartbeat our own calls are left alone.
    """
    live = f"SELECT id FROM gateways WHERE id <> ? AND {_LIVE}"
    live_params: list[object] = [gateway_id, lease_s, lease_s, now]
    if claim:
        dead = f"gateway IS NOT NULL AND gateway NOT IN ({live})"
        params = live_params
        if not db.query(f"{live} LIMIT 1", live_params):
            dead = f"{dead} OR gateway IS NULL"
    else:
        dead = f"gateway <> ? AND gateway NOT IN ({live})"
        params = [gateway_id, *live_params]
    at = time.time()
    # What sip_ended(..., GATEWAY_RESTARTED) writes, for every such call at once.
    return db.execute(
        "UPDATE calls SET end_reason = ?, sip_end_at = ?, end_at = COALESCE(end_at, ?),"
        " duration_s = COALESCE(duration_s, ? - start_at), updated_at = ?"
        f" WHERE {_OPEN} AND ({dead})",
        [GATEWAY_RESTARTED, at, at, at, at, *params],
    )


def _renew(db: Backend, gateway_id: str, lease_s: float, now: float, *, fresh: bool) -> None:
    """Record the gateway ``gateway_id`` as seen ``now`` (``fresh``: started now, by this
    process)."""
    updates = "seen_at = excluded.seen_at, lease_s = excluded.lease_s, stopped_at = NULL"
    if fresh:
        updates += ", host = excluded.host, pid = excluded.pid, started_at = excluded.started_at"
    db.execute(
        "INSERT INTO gateways (id, host, pid, lease_s, started_at, seen_at)"
        f" VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET {updates}",
        (gateway_id, socket.gethostname(), os.getpid(), lease_s, now, now),
    )


def claim(db: Backend, gateway_id: str, lease_s: float) -> int:
    """Close the open calls of dead gateways (ours from before included), then record
    ``gateway_id`` as started now by this process; return how many calls were closed."""
    now = db.now()
    closed = _close_dead_calls(db, gateway_id, lease_s, now, claim=True)
    _renew(db, gateway_id, lease_s, now, fresh=True)
    return closed


def heartbeat(db: Backend, gateway_id: str, lease_s: float) -> int:
    """Renew the lease of ``gateway_id``, then close the open calls of other gateways whose
    lease expired; return how many."""
    now = db.now()
    _renew(db, gateway_id, lease_s, now, fresh=False)
    return _close_dead_calls(db, gateway_id, lease_s, now, claim=False)


def release(db: Backend, gateway_id: str) -> None:
    """Mark ``gateway_id`` stopped, unless another process claimed its row since."""
    now = db.now()
    db.execute(
        "UPDATE gateways SET seen_at = ?, stopped_at = ? WHERE id = ? AND pid = ? AND host = ?",
        (now, now, gateway_id, os.getpid(), socket.gethostname()),
    )


def gateway_rows(db: Backend, lease_s: float) -> list[dict[str, Any]]:
    """The rows of ``gateways``, most recently seen first, each with ``live`` (by its lease,
    or by ``lease_s`` when that is longer)."""
    now = db.now()
    rows = db.query(
        f"SELECT gateways.*, CASE WHEN {_LIVE} THEN 1 ELSE 0 END AS live"
        " FROM gateways ORDER BY seen_at DESC, id",
        (lease_s, lease_s, now),
    )
    for row in rows:
        row["live"] = bool(row["live"])
    return rows
