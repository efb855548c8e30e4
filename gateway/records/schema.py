"""The schema of the call records: its numbered migrations, and the mapping between the
typed records of :mod:`gateway.records.model` and the columns they fill.

Schema changes are numbered migrations, applied on open: SQLite tracks the version with
``PRAGMA user_version``, PostgreSQL in the table ``sipagent_schema``.  One SQL text serves
both databases, with placeholders for the types that differ (:data:`SQLITE_TYPES`,
:data:`POSTGRES_TYPES`).  ``calls.id`` is a stable integer key for the turns: ``call_uuid``
may change once, from ``sip:<Call-ID>`` to the CallUUID, when the two are first seen
together.

A field added to a record that is stored gets its column here twice: in a new migration
(appended; a released migration never changes) and in the record's column mapping below.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from gateway.records.model import CallTurn, SipCallEnd, SipCallStart

__all__ = [
    "MIGRATIONS",
    "POSTGRES_TYPES",
    "SCHEMA_VERSION",
    "SQLITE_TYPES",
    "TURN_FIELDS",
    "call_from_row",
    "end_columns",
    "start_columns",
    "statements",
    "text_or_none",
    "turn_columns",
    "turn_from_row",
]

# Schema templates: {pk} is the integer primary key, {ref} the type that references it,
# {real} a float type (unix times must keep sub-millisecond precision: float8).
MIGRATIONS: Final[Sequence[str]] = (
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
    # 7: replies generated ahead of the turn's end: whether a turn's reply was, and how
    # many were dropped before it (the caller went on; their tokens were paid for).
    """
    ALTER TABLE turns ADD COLUMN ahead INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE turns ADD COLUMN discarded INTEGER NOT NULL DEFAULT 0;
    """,
)

SQLITE_TYPES: Final = {"pk": "INTEGER PRIMARY KEY", "ref": "INTEGER", "real": "REAL"}
POSTGRES_TYPES: Final = {
    "pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    "ref": "BIGINT",
    "real": "DOUBLE PRECISION",
}

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""Schema version this code writes."""


def statements(template: str, **types: str) -> list[str]:
    """The statements of the migration ``template`` with ``types`` filled in."""
    text = template.format(**types)
    return [s.strip() for s in text.split(";") if s.strip()]


# --- the records' columns ---------------------------------------------------------------------
# What a record writes (its key columns, ``worker``, ``gateway`` and the row times are the
# store's) and how a row is returned.


def text_or_none(value: str | None) -> str | None:
    """A text column's value: an empty text is stored as NULL."""
    return value if value else None


def start_columns(start: SipCallStart) -> dict[str, object]:
    """The ``calls`` columns a SIP call's start fills."""
    return {
        "sip_from": text_or_none(start.from_uri),
        "sip_to": text_or_none(start.to_uri),
        "start_at": start.at,
        "recording": text_or_none(start.recording),
        "sip_headers": json.dumps(dict(start.headers), sort_keys=True) if start.headers else None,
    }


def end_columns(end: SipCallEnd) -> dict[str, object]:
    """The ``calls`` columns a SIP call's end fills."""
    return {
        "end_reason": text_or_none(end.reason),
        "sip_end_at": end.at,
        "outcome": end.outcome,
    }


# Keys of `TurnRecord.as_dict()` stored as the ``turns`` columns of the same name.
TURN_FIELDS: Final = (
    "kind",
    "user_text",
    "agent_text",
    "intent",
    "interrupted",
    "barge_in",
    "ahead",
    "discarded",
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
_TURN_FLAGS: Final = ("interrupted", "barge_in", "ahead")  # stored as 0/1, read as bool


def turn_columns(turn: CallTurn) -> dict[str, object]:
    """The ``turns`` columns one turn fills besides ``call_id`` and ``at``: ``turn`` (its
    number) first, then :data:`TURN_FIELDS`, then ``actions`` (JSON)."""
    values = turn.turn
    columns: dict[str, object] = {"turn": int(values.get("turn") or 0)}
    for name in TURN_FIELDS:
        value = values.get(name)
        if name in _TURN_FLAGS:
            value = int(bool(value))
        elif name == "discarded":
            value = int(value or 0)
        columns[name] = value
    if columns["kind"] is None:
        columns["kind"] = "reply"
    columns["actions"] = json.dumps(list(values.get("actions") or []))
    return columns


def call_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``calls`` row (with its ``turn_count``) as the store returns it: ``raw_hangup``
    decoded."""
    record = dict(row)
    raw = record.get("raw_hangup")
    if isinstance(raw, str):
        # Undecodable text (not written by the store) is returned as it is.
        with contextlib.suppress(json.JSONDecodeError):
            record["raw_hangup"] = json.loads(raw)
    record["turn_count"] = int(record.get("turn_count") or 0)
    return record


def turn_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``turns`` row as the store returns it: ``actions`` decoded, flags as bool."""
    item = dict(row)
    item["actions"] = json.loads(item["actions"] or "[]")
    for name in _TURN_FLAGS:
        item[name] = bool(item[name])
    return item
