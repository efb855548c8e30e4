"""Call records: one row per call, with its turns, in SQLite (the default) or PostgreSQL;
:class:`CallRecords` is the store's one entry point.

Events about a call come from two places in any order: the answer_url app (``/answer``,
``/dial-status``, ``/hangup``, keyed by Plivo's CallUUID) and the supervisor (a worker's
SIP call started/ended and its turns, keyed by the CallUUID from ``X-PH-Calluuid`` when the
call came through Plivo, else by ``sip:<Call-ID>``).  Every write is an upsert that keeps
earlier values a later event does not know (a NULL never overwrites a value).

Each event is one transaction committed before the method returns.  Writers are
serialised within the process by a lock and across processes by the database; a broken
PostgreSQL connection is re-opened once and the event retried.

This module is the API: what each event writes and what each query returns.  The rest:
the typed records and errors in :mod:`gateway.records.model`; the schema, its migrations
and the records' column mapping in :mod:`gateway.records.schema`; the SQLite and PostgreSQL
connections (durability, writer locks) in :mod:`gateway.records.backends`; the SQL of the
``calls`` and ``turns`` tables in :mod:`gateway.records.calls`; gateways' liveness leases,
and the closing of dead gateways' calls, in :mod:`gateway.records.leases`.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar

from gateway.records import calls, leases
from gateway.records.backends import Backend, one_line, open_backend
from gateway.records.model import CallTurn, RecordsError, SipCallEnd, SipCallStart
from gateway.records.schema import end_columns, start_columns, text_or_none

__all__ = ["CallRecords"]

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

_T = TypeVar("_T")


def _float_or_none(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


class CallRecords:
    """Thread-safe call-record store over one database connection.

    Create it with :meth:`open`.  Every method may be called from any thread (the answer_url
    app's waitress threads, the supervisor's event loop); calls are serialised by a lock and
    each write is committed before the method returns.
    """

    def __init__(self, backend: Backend) -> None:
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
        backend = open_backend(target, create)
        try:
            backend.migrate()
        except RecordsError:
            backend.close()
            raise
        except Exception as exc:
            backend.close()
            raise RecordsError(f"records: cannot use {backend.label}: {one_line(exc)}") from exc
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

    # --- gateways (see gateway.records.leases) ----------------------------------------
    def claim_gateway(self, gateway_id: str, lease_s: float) -> int:
        """Start this process's lease as gateway ``gateway_id``: once, at start, before any
        call.  In one transaction, close the open calls of dead gateways (ours from before,
        gateways whose lease expired, and calls without a gateway when no other gateway is
        live) with the end reason ``GATEWAY_RESTARTED`` (:mod:`gateway.records.model`), then
        record our gateway as seen now.  From then on :meth:`sip_started` stores
        ``gateway_id`` with each call, and :meth:`heartbeat` must renew the lease well
        within ``lease_s`` seconds.

        Returns:
            How many calls were closed.
        """
        if not gateway_id or not gateway_id.strip():
            raise ValueError("gateway_id must not be empty")
        if not 0 < lease_s < float("inf"):
            raise ValueError(f"lease_s must be a positive number of seconds (got {lease_s})")
        closed = self._run(lambda: leases.claim(self._db, gateway_id, lease_s), write=True)
        self.gateway_id = gateway_id
        self._lease_s = lease_s
        return closed

    def heartbeat(self) -> int:
        """Renew our gateway's lease and close the open calls of gateways whose lease
        expired (``GATEWAY_RESTARTED``); return how many calls were closed.  Serve calls it
        every ``lease_s / 3`` seconds.

        Raises:
            RecordsError: :meth:`claim_gateway` did not run (or the gateway was released).
        """
        gateway_id, lease_s = self.gateway_id, self._lease_s
        if gateway_id is None:
            raise RecordsError("records: heartbeat before claim_gateway")
        return self._run(lambda: leases.heartbeat(self._db, gateway_id, lease_s), write=True)

    def release_gateway(self) -> None:
        """Mark our gateway stopped (clean shutdown, after its calls ended): its lease is
        not needed any more.  Idempotent; a no-op without :meth:`claim_gateway`.  A row
        of our id that another process claimed since is left alone."""
        gateway_id = self.gateway_id
        if gateway_id is None:
            return
        self._run(lambda: leases.release(self._db, gateway_id), write=True)
        self.gateway_id = None

    def gateways(self, lease_s: float = 0.0) -> list[dict[str, Any]]:
        """The gateways that used the store, most recently seen first; ``live`` tells
        whether each is running by its lease (or by ``lease_s`` when that is longer)."""
        return self._run(lambda: leases.gateway_rows(self._db, lease_s), write=False)

    # --- writes -----------------------------------------------------------------------
    def _write(self, key: str, fields: Mapping[str, object], at: float) -> None:
        self._run(lambda: calls.upsert(self._db, key, fields, at), write=True)

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
        """Record what ``/answer`` decided (``route``: one of ``ROUTES``, see
        :mod:`gateway.records.model`; ``at``: unix time)."""
        self._write(
            call_uuid,
            {
                "from_number": text_or_none(from_number),
                "to_number": text_or_none(to_number),
                "direction": text_or_none(direction),
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
                "dial_status": text_or_none(params.get("DialStatus")),
                "dial_hangup_cause": text_or_none(params.get("DialHangupCause")),
                "dial_b_leg_uuid": text_or_none(params.get("DialBLegUUID")),
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
                "from_number": text_or_none(params.get("From")),
                "to_number": text_or_none(params.get("To")),
                "direction": text_or_none(params.get("Direction")),
                "hangup_cause": text_or_none(params.get("HangupCause")),
                "duration_s": duration,
                "end_at": at,
                "raw_hangup": json.dumps(dict(params), sort_keys=True),
            },
            at,
        )

    def _write_sip(
        self,
        call_uuid: str | None,
        sip_call_id: str,
        fields: Mapping[str, object],
        at: float,
        *,
        ended: bool,
    ) -> None:
        self._run(
            lambda: calls.write_sip(self._db, call_uuid, sip_call_id, fields, at, ended=ended),
            write=True,
        )

    def sip_call_started(self, start: SipCallStart, worker: int | None) -> None:
        """Worker ``worker`` answered a SIP call (an outbound call: the callee answered).
        After :meth:`claim_gateway` the call names our gateway."""
        self._write_sip(
            start.call_uuid,
            start.sip_call_id,
            {"worker": worker, **start_columns(start), "gateway": self.gateway_id},
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
            {"worker": worker, **end_columns(end)},
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
            "from_number": text_or_none(from_number),
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
            {"outcome": outcome, "plivo_call_uuid": text_or_none(params.get("CallUUID"))},
            at,
        )

    def call_turn(self, rec: CallTurn) -> None:
        """Store one agent turn of a call."""
        self._run(lambda: calls.write_turn(self._db, rec), write=True)

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
    def get(self, call_id: str) -> dict[str, Any] | None:
        """The record of a call by CallUUID, by ``sip:<Call-ID>`` key, or by SIP Call-ID.

        ``raw_hangup`` is returned decoded (a dict) when present; ``turn_count`` is the
        number of stored turns.
        """
        return self._run(lambda: calls.get(self._db, call_id), write=False)

    def find(self, call_id: str) -> dict[str, Any] | None:
        """Like :meth:`get`, and failing an exact match, the one call whose CallUUID or SIP
        Call-ID starts with ``call_id``.

        Raises:
            AmbiguousCallId: several calls start with ``call_id``.
        """
        return self._run(lambda: calls.find(self._db, call_id), write=False)

    def turns(self, call_id: str) -> list[dict[str, Any]]:
        """The stored turns of a call (looked up like `get`), in order."""
        return self._run(lambda: calls.turns(self._db, call_id), write=False)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The ``limit`` most recently created records, newest first."""
        return self._run(lambda: calls.recent(self._db, limit), write=False)
