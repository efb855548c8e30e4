"""The two databases the call records live in: one connection each, behind :class:`Backend`.

The store is chosen by URL (``records.url``): ``sqlite:///PATH`` (stdlib ``sqlite3``) or
``postgresql://user:password@host:port/dbname`` (psycopg 3); :func:`open_backend` opens it.
The semantics are written once, as SQL both databases run (:mod:`gateway.records.calls`,
:mod:`gateway.records.leases`, behind :class:`~gateway.records.store.CallRecords`); a backend
supplies the connection, placeholders, transaction start, the database's clock, schema types
and version bookkeeping.

Durability: each event is one transaction committed before the store's method returns.
SQLite uses a WAL journal with ``synchronous=FULL``, so a row whose write returned survives
the process being killed (and the machine losing power); PostgreSQL commits are durable on
the server.

Writers are serialised across processes by the database: SQLite's ``BEGIN IMMEDIATE``, a
transaction-scoped advisory lock on PostgreSQL (several gateways may share one PostgreSQL
database).  A PostgreSQL connection that breaks (server restart, network) is re-opened by
:meth:`Backend.recover`, and the store retries the event once; every write is idempotent.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from gateway.records.model import RecordsError
from gateway.records.schema import (
    MIGRATIONS,
    POSTGRES_TYPES,
    SCHEMA_VERSION,
    SQLITE_TYPES,
    statements,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["Backend", "PostgresBackend", "SqliteBackend", "one_line", "open_backend", "redact_url"]


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


def one_line(exc: BaseException) -> str:
    """``exc`` as one line of text, for messages."""
    return " ".join(str(exc).split()) or type(exc).__name__


class Backend:
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


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


class SqliteBackend(Backend):
    """A file opened with the stdlib's ``sqlite3``."""

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
        return statements(MIGRATIONS[number], **SQLITE_TYPES)

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()["user_version"])

    def set_schema_version(self, version: int) -> None:
        self.execute(f"PRAGMA user_version = {int(version)}")


# Key of the advisory lock that serialises writers of one PostgreSQL database ("sipa").
_PG_LOCK: Final = 0x73697061


class PostgresBackend(Backend):
    """A PostgreSQL server over psycopg 3 (its URL's password is kept out of messages)."""

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
            raise RecordsError(f"records: invalid URL {self.label}: {one_line(exc)}") from None
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
                f"records: cannot connect to {self.label}: {one_line(exc)}"
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
        return statements(MIGRATIONS[number], **POSTGRES_TYPES)

    def schema_version(self) -> int:
        self.execute("CREATE TABLE IF NOT EXISTS sipagent_schema (version INTEGER NOT NULL)")
        rows = self.query("SELECT version FROM sipagent_schema")
        if not rows:
            self.execute("INSERT INTO sipagent_schema (version) VALUES (0)")
            return 0
        return max(int(r["version"]) for r in rows)

    def set_schema_version(self, version: int) -> None:
        self.execute("UPDATE sipagent_schema SET version = ?", (version,))


def open_backend(target: Path | str, create: bool) -> Backend:
    """Open the store ``target``: a path or ``sqlite:///PATH`` (the file is created when
    ``create``) or a ``postgresql://`` URL; not migrated yet."""
    if isinstance(target, str):
        scheme = target.partition("://")[0].lower()
        if scheme in ("postgresql", "postgres"):
            return PostgresBackend(target)
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
    return SqliteBackend(path)
