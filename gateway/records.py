"""Call records: one row per call, with its turns, in SQLite (the default) or PostgreSQL.

Events about a call come from two places in any order: the answer_url app (``/answer``,
``/dial-status``, ``/hangup``, keyed by Plivo's CallUUID) and the supervisor (a worker's
SIP call started/ended and its turns, keyed by the CallUUID from ``X-PH-Calluuid`` when the
call came through Plivo, else by ``sip:<Call-ID>``).  Every write is an upsert that keeps
earlier values a later event does not know (a NULL never overwrites a value).

The store is chosen by URL (``records.url``): ``sqlite:///PATH`` (stdlib ``sqlite3``) or
``postgresql://user:password@host:port/dbname`` (psycopg 3).  :class:`CallRecords` holds the
semantics once, as SQL both databases run; a small backend class per database supplies the
connection, placeholders, transaction start, schema types and version bookkeeping.

Durability: each event is one transaction committed before the method returns.  SQLite uses
a WAL journal with ``synchronous=FULL``, so a row whose write returned survives the process
being killed (and the machine losing power); PostgreSQL commits are durable on the server.

Writers are serialised, within the process by a lock and across processes by the database:
SQLite's ``BEGIN IMMEDIATE``, a transaction-scoped advisory lock on PostgreSQL (several
gateways may share one PostgreSQL database).  A PostgreSQL connection that breaks (server
restart, network) is re-opened once and the event retried; every write is idempotent.

Schema changes are numbered migrations, applied on open: SQLite tracks the version with
``PRAGMA user_version``, PostgreSQL in the table ``sipagent_schema``.  ``calls.id`` is a
stable integer key for the turns: ``call_uuid`` may change once, from ``sip:<Call-ID>`` to
the CallUUID, when the two are first seen together.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ROUTES",
    "SCHEMA_VERSION",
    "AmbiguousCallId",
    "CallRecords",
    "RecordsError",
    "redact_url",
    "sip_key",
]

ROUTES: Final = ("agent", "sip", "number", "fallback", "after-hours", "hangup")
"""Values of ``calls.route``: what ``/answer`` decided for the call."""

# Schema templates: {pk} is the integer primary key, {ref} the type that references it,
# {real} a float type (unix times must keep sub-millisecond precision: float8).
_MIGRATIONS: Final[Sequence[str]] = (
    # 1: the calls table.
    """
    CREATE TABLE calls (
        id           {pk},
        call_uuid    TEXT NOT NULL UNIQUE,
        sip_call_id  TEXT,
        from_number  TEXT,
        to_number    TEXT,
        direction    TEXT,
        route        TEXT,
        worker       INTEGER,
        sip_from     TEXT,
        sip_to       TEXT,
        answer_at    {real},
        start_at     {real},
        sip_end_at   {real},
        end_at       {real},
        duration_s   {real},
        hangup_cause TEXT,
        dial_status  TEXT,
        dial_hangup_cause TEXT,
        dial_b_leg_uuid   TEXT,
        end_reason   TEXT,
        raw_hangup   TEXT,
        created_at   {real} NOT NULL,
        updated_at   {real} NOT NULL
    );
    CREATE INDEX calls_sip_call_id ON calls (sip_call_id);
    CREATE INDEX calls_created_at ON calls (created_at);
    """,
    # 2: the agent's turns of each call, with their latency parts (milliseconds).
    """
    CREATE TABLE turns (
        id               {pk},
        call_id          {ref} NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        turn             INTEGER NOT NULL,
        kind             TEXT NOT NULL,
        user_text        TEXT,
        agent_text       TEXT,
        intent           TEXT,
        actions          TEXT,
        interrupted      INTEGER NOT NULL DEFAULT 0,
        barge_in         INTEGER NOT NULL DEFAULT 0,
        speech_ms        {real},
        eot_wait_ms      {real},
        stt_ms           {real},
        brain_ms         {real},
        tts_first_ms     {real},
        playout_ms       {real},
        total_ms         {real},
        max_gap_ms       {real},
        end_of_speech_at {real},
        first_audio_at   {real},
        at               {real} NOT NULL,
        UNIQUE (call_id, turn)
    );
    """,
    # 3: the path of the call's stereo recording (records.recording_dir), and the X- headers
    # of its INVITE (Plivo's X-PH-* among them) as a JSON object.
    """
    ALTER TABLE calls ADD COLUMN recording TEXT;
    ALTER TABLE calls ADD COLUMN sip_headers TEXT;
    """,
    # 4: outbound calls: how they were placed, how they ended, why one was refused.
    """
    ALTER TABLE calls ADD COLUMN via TEXT;
    ALTER TABLE calls ADD COLUMN outcome TEXT;
    ALTER TABLE calls ADD COLUMN refusal TEXT;
    ALTER TABLE calls ADD COLUMN plivo_call_uuid TEXT;
    """,
)

_SQLITE_TYPES: Final = {"pk": "INTEGER PRIMARY KEY", "ref": "INTEGER", "real": "REAL"}
_POSTGRES_TYPES: Final = {
    "pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    "ref": "BIGINT",
    "real": "DOUBLE PRECISION",
}

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
_TURN_FLAGS: Final = frozenset({"interrupted", "barge_in"})

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
"""Schema version this code writes."""

_SIP_PREFIX: Final = "sip:"
_CALL_COLUMNS: Final = (
    "calls.*, (SELECT COUNT(*) FROM turns WHERE turns.call_id = calls.id) AS turn_count"
)

_T = TypeVar("_T")


class RecordsError(Exception):
    """The record store cannot be opened or used, or is from a newer version of the gateway."""


class AmbiguousCallId(RecordsError):
    """A call-ID prefix matches more than one call (``matches``: their keys)."""

    def __init__(self, prefix: str, matches: Sequence[str]) -> None:
        super().__init__(f"{prefix!r} matches {len(matches)} calls: {', '.join(matches)}")
        self.matches = list(matches)


def sip_key(sip_call_id: str) -> str:
    """Row key of a call known only by its SIP Call-ID."""
    return _SIP_PREFIX + sip_call_id


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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


# --- backends --------------------------------------------------------------------------------
class _Backend:
    """One connection to one database: what differs between SQLite and PostgreSQL.

    SQL given to :meth:`execute` / :meth:`query` uses ``?`` placeholders.  Callers hold the
    store's lock.
    """

    name: str
    label: str  # the store, for messages (no password)

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def begin(self) -> None:
        """Start a write transaction holding the database's writer lock."""
        raise NotImplementedError

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def close(self) -> None:
        raise NotImplementedError

    def recover(self, exc: Exception) -> bool:
        """After ``exc``: re-open a broken connection and return True if it is worth
        retrying the operation once."""
        return False

    def migration(self, number: int) -> list[str]:
        """The statements of migration ``number`` (0-based) in this database's types."""
        raise NotImplementedError

    def schema_version(self) -> int:
        """The schema version of the store; callers are inside a transaction."""
        raise NotImplementedError

    def set_schema_version(self, version: int) -> None:
        raise NotImplementedError

    def migrate(self) -> None:
        """Apply the migrations this store lacks, in one transaction."""
        self.begin()
        try:
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise RecordsError(
                    f"records: {self.label} has schema version {version}; this gateway knows"
                    f" up to {SCHEMA_VERSION} (written by a newer version?)"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in self.migration(number):
                    self.execute(statement)
                self.set_schema_version(number + 1)
            self.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                self.rollback()
            raise


def _statements(template: str, **types: str) -> list[str]:
    text = template.format(**types)
    return [s.strip() for s in text.split(";") if s.strip()]


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


class _Sqlite(_Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per event.
            self.conn = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=5.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise RecordsError(f"records: cannot open {path}: {exc}") from exc
        try:
            self.conn.row_factory = _dict_row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            self.conn.close()
            raise RecordsError(f"records: cannot use {path}: {exc}") from exc

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self.conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.conn.execute(sql, params).fetchall()
        return rows

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        self.conn.close()

    def migration(self, number: int) -> list[str]:
        return _statements(_MIGRATIONS[number], **_SQLITE_TYPES)

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()["user_version"])

    def set_schema_version(self, version: int) -> None:
        self.execute(f"PRAGMA user_version = {int(version)}")


# Key of the advisory lock that serialises writers of one PostgreSQL database ("sipa").
_PG_LOCK: Final = 0x73697061


class _Postgres(_Backend):
    name = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from psycopg import conninfo
        except ImportError as exc:  # pragma: no cover - psycopg is a dependency
            raise RecordsError(f"records: PostgreSQL needs psycopg: {exc}") from exc
        self._psycopg = psycopg
        self.url = url
        self.label = redact_url(url)
        try:
            conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise RecordsError(f"records: invalid URL {self.label}: {_one_line(exc)}") from None
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        from psycopg.rows import dict_row

        try:
            # autocommit: BEGIN/COMMIT are ours, as with SQLite; a read is never left
            # "idle in transaction".
            return self._psycopg.connect(
                self.url, autocommit=True, row_factory=dict_row, connect_timeout=10
            )
        except self._psycopg.Error as exc:
            raise RecordsError(
                f"records: cannot connect to {self.label}: {_one_line(exc)}"
            ) from None

    @staticmethod
    def _sql(sql: str) -> str:
        # None of our statements holds a literal '?' or '%'.
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self.conn.execute(self._sql(sql), params)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        return self.conn.execute(self._sql(sql), params).fetchall()

    def begin(self) -> None:
        self.execute("BEGIN")
        self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK,))

    def rollback(self) -> None:
        if not self.conn.closed:
            self.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()

    def recover(self, exc: Exception) -> bool:
        if not isinstance(exc, self._psycopg.OperationalError) or not self.conn.closed:
            return False
        self.conn = self._connect()
        return True

    def migration(self, number: int) -> list[str]:
        return _statements(_MIGRATIONS[number], **_POSTGRES_TYPES)

    def schema_version(self) -> int:
        self.execute("CREATE TABLE IF NOT EXISTS sipagent_schema (version INTEGER NOT NULL)")
        rows = self.query("SELECT version FROM sipagent_schema")
        if not rows:
            self.execute("INSERT INTO sipagent_schema (version) VALUES (0)")
            return 0
        return max(int(r["version"]) for r in rows)

    def set_schema_version(self, version: int) -> None:
        self.execute("UPDATE sipagent_schema SET version = ?", (version,))


def _backend_for(target: Path | str, create: bool) -> _Backend:
    if isinstance(target, str):
        scheme = target.partition("://")[0].lower()
        if scheme in ("postgresql", "postgres"):
            return _Postgres(target)
        if target.startswith("sqlite:///"):
            target = target.removeprefix("sqlite:///")
            if not target:
                raise RecordsError("records: sqlite:/// URL without a path")
        elif "://" in target:
            raise RecordsError(
                f"records: unsupported URL {redact_url(target)}"
                " (use sqlite:///PATH or postgresql://user:password@host:port/dbname)"
            )
    path = Path(target).expanduser()
    if not create and not path.exists():
        raise RecordsError(f"records: no call records at {path}")
    return _Sqlite(path)


# --- the store -------------------------------------------------------------------------------
class CallRecords:
    """Thread-safe call-record store over one database connection.

    Create it with :meth:`open`.  Every method may be called from any thread (the answer_url
    app's waitress threads, the supervisor's event loop); calls are serialised by a lock and
    each write is committed before the method returns.
    """

    def __init__(self, backend: _Backend) -> None:
        """Wrap an open, migrated backend; use :meth:`open` instead."""
        self._db = backend
        self._lock = threading.Lock()
        self._closed = False
        self.backend: str = backend.name
        self.label: str = backend.label
        """The store for messages: the SQLite path or the URL without its password."""

    # --- lifecycle --------------------------------------------------------------------
    @classmethod
    def open(cls, target: Path | str, *, create: bool = True) -> CallRecords:
        """Open and migrate the store ``target``: a path or ``sqlite:///PATH`` (SQLite, the
        file and its parent directories are created when ``create``) or a
        ``postgresql://`` URL.

        Raises:
            RecordsError: the store cannot be opened, is missing (``create=False``) or has a
                newer schema than this code.  The message never holds a password.
        """
        backend = _backend_for(target, create)
        try:
            backend.migrate()
        except RecordsError:
            backend.close()
            raise
        except Exception as exc:
            backend.close()
            raise RecordsError(f"records: cannot use {backend.label}: {_one_line(exc)}") from exc
        return cls(backend)

    def close(self) -> None:
        """Close the connection (idempotent).  Later calls raise :class:`RecordsError`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> CallRecords:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, body: Callable[[], _T], *, write: bool) -> _T:
        """Run ``body`` under the lock (in a write transaction when ``write``); a broken
        PostgreSQL connection is re-opened and ``body`` run once more."""
        with self._lock:
            if self._closed:
                raise RecordsError(f"records: {self.label} is closed")
            for attempt in (1, 2):
                try:
                    if not write:
                        return body()
                    self._db.begin()
                    try:
                        result = body()
                        self._db.commit()
                    except BaseException:
                        with contextlib.suppress(Exception):
                            self._db.rollback()
                        raise
                    return result
                except Exception as exc:
                    if attempt == 2 or not self._db.recover(exc):
                        raise
            raise AssertionError("unreachable")

    # --- writes -----------------------------------------------------------------------
    def _upsert(self, key: str, fields: Mapping[str, object], at: float) -> None:
        """Insert or merge ``fields`` into the row ``key``; inside a transaction."""
        names = list(fields)
        columns = ", ".join(["call_uuid", *names, "created_at", "updated_at"])
        marks = ", ".join("?" for _ in range(len(names) + 3))
        # A NULL in the new event keeps what the row already has.
        merges = ", ".join(f"{n} = COALESCE(excluded.{n}, calls.{n})" for n in names)
        sql = (
            f"INSERT INTO calls ({columns}) VALUES ({marks}) ON CONFLICT (call_uuid) DO UPDATE"
            f" SET {merges}{', ' if merges else ''}updated_at = excluded.updated_at"
        )
        self._db.execute(sql, [key, *fields.values(), at, at])

    def _write(self, key: str, fields: Mapping[str, object], at: float) -> None:
        self._run(lambda: self._upsert(key, fields, at), write=True)

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

        Inside a write transaction (which holds the database's writer lock).
        """
        if call_uuid:
            if not self._db.query("SELECT 1 FROM calls WHERE call_uuid = ?", (call_uuid,)):
                # The SIP side was first seen without its CallUUID: adopt that row.
                self._db.execute(
                    "UPDATE calls SET call_uuid = ? WHERE call_uuid = ?",
                    (call_uuid, sip_key(sip_call_id)),
                )
            return call_uuid
        rows = self._db.query(
            "SELECT call_uuid FROM calls WHERE sip_call_id = ? ORDER BY id DESC LIMIT 1",
            (sip_call_id,),
        )
        return str(rows[0]["call_uuid"]) if rows else sip_key(sip_call_id)

    def _write_sip(
        self,
        call_uuid: str | None,
        sip_call_id: str,
        fields: Mapping[str, object],
        at: float,
        *,
        ended: bool,
    ) -> None:
        def body() -> None:
            key = self._sip_row_key(call_uuid, sip_call_id)
            self._upsert(key, {"sip_call_id": sip_call_id, **fields}, at)
            if ended:
                # Plivo's hangup time wins; a SIP-only call ends when its SIP side does.
                self._db.execute(
                    "UPDATE calls SET end_at = COALESCE(end_at, sip_end_at),"
                    " duration_s = COALESCE(duration_s, sip_end_at - start_at)"
                    " WHERE call_uuid = ?",
                    (key,),
                )

        self._run(body, write=True)

    def sip_started(
        self,
        call_uuid: str | None,
        sip_call_id: str,
        worker: int | None,
        from_uri: str | None,
        to_uri: str | None,
        at: float,
        recording: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """A worker answered the SIP call ``sip_call_id`` (``call_uuid`` from X-PH-Calluuid);
        ``recording`` is the path its recording is being written to, ``headers`` the X-
        headers of its INVITE."""
        self._write_sip(
            call_uuid,
            sip_call_id,
            {
                "worker": worker,
                "sip_from": _text_or_none(from_uri),
                "sip_to": _text_or_none(to_uri),
                "start_at": at,
                "recording": _text_or_none(recording),
                "sip_headers": json.dumps(dict(headers), sort_keys=True) if headers else None,
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
        values = [
            int(bool(turn.get(name))) if name in _TURN_FLAGS else turn.get(name)
            for name in _TURN_FIELDS
        ]
        if values[0] is None:
            values[0] = "reply"
        actions = json.dumps(list(turn.get("actions") or []))
        number = int(turn.get("turn") or 0)
        columns = ", ".join(["call_id", "turn", *_TURN_FIELDS, "actions", "at"])
        marks = ", ".join("?" for _ in range(len(_TURN_FIELDS) + 4))
        updates = ", ".join(f"{n} = excluded.{n}" for n in (*_TURN_FIELDS, "actions", "at"))
        sql = (
            f"INSERT INTO turns ({columns}) VALUES ({marks})"
            f" ON CONFLICT (call_id, turn) DO UPDATE SET {updates}"
        )

        def body() -> None:
            key = self._sip_row_key(call_uuid, sip_call_id)
            self._upsert(key, {"sip_call_id": sip_call_id}, at)
            row = self._db.query("SELECT id FROM calls WHERE call_uuid = ?", (key,))[0]
            self._db.execute(sql, [row["id"], number, *values, actions, at])

        self._run(body, write=True)

    # --- reads ------------------------------------------------------------------------
    @staticmethod
    def _as_dict(row: dict[str, Any]) -> dict[str, Any]:
        record = dict(row)
        raw = record.get("raw_hangup")
        if isinstance(raw, str):
            # Undecodable text (not written by this class) is returned as it is.
            with contextlib.suppress(json.JSONDecodeError):
                record["raw_hangup"] = json.loads(raw)
        record["turn_count"] = int(record.get("turn_count") or 0)
        return record

    def _get(self, call_id: str) -> dict[str, Any] | None:
        rows = self._db.query(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_uuid IN (?, ?) ORDER BY id LIMIT 1",
            (call_id, sip_key(call_id)),
        )
        if not rows:
            rows = self._db.query(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE sip_call_id = ? ORDER BY id DESC LIMIT 1",
                (call_id,),
            )
        return self._as_dict(rows[0]) if rows else None

    def get(self, call_id: str) -> dict[str, Any] | None:
        """The record of a call by CallUUID, by ``sip:<Call-ID>`` key, or by SIP Call-ID.

        ``raw_hangup`` is returned decoded (a dict) when present; ``turn_count`` is the
        number of stored turns.
        """
        return self._run(lambda: self._get(call_id), write=False)

    def find(self, call_id: str) -> dict[str, Any] | None:
        """Like :meth:`get`, and failing an exact match, the one call whose CallUUID or SIP
        Call-ID starts with ``call_id``.

        Raises:
            AmbiguousCallId: several calls start with ``call_id``.
        """

        def body() -> dict[str, Any] | None:
            exact = self._get(call_id)
            if exact is not None or not call_id:
                return exact
            n = len(call_id)
            rows = self._db.query(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE substr(call_uuid, 1, ?) = ?"
                " OR substr(call_uuid, 1, ?) = ? OR substr(sip_call_id, 1, ?) = ?"
                " ORDER BY id LIMIT 11",
                (n, call_id, n + len(_SIP_PREFIX), sip_key(call_id), n, call_id),
            )
            if len(rows) > 1:
                raise AmbiguousCallId(call_id, [str(r["call_uuid"]) for r in rows[:10]])
            return self._as_dict(rows[0]) if rows else None

        return self._run(body, write=False)

    def turns(self, call_id: str) -> list[dict[str, Any]]:
        """The stored turns of a call (looked up like `get`), in order."""

        def body() -> list[dict[str, Any]]:
            record = self._get(call_id)
            if record is None:
                return []
            return self._db.query(
                "SELECT * FROM turns WHERE call_id = ? ORDER BY turn", (record["id"],)
            )

        out = []
        for item in self._run(body, write=False):
            item["actions"] = json.loads(item["actions"] or "[]")
            item["interrupted"] = bool(item["interrupted"])
            item["barge_in"] = bool(item["barge_in"])
            out.append(item)
        return out

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The ``limit`` most recently created records, newest first."""
        rows = self._run(
            lambda: self._db.query(
                f"SELECT {_CALL_COLUMNS} FROM calls ORDER BY created_at DESC, id DESC LIMIT ?",
                (max(0, int(limit)),),
            ),
            write=False,
        )
        return [self._as_dict(row) for row in rows]
