"""A throwaway PostgreSQL server for tests: initdb in a temporary directory, listening on a
free port of 127.0.0.1 (its unix socket in the same directory), stopped and removed at the
end.

initdb and postgres refuse to run as root: as root the server runs as the ``postgres`` system
user when there is one, else as ``nobody``, owning only its temporary directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.devtools.demo import free_udp_tcp_port

REQUIRE_ENV = "SIPAGENT_REQUIRE_POSTGRES"
"""Set (to anything but empty or 0) by .ci/run: a missing PostgreSQL fails the tests."""

USER = "sipagent"


def postgres_bindir() -> Path | None:
    """Directory holding initdb and pg_ctl: from PATH, else Debian's newest
    /usr/lib/postgresql/*/bin."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).resolve().parent
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    found = [d for d in found if (d / "pg_ctl").exists()]
    return found[-1] if found else None


def postgres_required() -> bool:
    """True when missing PostgreSQL must fail the tests rather than skip them."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


class PostgresServer:
    """One running cluster with a password-protected TCP login and one database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="sipagent-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sock"
        self.log = self.base / "server.log"
        self.password = "pw-" + secrets.token_hex(6)
        self.port = 0
        self.dbname = "records"
        self._run_as: dict[str, Any] = {}
        self._started = False
        self._schemas = 0

    # --- lifecycle ----------------------------------------------------------------------
    def _prepare_user(self) -> None:
        self.sockets.mkdir()
        if os.geteuid() != 0:
            return
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        for path in (self.base, self.sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
        self._run_as = {
            "user": account.pw_uid,
            "group": account.pw_gid,
            "extra_groups": [],
            "env": {
                "PATH": "/usr/bin:/bin",
                "HOME": str(self.base),
                "LC_ALL": "C",
                "USER": account.pw_name,
            },
        }

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        proc = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **self._run_as,
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}".strip()
            )

    def _start_server(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.sockets}"
            " -c max_connections=40 -c shared_buffers=16MB"
        )
        pg_ctl = ("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30")
        self._run(*pg_ctl, "-o", options, "start")

    def _stop_server(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-m", "immediate", "stop")

    def start(self) -> None:
        """initdb, start the server and create the database."""
        self._prepare_user()
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as:
            os.chown(pwfile, self._run_as["user"], self._run_as["group"])
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # the cluster is thrown away; commits still fsync
            "--no-instructions",
        )
        pwfile.unlink()
        self.port = free_udp_tcp_port()  # outside the range outgoing connections use
        self._started = True
        self._start_server()
        with self.admin("postgres") as conn:
            conn.execute(f"CREATE DATABASE {self.dbname}")

    def stop(self) -> None:
        """Stop the server at once and remove its directory (idempotent)."""
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                self._stop_server()
        shutil.rmtree(self.base, ignore_errors=True)

    def restart(self) -> None:
        """Stop the server at once (as a crash would) and start it again on the same port."""
        self._stop_server()
        self._start_server()

    # --- access -------------------------------------------------------------------------
    def url(self, dbname: str | None = None, *, password: str | None = None, **query: str) -> str:
        """postgresql:// URL of a database over TCP with the password (or ``password``)."""
        secret = quote(self.password if password is None else password, safe="")
        text = f"postgresql://{USER}:{secret}@127.0.0.1:{self.port}/{dbname or self.dbname}"
        if query:
            text += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return text

    @contextlib.contextmanager
    def admin(self, dbname: str | None = None) -> Iterator[Any]:
        """An autocommit psycopg connection to ``dbname`` (default: the test database)."""
        import psycopg

        with psycopg.connect(self.url(dbname or self.dbname), autocommit=True) as conn:
            yield conn

    def fresh_url(self) -> str:
        """URL of a new, empty schema of the test database (one per test: no leftovers)."""
        self._schemas += 1
        schema = f"t{self._schemas}"
        with self.admin() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return self.url(options=f"-csearch_path={schema}")

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_postgres(bindir: Path) -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, stopped and removed on exit."""
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
