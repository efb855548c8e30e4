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

Gateways and their leases: a gateway killed with ``kill -9`` (or by the OOM killer) cannot
end its calls, so each serve process has a row in ``gateways`` and renews its ``seen_at``
(:meth:`CallRecords.heartbeat`, every ``lease_s / 3``); ``calls.gateway`` names the gateway
whose worker answered the SIP call.  A gateway is *live* while it is not stopped and its
``seen_at`` is within the larger of its own lease and the reader's, by the database's clock
(never a machine's: clocks of gateways sharing PostgreSQL may be skewed).  Open calls
(``start_at`` set, ``sip_end_at`` NULL) of gateways that are not live are closed with the end
reason :data:`GATEWAY_RESTARTED`: by :meth:`CallRecords.claim_gateway` when serve starts
(calls of its own id included: it holds that gateway's SIP port now, so the old process is
dead) and by :meth:`CallRecords.heartbeat` while it runs.  The row times the closing writes
(``sip_end_at``, ``end_at``) are the closer's ``time.time()``, like every other row time.
Gateway ids must be unique among the gateways sharing a store (serve uses
``<hostname>:<sip listen port>``): a second gateway with the same id closes the first's calls.

Open calls with no gateway were written before migration 5, by a version without leases.
:meth:`CallRecords.claim_gateway` closes them only when no other gateway is live: on a store
that was not shared, or whose gateways were all stopped, they are dead.  A gateway of an
older version that still runs on a shared PostgreSQL has no lease to see, so upgrade the
gateways sharing a database together; a call closed by mistake gets its real
``sip_end_at`` and end reason when the gateway that runs it records its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "GATEWAY_RESTARTED",
    "ROUTES",
    "SCHEMA_VERSION",
    "AmbiguousCallId",
    "CallRecords",
    "CallTurn",
    "RecordsError",
    "SipCallEnd",
    "SipCallStart",
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
    # 5: gateways and their liveness leases (times by the database's clock), and the
    # gateway whose worker answered each SIP call; the partial index finds open calls.
    """
    CREATE TABLE gateways (
        id          TEXT PRIMARY KEY,
        host        TEXT,
        pid         INTEGER,
        lease_s     {real} NOT NULL,
        started_at  {real} NOT NULL,
        seen_at     {real} NOT NULL,
        stopped_at  {real}
    );
    ALTER TABLE calls ADD COLUMN gateway TEXT;
    CREATE INDEX calls_open_by_gateway ON calls (gateway)
        WHERE start_at IS NOT NULL AND sip_end_at IS NULL;
    """,
    # 6: nonces of verified Plivo webhooks until they expire (the database's clock), so a
    # replay is refused after a restart and by every gateway sharing the store.
    """
    CREATE TABLE webhook_nonces (
        nonce       TEXT PRIMARY KEY,
        expires_at  {real} NOT NULL
    );
    CREATE INDEX webhook_nonces_by_expiry ON webhook_nonces (expires_at);
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

_NONCE_PURGE_S: Final = 60.0  # expired webhook nonces are deleted at most this often

SCHEMA_VERSION: Final = len(_MIGRATIONS)
"""Schema version this code writes."""

GATEWAY_RESTARTED: Final = "gateway restarted"
"""End reason of a call closed because the gateway that answered it died."""

# A gateway is live while it is not stopped and was seen within the larger of its own lease
# and the reader's (parameters: the reader's lease twice, the database's time now).
_LIVE: Final = "stopped_at IS NULL AND seen_at + CASE WHEN lease_s > ? THEN lease_s ELSE ? END >= ?"
# An open call: the SIP side started and has not ended.
_OPEN: Final = "start_at IS NOT NULL AND sip_end_at IS NULL"

_SIP_PREFIX: Final = "sip:"
_CALL_COLUMNS: Final = (
    "calls.*, (SELECT COUNT(*) FROM turns WHERE turns.call_id = calls.id) AS turn_count"
)

_T = TypeVar("_T")


# -- what a worker reports about its calls ------------------------------------------------
# Each event travels from the worker to the supervisor as one of these (the pool's control
# protocol encodes any field of them), and the supervisor stores it as it is: a new field is
# added here, where `CallRecords` stores it, and where the worker produces its value.


@dataclass(frozen=True)
class SipCallStart:
    """A worker's SIP call started (media is up).  ``call_uuid``: our id of the call (the
    CallUUID of a call routed by the app, or the app's id of a call it placed), None for a
    SIP-only call; ``recording``: where its recording is written; ``headers``: the X-
    headers of its INVITE."""

    sip_call_id: str
    call_uuid: str | None
    from_uri: str | None
    to_uri: str | None
    at: float
    direction: Literal["inbound", "outbound"] = "inbound"
    recording: str | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class SipCallEnd:
    """A worker's SIP call ended: the SIP side's end ``reason``, and an outbound call's
    ``outcome`` (answered | busy | no-answer | failed)."""

    sip_call_id: str
    call_uuid: str | None
    reason: str | None
    at: float
    outcome: str | None = None


@dataclass(frozen=True)
class CallTurn:
    """One agent turn of a call: a `TurnRecord.as_dict()` (the same turn number stored
    again replaces the earlier version)."""

    sip_call_id: str
    call_uuid: str | None
    turn: Mapping[str, Any]  # JSON, as `TurnRecord.as_dict()` makes it
    at: float


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

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run ``sql``; return the number of rows it changed (-1 when not a change)."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def begin(self) -> None:
        """Start a write transaction holding the database's writer lock."""
        raise NotImplementedError

    def now(self) -> float:
        """The database's clock, as unix seconds (the one clock all gateways share)."""
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

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.conn.execute(sql, params).fetchall()
        return rows

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")

    def now(self) -> float:
        # julianday('now') has millisecond resolution; 2440587.5 is the unix epoch.
        row = self.query("SELECT (julianday('now') - 2440587.5) * 86400.0 AS now")[0]
        return float(row["now"])

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

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self.conn.execute(self._sql(sql), params).rowcount

    def query(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        return self.conn.execute(self._sql(sql), params).fetchall()

    def begin(self) -> None:
        self.execute("BEGIN")
        self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK,))

    def now(self) -> float:
        # clock_timestamp(), not now(): the time after the writer lock was taken.
        row = self.query(
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION) AS now"
        )[0]
        return float(row["now"])

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
        self.gateway_id: str | None = None
        """This gateway's id once :meth:`claim_gateway` ran: :meth:`sip_started` stores it."""
        self._lease_s = 0.0
        self._nonces_purged_at = float("-inf")
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

    # --- webhook nonces ---------------------------------------------------------------
    def claim_nonce(self, nonce: str, ttl_s: float) -> bool:
        """Remember the nonce of a verified webhook for ``ttl_s`` seconds; False when it is
        remembered already (a replay, also one sent to another gateway of this store or
        before a restart).  Expired nonces are purged now and then."""
        if not nonce:
            raise ValueError("nonce must not be empty")

        def body() -> bool:
            now = self._db.now()
            if now - self._nonces_purged_at >= _NONCE_PURGE_S:
                self._db.execute("DELETE FROM webhook_nonces WHERE expires_at <= ?", (now,))
                self._nonces_purged_at = now
            else:  # an expired entry of this nonce must not count as seen
                self._db.execute(
                    "DELETE FROM webhook_nonces WHERE nonce = ? AND expires_at <= ?", (nonce, now)
                )
            added = self._db.execute(
                "INSERT INTO webhook_nonces (nonce, expires_at) VALUES (?, ?)"
                " ON CONFLICT (nonce) DO NOTHING",
                (nonce, now + ttl_s),
            )
            return added == 1

        return self._run(body, write=True)

    # --- gateways ---------------------------------------------------------------------
    def _close_dead_calls(self, gateway_id: str, lease_s: float, now: float, *, claim: bool) -> int:
        """Close the open calls of gateways that are not live (``now``: the database's
        clock); return how many.  Inside a write transaction.

        At a claim, ``gateway_id`` (ours) counts as dead, and calls with no gateway are
        closed when no other gateway is live; at a heartbeat our own calls are left alone.
        """
        live = f"SELECT id FROM gateways WHERE id <> ? AND {_LIVE}"
        live_params: list[object] = [gateway_id, lease_s, lease_s, now]
        if claim:
            dead = f"gateway IS NOT NULL AND gateway NOT IN ({live})"
            params = live_params
            if not self._db.query(f"{live} LIMIT 1", live_params):
                dead = f"{dead} OR gateway IS NULL"
        else:
            dead = f"gateway <> ? AND gateway NOT IN ({live})"
            params = [gateway_id, *live_params]
        at = time.time()
        # What sip_ended(..., GATEWAY_RESTARTED) writes, for every such call at once.
        return self._db.execute(
            "UPDATE calls SET end_reason = ?, sip_end_at = ?, end_at = COALESCE(end_at, ?),"
            " duration_s = COALESCE(duration_s, ? - start_at), updated_at = ?"
            f" WHERE {_OPEN} AND ({dead})",
            [GATEWAY_RESTARTED, at, at, at, at, *params],
        )

    def _renew(self, gateway_id: str, lease_s: float, now: float, *, fresh: bool) -> None:
        """Record the gateway ``gateway_id`` as seen ``now`` (``fresh``: started now, by this
        process).  Inside a write transaction."""
        updates = "seen_at = excluded.seen_at, lease_s = excluded.lease_s, stopped_at = NULL"
        if fresh:
            updates += (
                ", host = excluded.host, pid = excluded.pid, started_at = excluded.started_at"
            )
        self._db.execute(
            "INSERT INTO gateways (id, host, pid, lease_s, started_at, seen_at)"
            f" VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET {updates}",
            (gateway_id, socket.gethostname(), os.getpid(), lease_s, now, now),
        )

    def claim_gateway(self, gateway_id: str, lease_s: float) -> int:
        """Start this process's lease as gateway ``gateway_id``: once, at start, before any
        call.  In one transaction, close the open calls of dead gateways (ours from before,
        gateways whose lease expired, and calls without a gateway when no other gateway is
        live) with the end reason :data:`GATEWAY_RESTARTED`, then record our gateway as seen
        now.  From then on :meth:`sip_started` stores ``gateway_id`` with each call, and
        :meth:`heartbeat` must renew the lease well within ``lease_s`` seconds.

        Returns:
            How many calls were closed.
        """
        if not gateway_id or not gateway_id.strip():
            raise ValueError("gateway_id must not be empty")
        if not 0 < lease_s < float("inf"):
            raise ValueError(f"lease_s must be a positive number of seconds (got {lease_s})")

        def body() -> int:
            now = self._db.now()
            closed = self._close_dead_calls(gateway_id, lease_s, now, claim=True)
            self._renew(gateway_id, lease_s, now, fresh=True)
            return closed

        closed = self._run(body, write=True)
        self.gateway_id = gateway_id
        self._lease_s = lease_s
        return closed

    def heartbeat(self) -> int:
        """Renew our gateway's lease and close the open calls of gateways whose lease
        expired (:data:`GATEWAY_RESTARTED`); return how many calls were closed.  Serve calls
        it every ``lease_s / 3`` seconds.

        Raises:
            RecordsError: :meth:`claim_gateway` did not run (or the gateway was released).
        """
        gateway_id, lease_s = self.gateway_id, self._lease_s
        if gateway_id is None:
            raise RecordsError("records: heartbeat before claim_gateway")

        def body() -> int:
            now = self._db.now()
            self._renew(gateway_id, lease_s, now, fresh=False)
            return self._close_dead_calls(gateway_id, lease_s, now, claim=False)

        return self._run(body, write=True)

    def release_gateway(self) -> None:
        """Mark our gateway stopped (clean shutdown, after its calls ended): its lease is
        not needed any more.  Idempotent; a no-op without :meth:`claim_gateway`.  A row
        of our id that another process claimed since is left alone."""
        gateway_id = self.gateway_id
        if gateway_id is None:
            return

        def body() -> None:
            now = self._db.now()
            self._db.execute(
                "UPDATE gateways SET seen_at = ?, stopped_at = ? WHERE id = ? AND pid = ?"
                " AND host = ?",
                (now, now, gateway_id, os.getpid(), socket.gethostname()),
            )

        self._run(body, write=True)
        self.gateway_id = None

    def gateways(self, lease_s: float = 0.0) -> list[dict[str, Any]]:
        """The gateways that used the store, most recently seen first; ``live`` tells
        whether each is running by its lease (or by ``lease_s`` when that is longer)."""

        def body() -> list[dict[str, Any]]:
            now = self._db.now()
            return self._db.query(
                f"SELECT gateways.*, CASE WHEN {_LIVE} THEN 1 ELSE 0 END AS live"
                " FROM gateways ORDER BY seen_at DESC, id",
                (lease_s, lease_s, now),
            )

        rows = self._run(body, write=False)
        for row in rows:
            row["live"] = bool(row["live"])
        return rows

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
            if ended:
                # A call closed because its gateway's lease lapsed, that the gateway ends
                # after all: its own end replaces the times the closing derived.
                self._db.execute(
                    "UPDATE calls"
                    " SET end_at = CASE WHEN end_at = sip_end_at THEN NULL ELSE end_at END,"
                    " duration_s = CASE WHEN duration_s = sip_end_at - start_at THEN NULL"
                    " ELSE duration_s END WHERE call_uuid = ? AND end_reason = ?",
                    (key, GATEWAY_RESTARTED),
                )
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

    def sip_call_started(self, start: SipCallStart, worker: int | None) -> None:
        """Worker ``worker`` answered a SIP call (an outbound call: the callee answered).
        After :meth:`claim_gateway` the call names our gateway."""
        self._write_sip(
            start.call_uuid,
            start.sip_call_id,
            {
                "worker": worker,
                "sip_from": _text_or_none(start.from_uri),
                "sip_to": _text_or_none(start.to_uri),
                "start_at": start.at,
                "recording": _text_or_none(start.recording),
                "sip_headers": (
                    json.dumps(dict(start.headers), sort_keys=True) if start.headers else None
                ),
                "gateway": self.gateway_id,
            },
            start.at,
            ended=False,
        )
        if start.direction == "outbound":
            self.outbound_answered(start.call_uuid, start.at)

    def sip_call_ended(self, end: SipCallEnd, worker: int | None) -> None:
        """Worker ``worker``'s SIP call ended."""
        self._write_sip(
            end.call_uuid,
            end.sip_call_id,
            {
                "worker": worker,
                "end_reason": _text_or_none(end.reason),
                "sip_end_at": end.at,
                "outcome": end.outcome,
            },
            end.at,
            ended=True,
        )

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
        """:meth:`sip_call_started` field by field, for an inbound call."""
        start = SipCallStart(sip_call_id, call_uuid, from_uri, to_uri, at)
        self.sip_call_started(replace(start, recording=recording, headers=headers), worker)

    def sip_ended(
        self,
        call_uuid: str | None,
        sip_call_id: str,
        worker: int | None,
        reason: str | None,
        at: float,
        outcome: str | None = None,
    ) -> None:
        """:meth:`sip_call_ended` field by field."""
        self.sip_call_ended(SipCallEnd(sip_call_id, call_uuid, reason, at, outcome), worker)

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

    def call_turn(self, rec: CallTurn) -> None:
        """Store one agent turn of a call."""
        turn = rec.turn
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
            key = self._sip_row_key(rec.call_uuid, rec.sip_call_id)
            self._upsert(key, {"sip_call_id": rec.sip_call_id}, rec.at)
            row = self._db.query("SELECT id FROM calls WHERE call_uuid = ?", (key,))[0]
            self._db.execute(sql, [row["id"], number, *values, actions, rec.at])

        self._run(body, write=True)

    def add_turn(
        self,
        call_uuid: str | None,
        sip_call_id: str,
        turn: Mapping[str, Any],
        at: float,
    ) -> None:
        """:meth:`call_turn` field by field."""
        self.call_turn(CallTurn(sip_call_id, call_uuid, turn, at))

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
