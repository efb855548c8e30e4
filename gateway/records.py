"""Call records: one row per call in a SQLite file (stdlib ``sqlite3``, no pjsua2).

Events about a call come from two places in any order: the answer_url app (``/answer``,
``/dial-status``, ``/hangup``, keyed by Plivo's CallUUID) and the supervisor (a worker's
SIP call started/ended, keyed by the CallUUID from ``X-PH-Calluuid`` when the call came
through Plivo, else by ``sip:<Call-ID>``).  Every write is an upsert that keeps earlier
values a later event does not know (a NULL never overwrites a value).

Durability: WAL journal with ``synchronous=FULL`` and a commit per event, so a row whose
write returned survives the process being killed (and the machine losing power).

Schema changes are numbered migrations tracked with ``PRAGMA user_version``.  ``calls.id``
is a stable integer key for tables added later (e.g. per-turn records) to reference:
``call_uuid`` may change once, from ``sip:<Call-ID>`` to the CallUUID, when the two are
first seen together.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["ROUTES", "SCHEMA_VERSION", "CallRecords", "RecordsError", "sip_key"]

ROUTES: Final = ("agent", "sip", "number", "fallback", "after-hours", "hangup")
"""Values of ``calls.route``: what ``/answer`` decided for the call."""

_MIGRATIONS: Final[Sequence[str]] = (
    # 1: the calls table.
    """
    CREATE TABLE calls (
        id           INTEGER PRIMARY KEY,
        call_uuid    TEXT NOT NULL UNIQUE,
        sip_call_id  TEXT,
        from_number  TEXT,
        to_number    TEXT,
        direction    TEXT,
        route        TEXT,
        worker       INTEGER,
        sip_from     TEXT,
        sip_to       TEXT,
        answer_at    REAL,
        start_at     REAL,
        sip_end_at   REAL,
        end_at       REAL,
        duration_s   REAL,
        hangup_cause TEXT,
        dial_status  TEXT,
        dial_hangup_cause TEXT,
        dial_b_leg_uuid   TEXT,
        end_reason   TEXT,
        raw_hangup   TEXT,
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL
    );
    CREATE INDEX calls_sip_call_id ON calls (sip_call_id);
    CREATE INDEX calls_created_at ON calls (created_at);
    """,
    # 2: the agent's turns of each call, with their latency parts (milliseconds).
    """
    CREATE TABLE turns (
        id               INTEGER PRIMARY KEY,
        call_id          INTEGER NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        turn             INTEGER NOT NULL,
        kind             TEXT NOT NULL,
        user_text        TEXT,
        agent_text       TEXT,
        intent           TEXT,
        actions          TEXT,
        interrupted      INTEGER NOT NULL DEFAULT 0,
        barge_in         INTEGER NOT NULL DEFAULT 0,
        speech_ms        REAL,
        eot_wait_ms      REAL,
        stt_ms           REAL,
        brain_ms         REAL,
        tts_first_ms     REAL,
        playout_ms       REAL,
        total_ms         REAL,
        max_gap_ms       REAL,
        end_of_speech_at REAL,
        first_audio_at   REAL,
        at               REAL NOT NULL,
        UNIQUE (call_id, turn)
    );
    """,
    # 3: outbound calls: how they were placed, how they ended, why one was refused.
    """
    ALTER TABLE calls ADD COLUMN via TEXT;
    ALTER TABLE calls ADD COLUMN outcome TEXT;
    ALTER TABLE calls ADD COLUMN refusal TEXT;
    ALTER TABLE calls ADD COLUMN plivo_call_uuid TEXT;
    """,
)

_TURN_FIELDS: Final = (
    "kind",
    "user_text",
    "agent_text",
    "intent",
    "interrupted",
    "barge_in",
    "speech_ms",
    "eot_wait_ms",
    "stt_ms",
    "brain_ms",
    "tts_first_ms",
    "playout_ms",
    "total_ms",
    "max_gap_ms",
    "end_of_speech_at",
    "first_audio_at",
)

# Plivo's CallStatus of an outbound call that was not answered -> outcome ("completed"
# leaves the outcome "answered" that /answer recorded).
_PLIVO_OUTCOMES: Final = {
    "busy": "busy",
    "no-answer": "no-answer",
    "timeout": "no-answer",
    "failed": "failed",
    "cancel": "failed",
    "canceled": "failed",
}

SCHEMA_VERSION: Final = len(_MIGRATIONS)
"""Schema version this code writes (``PRAGMA user_version``)."""

_SIP_PREFIX: Final = "sip:"


class RecordsError(Exception):
    """The record store cannot be opened or is from a newer version of the gateway."""


def sip_key(sip_call_id: str) -> str:
    """Row key of a call known only by its SIP Call-ID."""
    return _SIP_PREFIX + sip_call_id


def _float_or_none(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _text_or_none(value: str | None) -> str | None:
    return value if value else None


class CallRecords:
    """Thread-safe call-record store over one SQLite connection.

    Create it with :meth:`open`.  Every method may be called from any thread; writes are
    serialised by a lock and each is committed before the method returns.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self._conn = conn
        self._lock = threading.Lock()
        self._closed = False
        self.path = path

    # --- lifecycle --------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str) -> CallRecords:
        """Open (creating the file and its parent directories if needed) and migrate.

        Raises:
            RecordsError: the file cannot be opened or has a newer schema than this code.
        """
        target = Path(path).expanduser()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per event.
            conn = sqlite3.connect(
                str(target), check_same_thread=False, isolation_level=None, timeout=5.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise RecordsError(f"records: cannot open {target}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            cls._migrate(conn, target)
        except sqlite3.Error as exc:
            conn.close()
            raise RecordsError(f"records: cannot use {target}: {exc}") from exc
        except RecordsError:
            conn.close()
            raise
        return cls(conn, target)

    @staticmethod
    def _migrate(conn: sqlite3.Connection, path: Path) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RecordsError(
                    f"records: {path} has schema version {version}; this gateway knows up to"
                    f" {SCHEMA_VERSION} (written by a newer version?)"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection (idempotent).  Later calls raise ``sqlite3.Error``."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> CallRecords:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes -----------------------------------------------------------------------
    def _upsert(self, key: str, fields: Mapping[str, object], at: float) -> None:
        """Insert or merge ``fields`` into the row ``key``; callers hold the lock."""
        names = list(fields)
        columns = ", ".join(["call_uuid", *names, "created_at", "updated_at"])
        marks = ", ".join("?" for _ in range(len(names) + 3))
        # A NULL in the new event keeps what the row already has.
        merges = ", ".join(f"{n} = COALESCE(excluded.{n}, calls.{n})" for n in names)
        sql = (
            f"INSERT INTO calls ({columns}) VALUES ({marks}) ON CONFLICT(call_uuid) DO UPDATE"
            f" SET {merges}{', ' if merges else ''}updated_at = excluded.updated_at"
        )
        self._conn.execute(sql, [key, *fields.values(), at, at])

    def _write(self, key: str, fields: Mapping[str, object], at: float) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._upsert(key, fields, at)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def answered(
        self,
        call_uuid: str,
        from_number: str | None,
        to_number: str | None,
        direction: str | None,
        route: str,
        worker: int | None,
        at: float,
    ) -> None:
        """Record what ``/answer`` decided (``route``: one of :data:`ROUTES`; ``at``: unix time)."""
        self._write(
            call_uuid,
            {
                "from_number": _text_or_none(from_number),
                "to_number": _text_or_none(to_number),
                "direction": _text_or_none(direction),
                "route": route,
                "worker": worker,
                "answer_at": at,
            },
            at,
        )

    def dial_status(self, call_uuid: str, params: Mapping[str, str], at: float) -> None:
        """Record a Dial action callback (``DialStatus``, ``DialHangupCause``, ...)."""
        self._write(
            call_uuid,
            {
                "dial_status": _text_or_none(params.get("DialStatus")),
                "dial_hangup_cause": _text_or_none(params.get("DialHangupCause")),
                "dial_b_leg_uuid": _text_or_none(params.get("DialBLegUUID")),
            },
            at,
        )

    def hung_up(self, call_uuid: str, params: Mapping[str, str], at: float) -> None:
        """Record Plivo's hangup callback; all its parameters are kept as JSON too."""
        duration = _float_or_none(params.get("Duration"))
        if duration is None:
            duration = _float_or_none(params.get("BillDuration"))
        self._write(
            call_uuid,
            {
                "from_number": _text_or_none(params.get("From")),
                "to_number": _text_or_none(params.get("To")),
                "direction": _text_or_none(params.get("Direction")),
                "hangup_cause": _text_or_none(params.get("HangupCause")),
                "duration_s": duration,
                "end_at": at,
                "raw_hangup": json.dumps(dict(params), sort_keys=True),
            },
            at,
        )

    def _sip_row_key(self, call_uuid: str | None, sip_call_id: str) -> str:
        """Key for a SIP-side event; merges a ``sip:`` row into the CallUUID's row.

        Callers hold the lock and are inside a transaction.
        """
        if call_uuid:
            has_uuid_row = self._conn.execute(
                "SELECT 1 FROM calls WHERE call_uuid = ?", (call_uuid,)
            ).fetchone()
            if has_uuid_row is None:
                # The SIP side was first seen without its CallUUID: adopt that row.
                self._conn.execute(
                    "UPDATE calls SET call_uuid = ? WHERE call_uuid = ?",
                    (call_uuid, sip_key(sip_call_id)),
                )
            return call_uuid
        row = self._conn.execute(
            "SELECT call_uuid FROM calls WHERE sip_call_id = ? ORDER BY id DESC LIMIT 1",
            (sip_call_id,),
        ).fetchone()
        return str(row["call_uuid"]) if row is not None else sip_key(sip_call_id)

    def _write_sip(
        self,
        call_uuid: str | None,
        sip_call_id: str,
        fields: Mapping[str, object],
        at: float,
        *,
        ended: bool,
    ) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                key = self._sip_row_key(call_uuid, sip_call_id)
                self._upsert(key, {"sip_call_id": sip_call_id, **fields}, at)
                if ended:
                    # Plivo's hangup time wins; a SIP-only call ends when its SIP side does.
                    self._conn.execute(
                        "UPDATE calls SET end_at = COALESCE(end_at, sip_end_at),"
                        " duration_s = COALESCE(duration_s, sip_end_at - start_at)"
                        " WHERE call_uuid = ?",
                        (key,),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def sip_started(
        self,
        call_uuid: str | None,
        sip_call_id: str,
        worker: int | None,
        from_uri: str | None,
        to_uri: str | None,
        at: float,
    ) -> None:
        """A worker answered the SIP call ``sip_call_id`` (``call_uuid`` from X-PH-Calluuid)."""
        self._write_sip(
            call_uuid,
            sip_call_id,
            {
                "worker": worker,
                "sip_from": _text_or_none(from_uri),
                "sip_to": _text_or_none(to_uri),
                "start_at": at,
            },
            at,
            ended=False,
        )

    def sip_ended(
        self,
        call_uuid: str | None,
        sip_call_id: str,
        worker: int | None,
        reason: str | None,
        at: float,
        outcome: str | None = None,
    ) -> None:
        """A worker's SIP call ended (``reason``: the SIP side's end reason; ``outcome``:
        an outbound call's answered | busy | no-answer | failed)."""
        self._write_sip(
            call_uuid,
            sip_call_id,
            {
                "worker": worker,
                "end_reason": _text_or_none(reason),
                "sip_end_at": at,
                "outcome": outcome,
            },
            at,
            ended=True,
        )

    def outbound_requested(
        self,
        call_id: str,
        from_number: str | None,
        to_number: str,
        via: str,
        at: float,
        *,
        refusal: str | None = None,
    ) -> None:
        """An outbound call was asked for (``via``: sip | plivo).  With ``refusal`` it was
        not placed: its outcome is ``refused`` and the reason is kept."""
        fields: dict[str, object] = {
            "from_number": _text_or_none(from_number),
            "to_number": to_number,
            "direction": "outbound",
            "via": via,
        }
        if refusal is not None:
            fields.update(outcome="refused", refusal=refusal, end_at=at)
        self._write(call_id, fields, at)

    def outbound_failed(self, call_id: str, reason: str, at: float) -> None:
        """An outbound call could not be placed (no worker, the SIP stack or Plivo's API
        refused it)."""
        self._write(call_id, {"outcome": "failed", "end_reason": reason, "end_at": at}, at)

    def outbound_answered(
        self, call_id: str | None, at: float, plivo_call_uuid: str | None = None
    ) -> None:
        """The callee answered an outbound call (the outcome until it ends); a call placed
        through Plivo's Call API keeps Plivo's CallUUID too."""
        if call_id:
            self._write(
                call_id,
                {"outcome": "answered", "answer_at": at, "plivo_call_uuid": plivo_call_uuid},
                at,
            )

    def outbound_hung_up(self, call_id: str, params: Mapping[str, str], at: float) -> None:
        """Plivo's hangup callback of an outbound call placed through its Call API: an
        unanswered call's ``CallStatus`` becomes the outcome (busy, no-answer, failed)."""
        status = params.get("CallStatus", "").strip().lower()
        outcome = _PLIVO_OUTCOMES.get(status)
        self._write(
            call_id,
            {"outcome": outcome, "plivo_call_uuid": _text_or_none(params.get("CallUUID"))},
            at,
        )

    def add_turn(
        self,
        call_uuid: str | None,
        sip_call_id: str,
        turn: Mapping[str, Any],
        at: float,
    ) -> None:
        """Store one agent turn of a call (a `TurnRecord.as_dict()`); the same turn number
        stored again replaces the earlier version."""
        values = [turn.get(name) for name in _TURN_FIELDS]
        actions = json.dumps(list(turn.get("actions") or []))
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                key = self._sip_row_key(call_uuid, sip_call_id)
                self._upsert(key, {"sip_call_id": sip_call_id}, at)
                row = self._conn.execute(
                    "SELECT id FROM calls WHERE call_uuid = ?", (key,)
                ).fetchone()
                columns = ", ".join(["call_id", "turn", *_TURN_FIELDS, "actions", "at"])
                marks = ", ".join("?" for _ in range(len(_TURN_FIELDS) + 4))
                self._conn.execute(
                    f"INSERT OR REPLACE INTO turns ({columns}) VALUES ({marks})",
                    [row["id"], int(turn.get("turn") or 0), *values, actions, at],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def turns(self, call_id: str) -> list[dict[str, Any]]:
        """The stored turns of a call (looked up like `get`), in order."""
        record = self.get(call_id)
        if record is None:
            return []
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM turns WHERE call_id = ? ORDER BY turn", (record["id"],)
            ).fetchall()
        out = []
        for row in rows:
            item: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
            item["actions"] = json.loads(item["actions"] or "[]")
            item["interrupted"] = bool(item["interrupted"])
            item["barge_in"] = bool(item["barge_in"])
            out.append(item)
        return out

    # --- reads ------------------------------------------------------------------------
    @staticmethod
    def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
        record: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
        raw = record.get("raw_hangup")
        if isinstance(raw, str):
            # Undecodable text (not written by this class) is returned as it is.
            with contextlib.suppress(json.JSONDecodeError):
                record["raw_hangup"] = json.loads(raw)
        return record

    def get(self, call_id: str) -> dict[str, Any] | None:
        """The record of a call by CallUUID, by ``sip:<Call-ID>`` key, or by SIP Call-ID.

        ``raw_hangup`` is returned decoded (a dict) when present.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM calls WHERE call_uuid IN (?, ?) ORDER BY id LIMIT 1",
                (call_id, sip_key(call_id)),
            ).fetchone()
            if row is None:
                row = self._conn.execute(
                    "SELECT * FROM calls WHERE sip_call_id = ? ORDER BY id DESC LIMIT 1",
                    (call_id,),
                ).fetchone()
        return None if row is None else self._as_dict(row)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The ``limit`` most recently created records, newest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM calls ORDER BY created_at DESC, id DESC LIMIT ?",
                (max(0, int(limit)),),
            ).fetchall()
        return [self._as_dict(row) for row in rows]
