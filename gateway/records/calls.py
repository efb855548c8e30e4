"""The SQL of the ``calls`` and ``turns`` tables: the merging upsert, the row key of a
SIP-side event, and the lookups of calls and their turns.

A row is keyed by ``call_uuid``: Plivo's CallUUID (or the app's id of a call it placed),
else ``sip:<Call-ID>`` for a call known only by its SIP side, a row the CallUUID adopts when
the two are first seen together.  Every function runs on the connection it is given, the
writes inside the store's write transaction (which holds the database's writer lock), the
reads under the store's lock; :class:`~gateway.records.store.CallRecords` provides both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gateway.records.backends import Backend
from gateway.records.model import GATEWAY_RESTARTED, SIP_PREFIX, AmbiguousCallId, CallTurn, sip_key
from gateway.records.schema import call_from_row, turn_columns, turn_from_row

__all__ = ["find", "get", "recent", "turns", "upsert", "write_sip", "write_turn"]

_CALL_COLUMNS: Final = (
    "calls.*, (SELECT COUNT(*) FROM turns WHERE turns.call_id = calls.id) AS turn_count"
)


# --- writes -------------------------------------------------------------------------------
def upsert(db: Backend, key: str, fields: Mapping[str, object], at: float) -> None:
    """Insert or merge ``fields`` into the row ``key``."""
    names = list(fields)
    columns = ", ".join(["call_uuid", *names, "created_at", "updated_at"])
    marks = ", ".join("?" for _ in range(len(names) + 3))
    # A NULL in the new event keeps what the row already has.
    merges = ", ".join(f"{n} = COALESCE(excluded.{n}, calls.{n})" for n in names)
    sql = (
        f"INSERT INTO calls ({columns}) VALUES ({marks}) ON CONFLICT (call_uuid) DO UPDATE"
        f" SET {merges}{', ' if merges else ''}updated_at = excluded.updated_at"
    )
    db.execute(sql, [key, *fields.values(), at, at])


def _sip_row_key(db: Backend, call_uuid: str | None, sip_call_id: str) -> str:
    """Key for a SIP-side event; merges a ``sip:`` row into the CallUUID's row."""
    if call_uuid:
        if not db.query("SELECT 1 FROM calls WHERE call_uuid = ?", (call_uuid,)):
            # The SIP side was first seen without its CallUUID: adopt that row.
            db.execute(
                "UPDATE calls SET call_uuid = ? WHERE call_uuid = ?",
                (call_uuid, sip_key(sip_call_id)),
            )
        return call_uuid
    rows = db.query(
        "SELECT call_uuid FROM calls WHERE sip_call_id = ? ORDER BY id DESC LIMIT 1",
        (sip_call_id,),
    )
    return str(rows[0]["call_uuid"]) if rows else sip_key(sip_call_id)


def write_sip(
    db: Backend,
    call_uuid: str | None,
    sip_call_id: str,
    fields: Mapping[str, object],
    at: float,
    *,
    ended: bool,
) -> None:
    """Merge ``fields`` of a SIP-side event into the call's row (``ended``: the SIP call
    ended, which ends a SIP-only call)."""
    key = _sip_row_key(db, call_uuid, sip_call_id)
    if ended:
        # A call closed because its gateway's lease lapsed, that the gateway ends after
        # all: its own end replaces the times the closing derived.
        db.execute(
            "UPDATE calls"
            " SET end_at = CASE WHEN end_at = sip_end_at THEN NULL ELSE end_at END,"
            " duration_s = CASE WHEN duration_s = sip_end_at - start_at THEN NULL"
            " ELSE duration_s END WHERE call_uuid = ? AND end_reason = ?",
            (key, GATEWAY_RESTARTED),
        )
    upsert(db, key, {"sip_call_id": sip_call_id, **fields}, at)
    if ended:
        # Plivo's hangup time wins; a SIP-only call ends when its SIP side does.
        db.execute(
            "UPDATE calls SET end_at = COALESCE(end_at, sip_end_at),"
            " duration_s = COALESCE(duration_s, sip_end_at - start_at)"
            " WHERE call_uuid = ?",
            (key,),
        )


def write_turn(db: Backend, rec: CallTurn) -> None:
    """Insert the turn, or replace the stored turn of the same number."""
    columns = turn_columns(rec)
    names = ", ".join(["call_id", *columns, "at"])
    marks = ", ".join("?" for _ in range(len(columns) + 2))
    updates = ", ".join(f"{n} = excluded.{n}" for n in (*columns, "at") if n != "turn")
    key = _sip_row_key(db, rec.call_uuid, rec.sip_call_id)
    upsert(db, key, {"sip_call_id": rec.sip_call_id}, rec.at)
    row = db.query("SELECT id FROM calls WHERE call_uuid = ?", (key,))[0]
    db.execute(
        f"INSERT INTO turns ({names}) VALUES ({marks})"
        f" ON CONFLICT (call_id, turn) DO UPDATE SET {updates}",
        [row["id"], *columns.values(), rec.at],
    )


# --- reads --------------------------------------------------------------------------------
def get(db: Backend, call_id: str) -> dict[str, Any] | None:
    """The call by CallUUID, by ``sip:<Call-ID>`` key, or by SIP Call-ID (the latest)."""
    rows = db.query(
        f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_uuid IN (?, ?) ORDER BY id LIMIT 1",
        (call_id, sip_key(call_id)),
    )
    if not rows:
        rows = db.query(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE sip_call_id = ? ORDER BY id DESC LIMIT 1",
            (call_id,),
        )
    return call_from_row(rows[0]) if rows else None


def find(db: Backend, call_id: str) -> dict[str, Any] | None:
    """:func:`get`, else the one call whose key or SIP Call-ID starts with ``call_id``
    (:class:`AmbiguousCallId` when several do)."""
    exact = get(db, call_id)
    if exact is not None or not call_id:
        return exact
    n = len(call_id)
    rows = db.query(
        f"SELECT {_CALL_COLUMNS} FROM calls WHERE substr(call_uuid, 1, ?) = ?"
        " OR substr(call_uuid, 1, ?) = ? OR substr(sip_call_id, 1, ?) = ?"
        " ORDER BY id LIMIT 11",
        (n, call_id, n + len(SIP_PREFIX), sip_key(call_id), n, call_id),
    )
    if len(rows) > 1:
        raise AmbiguousCallId(call_id, [str(r["call_uuid"]) for r in rows[:10]])
    return call_from_row(rows[0]) if rows else None


def turns(db: Backend, call_id: str) -> list[dict[str, Any]]:
    """The turns of the call :func:`get` finds, in order."""
    record = get(db, call_id)
    if record is None:
        return []
    rows = db.query("SELECT * FROM turns WHERE call_id = ? ORDER BY turn", (record["id"],))
    return [turn_from_row(row) for row in rows]


def recent(db: Backend, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` most recently created calls, newest first."""
    rows = db.query(
        f"SELECT {_CALL_COLUMNS} FROM calls ORDER BY created_at DESC, id DESC LIMIT ?",
        (max(0, int(limit)),),
    )
    return [call_from_row(row) for row in rows]
