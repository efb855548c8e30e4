"""Tests for the call-record store (gateway.records.store and the modules behind it), on
SQLite and on a real PostgreSQL server (tests/helpers/postgres.py: initdb in a temporary
directory, one schema per test)."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.records.backends import redact_url
from gateway.records.model import GATEWAY_RESTARTED, AmbiguousCallId, RecordsError, sip_key
from gateway.records.report import format_call
from gateway.records.schema import (
    MIGRATIONS,
    POSTGRES_TYPES,
    SCHEMA_VERSION,
    SQLITE_TYPES,
    statements,
)
from gateway.records.store import CallRecords
from sip_config import ConfigError, RecordsSettings, load_settings
from tests.helpers.postgres import PostgresServer

UUID = "3f2a9c1e-7b4d-4e8a-9f01-23456789abcd"
UUID2 = "11111111-2222-4333-8444-555555555555"


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new, empty store lives: an SQLite path or a PostgreSQL URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'dir' / 'records.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.fresh_url()


@pytest.fixture
def records(target: str) -> Iterator[CallRecords]:
    store = CallRecords.open(target)
    yield store
    store.close()


def test_open_creates_parent_dirs_wal_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "calls.db"
    with CallRecords.open(path):
        pass
    assert path.exists()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RecordsError, match="schema version"):
        CallRecords.open(path)


def test_unopenable_path_is_a_records_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RecordsError, match="cannot open"):
        CallRecords.open(blocker / "calls.db")


def test_answer_dial_status_and_hangup_merge_into_one_row(records: CallRecords) -> None:
    # Events out of order: the hangup first, then /answer, then the dial status.
    records.hung_up(
        UUID,
        {
            "CallUUID": UUID,
            "HangupCause": "NORMAL_CLEARING",
            "Duration": "42",
            "BillDuration": "60",
            "EndTime": "2025-01-01 10:00:42",
        },
        at=1042.0,
    )
    records.answered(UUID, "+14155550100", "+14155550199", "inbound", "agent", 2, at=1000.0)
    records.dial_status(
        UUID,
        {"DialStatus": "completed", "DialHangupCause": "NORMAL_CLEARING", "DialBLegUUID": UUID2},
        at=1043.0,
    )
    row = records.get(UUID)
    assert row is not None
    assert row["from_number"] == "+14155550100"
    assert row["to_number"] == "+14155550199"
    assert row["direction"] == "inbound"
    assert row["route"] == "agent"
    assert row["worker"] == 2
    assert row["answer_at"] == 1000.0
    assert row["end_at"] == 1042.0
    assert row["duration_s"] == 42.0
    assert row["hangup_cause"] == "NORMAL_CLEARING"
    assert row["dial_status"] == "completed"
    assert row["dial_hangup_cause"] == "NORMAL_CLEARING"
    assert row["dial_b_leg_uuid"] == UUID2
    assert row["raw_hangup"]["EndTime"] == "2025-01-01 10:00:42"
    assert row["updated_at"] == 1043.0
    assert len(records.recent()) == 1


def test_a_later_event_never_blanks_an_earlier_field(records: CallRecords) -> None:
    records.answered(UUID, "+1555", "+1666", "inbound", "agent", 1, at=10.0)
    records.hung_up(UUID, {"HangupCause": "NORMAL_CLEARING"}, at=20.0)  # no From/To/Duration
    records.dial_status(UUID, {}, at=21.0)
    row = records.get(UUID)
    assert row is not None
    assert (row["from_number"], row["to_number"], row["worker"]) == ("+1555", "+1666", 1)
    assert row["duration_s"] is None
    # BillDuration stands in when Duration is missing or junk.
    records.hung_up(UUID, {"Duration": "junk", "BillDuration": "7"}, at=22.0)
    row = records.get(UUID)
    assert row is not None
    assert row["duration_s"] == 7.0
    assert row["hangup_cause"] == "NORMAL_CLEARING"


def test_sip_events_merge_with_the_plivo_row(records: CallRecords) -> None:
    records.answered(UUID, "+1555", "+1666", "inbound", "agent", 0, at=100.0)
    records.sip_started(UUID, "cid-1@host", 0, "sip:+1555@plivo", "sip:agent@w0", at=101.0)
    # The supervisor may not know the CallUUID at the end: matched by the SIP Call-ID.
    records.sip_ended(None, "cid-1@host", 0, "remote hung up (BYE)", at=130.0)
    records.hung_up(UUID, {"HangupCause": "NORMAL_CLEARING", "Duration": "30"}, at=131.0)
    assert len(records.recent()) == 1
    row = records.get(UUID)
    assert row is not None
    assert row["sip_call_id"] == "cid-1@host"
    assert row["start_at"] == 101.0
    assert row["sip_end_at"] == 130.0
    assert row["end_at"] == 131.0  # Plivo's hangup wins over the SIP side's
    assert row["end_reason"] == "remote hung up (BYE)"
    assert row["duration_s"] == 30.0
    assert row["sip_from"] == "sip:+1555@plivo"
    assert records.get("cid-1@host") == row


def test_sip_only_call_is_keyed_by_call_id(records: CallRecords) -> None:
    records.sip_started(None, "softphone-7", 3, "sip:dev@lan", "sip:agent@lan", at=5.0)
    records.sip_ended(None, "softphone-7", 3, "local hangup", at=9.5)
    row = records.get("softphone-7")
    assert row is not None
    assert row["call_uuid"] == sip_key("softphone-7")
    assert records.get(sip_key("softphone-7")) == row
    assert row["worker"] == 3
    assert row["end_at"] == 9.5
    assert row["duration_s"] == 4.5
    assert records.get("nope") is None


def test_headers_and_recording_are_stored_with_the_call(records: CallRecords) -> None:
    headers = {"X-PH-Calluuid": "abc", "X-Campaign": "spring"}
    records.sip_started(
        None, "c-9", 0, None, None, at=1.0, recording="/rec/c-9.wav", headers=headers
    )
    records.sip_ended(None, "c-9", 0, "local hangup", at=2.0)  # erases neither
    row = records.get("c-9")
    assert row is not None and row["recording"] == "/rec/c-9.wav"
    assert json.loads(row["sip_headers"]) == headers


def test_sip_row_is_adopted_when_its_call_uuid_turns_up(records: CallRecords) -> None:
    records.sip_started(None, "cid-2", 1, None, None, at=1.0)
    records.sip_ended(UUID, "cid-2", 1, "bye", at=2.0)
    records.answered(UUID, "+1", "+2", "inbound", "agent", 1, at=3.0)
    rows = records.recent()
    assert len(rows) == 1
    assert rows[0]["call_uuid"] == UUID
    assert rows[0]["start_at"] == 1.0
    assert rows[0]["route"] == "agent"


def test_recent_is_newest_first_and_limited(records: CallRecords) -> None:
    for i in range(5):
        records.sip_started(None, f"c{i}", 0, None, None, at=float(i))
    recent = records.recent(limit=3)
    assert [r["sip_call_id"] for r in recent] == ["c4", "c3", "c2"]
    assert records.recent(limit=0) == []


def test_rows_survive_close_and_reopen(target: str) -> None:
    store = CallRecords.open(target)
    store.answered(UUID, "+1", "+2", "inbound", "fallback", None, at=1.0)
    store.close()
    store.close()  # idempotent
    with pytest.raises(RecordsError, match="closed"):
        store.get(UUID)
    with CallRecords.open(target) as again:
        row = again.get(UUID)
        assert row is not None
        assert row["route"] == "fallback"
        assert row["worker"] is None


def test_concurrent_writers_lose_nothing(records: CallRecords) -> None:
    def writer(n: int) -> None:
        for i in range(25):
            records.sip_started(None, f"w{n}-{i}", n, None, None, at=float(i))
            records.sip_ended(None, f"w{n}-{i}", n, "done", at=float(i) + 1)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    rows = records.recent(limit=1000)
    assert len(rows) == 100
    assert all(r["end_reason"] == "done" and r["duration_s"] == 1.0 for r in rows)


def test_committed_rows_survive_sigkill(target: str) -> None:
    child = textwrap.dedent(
        f"""
        import sys, time
        from gateway.records.store import CallRecords
        store = CallRecords.open({target!r})
        for i in range(20):
            store.answered(f"{UUID[:-2]}{{i:02d}}", "+1", "+2", "inbound", "agent", i % 3, 1.0)
        print("committed", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "committed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    with CallRecords.open(target) as store:
        rows = store.recent(limit=100)
        assert len(rows) == 20
        assert {r["worker"] for r in rows} == {0, 1, 2}


def _turn(n: int, kind: str = "reply", **extra: object) -> dict[str, object]:
    return {
        "turn": n,
        "kind": kind,
        "user_text": f"question {n}",
        "agent_text": f"answer {n}",
        "intent": "hours",
        "eot_wait_ms": 400.0,
        "stt_ms": 12.0,
        "brain_ms": 150.0,
        "tts_first_ms": 80.0,
        "playout_ms": 9.0,
        "total_ms": 651.0,
        "actions": ["hangup"] if kind == "goodbye" else [],
        "interrupted": False,
        **extra,
    }


def test_turns_are_stored_with_their_call_in_order(records: CallRecords) -> None:
    records.sip_started("uuid-t", "sip-t", 1, "sip:a@x", "sip:b@y", 10.0)
    records.add_turn("uuid-t", "sip-t", _turn(2), 12.0)
    records.add_turn("uuid-t", "sip-t", _turn(1, "greeting"), 11.0)
    records.add_turn(None, "sip-t", _turn(3, "goodbye", interrupted=True), 13.0)
    turns = records.turns("uuid-t")
    assert [t["turn"] for t in turns] == [1, 2, 3]
    assert turns[1]["user_text"] == "question 2" and turns[1]["brain_ms"] == 150.0
    assert turns[2]["actions"] == ["hangup"] and turns[2]["interrupted"] is True
    assert records.turns("sip-t") == turns  # by SIP Call-ID too
    records.add_turn("uuid-t", "sip-t", _turn(2, agent_text="answer 2, again"), 14.0)
    assert records.turns("uuid-t")[1]["agent_text"] == "answer 2, again"
    assert records.turns("nobody") == []


def test_turns_keep_whether_their_reply_was_generated_ahead(records: CallRecords) -> None:
    records.sip_started("uuid-a", "sip-a", 1, "sip:a@x", "sip:b@y", 10.0)
    records.add_turn("uuid-a", "sip-a", _turn(1, ahead=True, discarded=2), 11.0)
    records.add_turn("uuid-a", "sip-a", _turn(2, ahead=False, discarded=0), 12.0)
    records.add_turn("uuid-a", "sip-a", _turn(3), 13.0)  # from a worker before these fields
    turns = records.turns("uuid-a")
    assert [(t["ahead"], t["discarded"]) for t in turns] == [(True, 2), (False, 0), (False, 0)]
    shown = format_call(records.get("uuid-a") or {}, turns)
    assert "Transcript (3 turns; 1 replies generated ahead, 2 discarded):" in shown
    assert "  #1 reply  " in shown and "[ahead, 2 discarded]" in shown


def test_turns_before_the_call_row_create_it(records: CallRecords) -> None:
    records.add_turn(None, "sip-early", _turn(1, "greeting"), 5.0)
    row = records.get("sip-early")
    assert row is not None and row["call_uuid"] == sip_key("sip-early")
    records.sip_started("uuid-late", "sip-early", 0, None, None, 6.0)
    assert [t["turn"] for t in records.turns("uuid-late")] == [1]


def test_version_1_store_is_migrated_and_keeps_its_calls(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        for statement in _sqlite_migration(0):
            db.execute(statement)
        db.execute("INSERT INTO calls (call_uuid, created_at, updated_at) VALUES ('old', 1.0, 1.0)")
        db.execute("PRAGMA user_version = 1")
    with CallRecords.open(path) as records:
        assert records.get("old") is not None
        records.add_turn("old", "sip-old", _turn(1), 2.0)
        assert len(records.turns("old")) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7


def _sqlite_migration(number: int) -> list[str]:
    return statements(MIGRATIONS[number], **SQLITE_TYPES)


def test_unix_times_keep_their_precision(records: CallRecords) -> None:
    at = 1_700_000_000.123456
    records.sip_started(None, "precise", 0, None, None, at)
    row = records.get("precise")
    assert row is not None and row["start_at"] == at and row["created_at"] == at


def test_find_takes_an_exact_id_or_a_unique_prefix(records: CallRecords) -> None:
    records.answered(UUID, "+1", "+2", "inbound", "agent", 0, at=1.0)
    records.sip_started(UUID, "a1b2c3@10.0.0.1", 0, None, None, at=2.0)
    records.answered(UUID2, "+3", "+4", "inbound", "agent", 1, at=3.0)
    records.sip_started(None, "softphone-9", 2, None, None, at=4.0)
    records.add_turn(None, "softphone-9", _turn(1, "greeting"), 4.5)

    def key(call_id: str) -> str | None:
        row = records.find(call_id)
        return None if row is None else str(row["call_uuid"])

    assert key(UUID) == UUID
    assert key("3f2a") == UUID  # CallUUID prefix
    assert key("a1b2") == UUID  # SIP Call-ID prefix
    assert key("a1b2c3@10.0.0.1") == UUID
    assert key("soft") == sip_key("softphone-9")  # a SIP-only call, without its "sip:"
    assert key("sip:soft") == sip_key("softphone-9")
    found = records.find("softphone-9")
    assert found is not None and found["turn_count"] == 1
    assert key("ffff") is None
    assert key("3f2a%") is None and key("_") is None  # no wildcards
    records.sip_started(None, "11-other", 3, None, None, at=5.0)
    with pytest.raises(AmbiguousCallId) as info:
        records.find("11")  # UUID2 and the SIP-only call "11-other"
    assert sorted(info.value.matches) == sorted([UUID2, sip_key("11-other")])


def test_recent_and_get_count_the_turns(records: CallRecords) -> None:
    records.add_turn(UUID, "cid-n", _turn(1, "greeting"), 1.0)
    records.add_turn(UUID, "cid-n", _turn(2), 2.0)
    records.add_turn(UUID, "cid-n", _turn(2), 3.0)  # replaced, not added
    records.answered(UUID2, None, None, None, "hangup", None, at=4.0)
    counts = {r["call_uuid"]: r["turn_count"] for r in records.recent()}
    assert counts == {UUID: 2, UUID2: 0}


def test_two_stores_on_one_database_lose_and_duplicate_nothing(target: str) -> None:
    calls = [f"{UUID[:-4]}{i:04d}" for i in range(30)]
    with CallRecords.open(target) as one, CallRecords.open(target) as two:

        def plivo() -> None:
            for i, uuid in enumerate(calls):
                one.answered(uuid, "+1", "+2", "inbound", "agent", i % 4, at=float(i))
                one.hung_up(uuid, {"HangupCause": "NORMAL_CLEARING", "Duration": "5"}, i + 9.0)

        def workers() -> None:
            for i, uuid in enumerate(calls):
                two.sip_started(uuid, f"cid-{i}", i % 4, None, None, at=i + 1.0)
                two.add_turn(uuid, f"cid-{i}", _turn(1, "greeting"), i + 2.0)
                two.sip_ended(None, f"cid-{i}", i % 4, "bye", at=i + 8.0)

        threads = [threading.Thread(target=plivo), threading.Thread(target=workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        rows = one.recent(limit=1000)
    assert sorted(r["call_uuid"] for r in rows) == sorted(calls)
    for row in rows:
        assert row["hangup_cause"] == "NORMAL_CLEARING" and row["end_reason"] == "bye"
        assert row["route"] == "agent" and row["sip_call_id"].startswith("cid-")
        assert row["duration_s"] == 5.0 and row["turn_count"] == 1


def test_a_missing_sqlite_store_is_not_created_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    with pytest.raises(RecordsError, match="no call records"):
        CallRecords.open(f"sqlite:///{path}", create=False)
    assert not path.exists()


@pytest.mark.parametrize(
    "url", ["mysql://u:secret@h/db", "sqlite:///", "http://u:secret@example.com/"]
)
def test_unsupported_urls_are_records_errors(url: str) -> None:
    with pytest.raises(RecordsError) as info:
        CallRecords.open(url)
    assert "secret" not in str(info.value)


def test_redact_url_hides_only_the_password() -> None:
    assert (
        redact_url("postgresql://me:s3cr%40t@db:5432/calls") == "postgresql://me:***@db:5432/calls"
    )
    assert redact_url("postgresql://me@db/calls") == "postgresql://me@db/calls"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


# --- gateways and their leases ---------------------------------------------------------------


def _execute(store: CallRecords, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run ``sql`` on the store's database in a write transaction (to fake an old lease)."""
    store._run(lambda: store._db.execute(sql, params), write=True)


def _age(store: CallRecords, gateway_id: str, seconds: float) -> None:
    """Move the last sign of life of ``gateway_id`` ``seconds`` into the past."""
    _execute(store, "UPDATE gateways SET seen_at = seen_at - ? WHERE id = ?", (seconds, gateway_id))


def _start(store: CallRecords, sip_call_id: str, worker: int = 0) -> float:
    at = time.time()
    store.sip_started(None, sip_call_id, worker, None, None, at=at)
    return at


def _assert_closed(row: dict[str, object] | None, start: float, before: float) -> None:
    assert row is not None
    assert row["end_reason"] == GATEWAY_RESTARTED
    end = row["sip_end_at"]
    assert isinstance(end, float) and before <= end <= time.time()
    assert row["end_at"] == end
    assert row["duration_s"] == end - start


def _assert_open(row: dict[str, object] | None) -> None:
    assert row is not None
    assert row["sip_end_at"] is None and row["end_at"] is None
    assert row["end_reason"] is None and row["duration_s"] is None


def test_claim_closes_what_our_dead_predecessor_left_open(target: str) -> None:
    with CallRecords.open(target) as dead:
        assert dead.claim_gateway("host-a:5060", 30.0) == 0
        start = _start(dead, "open-1")
        dead.sip_started(None, "ended-1", 0, None, None, at=start)
        dead.sip_ended(None, "ended-1", 0, "remote hung up (BYE)", at=start + 5)
    # Closed without release_gateway, as after kill -9: its lease is fresh, but the new
    # gateway of the same id holds its SIP port.
    before = time.time()
    with CallRecords.open(target) as store:
        assert store.claim_gateway("host-a:5060", 30.0) == 1
        _assert_closed(store.get("open-1"), start, before)
        ended = store.get("ended-1")
        assert ended is not None
        assert ended["end_reason"] == "remote hung up (BYE)" and ended["duration_s"] == 5.0
        assert store.claim_gateway("host-a:5060", 30.0) == 0  # nothing left to close
        (row,) = store.gateways()
        assert row["id"] == "host-a:5060" and row["live"] and row["stopped_at"] is None


def test_a_gateway_killed_with_sigkill_has_its_calls_closed_at_restart(target: str) -> None:
    child = textwrap.dedent(
        f"""
        import time
        from gateway.records.store import CallRecords
        store = CallRecords.open({target!r})
        store.claim_gateway("killed:5070", 30.0)
        store.sip_started(None, "up-when-killed", 1, None, None, time.time())
        print("calling", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "calling"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    with CallRecords.open(target) as store:
        _assert_open(store.get("up-when-killed"))
        assert store.claim_gateway("killed:5070", 30.0) == 1
        row = store.get("up-when-killed")
        assert row is not None and row["end_reason"] == GATEWAY_RESTARTED
        assert row["gateway"] == "killed:5070" and row["worker"] == 1


def test_a_live_gateways_calls_are_left_alone(target: str) -> None:
    with CallRecords.open(target) as one, CallRecords.open(target) as two:
        one.claim_gateway("one:5060", 30.0)
        _start(one, "one-call")
        assert two.claim_gateway("two:5060", 30.0) == 0
        _start(two, "two-call")
        assert two.heartbeat() == 0
        assert one.heartbeat() == 0
        _assert_open(one.get("one-call"))
        _assert_open(one.get("two-call"))
        assert {(g["id"], g["live"]) for g in one.gateways()} == {
            ("one:5060", True),
            ("two:5060", True),
        }


def test_an_expired_lease_is_closed_by_claim(target: str) -> None:
    with CallRecords.open(target) as one, CallRecords.open(target) as two:
        one.claim_gateway("one:5060", 30.0)
        start = _start(one, "one-call")
        _age(one, "one:5060", 31.0)
        before = time.time()
        assert two.claim_gateway("two:5060", 30.0) == 1
        _assert_closed(two.get("one-call"), start, before)
        assert {(g["id"], g["live"]) for g in two.gateways()} == {
            ("one:5060", False),
            ("two:5060", True),
        }


def test_an_expired_lease_is_closed_by_heartbeat(target: str) -> None:
    with CallRecords.open(target) as one, CallRecords.open(target) as two:
        one.claim_gateway("one:5060", 30.0)
        two.claim_gateway("two:5060", 30.0)
        start = _start(one, "one-call")
        _start(two, "two-call")
        _start(one, "one-ended")
        one.sip_ended(None, "one-ended", 0, "local hangup", at=start + 1)
        _age(one, "one:5060", 29.0)
        assert two.heartbeat() == 0  # within the lease
        _age(one, "one:5060", 2.0)
        before = time.time()
        assert two.heartbeat() == 1
        _assert_closed(two.get("one-call"), start, before)
        ended = two.get("one-ended")
        assert ended is not None and ended["end_reason"] == "local hangup"
        _assert_open(two.get("two-call"))  # our own calls are ours to end
        assert two.heartbeat() == 0


def test_a_short_lease_runs_out_by_the_database_clock(target: str) -> None:
    with CallRecords.open(target) as one, CallRecords.open(target) as two:
        one.claim_gateway("one:5060", 0.2)
        two.claim_gateway("two:5060", 0.2)
        _start(one, "one-call")
        assert two.heartbeat() == 0
        time.sleep(0.3)  # one misses its heartbeats
        assert two.heartbeat() == 1
        row = two.get("one-call")
        assert row is not None and row["end_reason"] == GATEWAY_RESTARTED


def test_a_gateway_with_a_longer_lease_is_judged_by_it(target: str) -> None:
    with CallRecords.open(target) as one, CallRecords.open(target) as two:
        one.claim_gateway("one:5060", 60.0)
        two.claim_gateway("two:5060", 10.0)
        _start(one, "one-call")
        _age(one, "one:5060", 45.0)
        assert two.heartbeat() == 0  # 45 s is past our lease, not past its own
        _age(one, "one:5060", 20.0)
        assert two.heartbeat() == 1


def test_a_call_closed_for_a_lapsed_lease_takes_its_real_end(target: str) -> None:
    with CallRecords.open(target) as one, CallRecords.open(target) as two:
        one.claim_gateway("one:5060", 30.0)
        two.claim_gateway("two:5060", 30.0)
        start = _start(one, "sip-only")
        one.answered(UUID, "+1", "+2", "inbound", "agent", 0, at=start)
        one.sip_started(UUID, "via-plivo", 0, None, None, at=start)
        one.hung_up(UUID, {"HangupCause": "NORMAL_CLEARING", "Duration": "7"}, at=start + 7)
        _age(one, "one:5060", 60.0)  # one stalled: two takes it for dead
        assert two.heartbeat() == 2
        assert one.heartbeat() == 0  # one is back; its calls go on and end
        one.sip_ended(None, "sip-only", 0, "remote hung up (BYE)", at=start + 42.0)
        one.sip_ended(UUID, "via-plivo", 0, "bye", at=start + 8.0)
        row = one.get("sip-only")
        assert row is not None and row["end_reason"] == "remote hung up (BYE)"
        assert (row["sip_end_at"], row["end_at"], row["duration_s"]) == (
            start + 42.0,
            start + 42.0,
            42.0,
        )
        row = one.get(UUID)  # Plivo's end and duration are kept
        assert row is not None and row["end_reason"] == "bye"
        assert (row["sip_end_at"], row["end_at"], row["duration_s"]) == (
            start + 8.0,
            start + 7.0,
            7.0,
        )


def test_sip_started_names_the_gateway_after_a_claim(records: CallRecords) -> None:
    _start(records, "before")
    records.claim_gateway("gw:5080", 30.0)
    assert records.gateway_id == "gw:5080"
    _start(records, "after")
    records.sip_ended(None, "after", 0, "bye", at=time.time())  # keeps the gateway
    before, after = records.get("before"), records.get("after")
    assert before is not None and before["gateway"] is None
    assert after is not None and after["gateway"] == "gw:5080"


def test_release_marks_the_gateway_stopped(target: str) -> None:
    with CallRecords.open(target) as one, CallRecords.open(target) as two:
        one.claim_gateway("one:5060", 30.0)
        two.claim_gateway("two:5060", 30.0)
        _start(one, "one-call")
        one.sip_ended(None, "one-call", 0, "bye", at=time.time())
        one.release_gateway()
        one.release_gateway()  # idempotent
        assert one.gateway_id is None
        with pytest.raises(RecordsError, match="claim_gateway"):
            one.heartbeat()
        rows = {g["id"]: g for g in two.gateways()}
        assert not rows["one:5060"]["live"] and rows["one:5060"]["stopped_at"] is not None
        assert rows["two:5060"]["live"]
        assert two.heartbeat() == 0
        row = two.get("one-call")
        assert row is not None and row["end_reason"] == "bye"
        # A released gateway that starts again is live again.
        one.claim_gateway("one:5060", 30.0)
        assert all(g["live"] for g in two.gateways())


def test_claim_needs_an_id_and_a_positive_lease(records: CallRecords) -> None:
    for gateway_id, lease_s in (("", 30.0), ("  ", 30.0), ("gw", 0.0), ("gw", float("nan"))):
        with pytest.raises(ValueError):
            records.claim_gateway(gateway_id, lease_s)
    assert records.gateway_id is None and records.gateways() == []
    with pytest.raises(RecordsError, match="claim_gateway"):
        records.heartbeat()
    records.release_gateway()  # nothing to release


def _make_version_4_store(target: str) -> None:
    """Create the schema of migrations 1-4 at ``target`` (a new store)."""
    if target.startswith("sqlite:///"):
        path = Path(target.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as db:
            for number in range(4):
                for statement in _sqlite_migration(number):
                    db.execute(statement)
            db.execute("PRAGMA user_version = 4")
        return
    import psycopg

    with psycopg.connect(target, autocommit=True) as conn:
        for number in range(4):
            for statement in statements(MIGRATIONS[number], **POSTGRES_TYPES):
                conn.execute(statement)
        conn.execute("CREATE TABLE sipagent_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO sipagent_schema VALUES (4)")


def test_version_4_store_is_migrated_and_its_open_calls_closed_at_claim(target: str) -> None:
    _make_version_4_store(target)
    with CallRecords.open(target) as old:  # writes rows as version 4 would (no gateway)
        start = _start(old, "legacy-open")
        _start(old, "legacy-ended")
        old.sip_ended(None, "legacy-ended", 0, "bye", at=start + 3)
        old.answered(UUID, "+1", "+2", "inbound", "agent", 0, at=start)  # no SIP side yet
    before = time.time()
    with CallRecords.open(target) as store:
        rows = {r["call_uuid"]: r for r in store.recent()}
        assert len(rows) == 3 and all(r["gateway"] is None for r in rows.values())
        assert store.claim_gateway("new:5060", 30.0) == 1
        _assert_closed(store.get("legacy-open"), start, before)
        ended = store.get("legacy-ended")
        assert ended is not None and ended["end_reason"] == "bye"
        answered = store.get(UUID)
        assert answered is not None and answered["end_reason"] is None
        assert answered["route"] == "agent"
        assert [g["id"] for g in store.gateways()] == ["new:5060"]


def test_calls_without_a_gateway_wait_while_another_gateway_is_live(target: str) -> None:
    with (
        CallRecords.open(target) as old,
        CallRecords.open(target) as one,
        CallRecords.open(target) as two,
    ):
        two.claim_gateway("two:5060", 30.0)
        _start(old, "legacy")  # never claims: as a version without leases writes
        assert one.claim_gateway("one:5060", 30.0) == 0  # two may be running it
        two.release_gateway()
        assert one.heartbeat() == 0  # heartbeats leave calls without a gateway alone
        _assert_open(one.get("legacy"))
        one.release_gateway()
    with CallRecords.open(target) as again:
        assert again.claim_gateway("one:5060", 30.0) == 1  # no gateway is live
        row = again.get("legacy")
        assert row is not None and row["end_reason"] == GATEWAY_RESTARTED


# --- PostgreSQL only --------------------------------------------------------------------------


def test_postgres_schema_version_table(postgres: PostgresServer) -> None:
    url = postgres.fresh_url()
    with CallRecords.open(url) as store:
        assert store.backend == "postgresql"
        assert "***" in store.label and postgres.password not in store.label
    with CallRecords.open(url):  # opening again migrates nothing
        pass
    schema = url.rpartition("search_path%3D")[2]
    with postgres.admin() as conn:
        rows = conn.execute(f"SELECT version FROM {schema}.sipagent_schema").fetchall()
    assert rows == [(SCHEMA_VERSION,)]


def test_postgres_newer_schema_is_refused(postgres: PostgresServer) -> None:
    url = postgres.fresh_url()
    schema = url.rpartition("search_path%3D")[2]
    with postgres.admin() as conn:
        conn.execute(f"CREATE TABLE {schema}.sipagent_schema (version INTEGER NOT NULL)")
        conn.execute(f"INSERT INTO {schema}.sipagent_schema VALUES ({SCHEMA_VERSION + 1})")
    with pytest.raises(RecordsError, match="schema version") as info:
        CallRecords.open(url)
    assert postgres.password not in str(info.value)


def test_postgres_version_1_store_is_migrated(postgres: PostgresServer) -> None:
    url = postgres.fresh_url()
    schema = url.rpartition("search_path%3D")[2]
    with postgres.admin() as conn:
        conn.execute(f"SET search_path = {schema}")
        for statement in statements(MIGRATIONS[0], **POSTGRES_TYPES):
            conn.execute(statement)
        conn.execute("INSERT INTO calls (call_uuid, created_at, updated_at) VALUES ('old', 1, 1)")
        conn.execute("CREATE TABLE sipagent_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO sipagent_schema VALUES (1)")
    with CallRecords.open(url) as records:
        assert records.get("old") is not None
        records.add_turn("old", "sip-old", _turn(1), 2.0)
        assert len(records.turns("old")) == 1
    with postgres.admin() as conn:
        assert conn.execute(f"SELECT version FROM {schema}.sipagent_schema").fetchone() == (
            SCHEMA_VERSION,
        )


def test_postgres_connection_errors_are_one_line_without_the_password(
    postgres: PostgresServer,
) -> None:
    wrong = postgres.url(password="not-the-password")
    with pytest.raises(RecordsError, match="cannot connect") as info:
        CallRecords.open(wrong)
    assert "not-the-password" not in str(info.value) and "\n" not in str(info.value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = f"postgresql://u:hunter2@127.0.0.1:{closed_port}/db"
    with pytest.raises(RecordsError, match="cannot connect") as info:
        CallRecords.open(down)
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(RecordsError, match="invalid URL") as info:
        CallRecords.open(f"{postgres.url()}?bogus=1")
    assert postgres.password not in str(info.value)


def test_postgres_store_reconnects_after_a_server_crash(postgres: PostgresServer) -> None:
    with CallRecords.open(postgres.fresh_url()) as records:
        records.answered(UUID, "+1", "+2", "inbound", "agent", 0, at=1.0)
        postgres.restart()  # immediate shutdown: crash recovery on start
        records.hung_up(UUID, {"HangupCause": "NORMAL_CLEARING"}, at=2.0)
        row = records.get(UUID)
    assert row is not None
    assert row["route"] == "agent" and row["hangup_cause"] == "NORMAL_CLEARING"


# --- settings ---------------------------------------------------------------------------------


def test_records_url_setting_takes_sqlite_and_postgresql_urls() -> None:
    for url in ("sqlite:///a.db", "postgresql://u:p@h:5432/db", "postgres://h/db"):
        assert RecordsSettings(url=url).url == url
    assert RecordsSettings().redact_pii is False
    for bad in ("mysql://u:secret@h/db", "postgresql://", "records.db"):
        with pytest.raises(ConfigError, match=r"records\.url") as info:
            load_settings(env_file=None, overrides={"records": {"url": bad}})
        assert "secret" not in str(info.value)


def test_webhook_nonces_are_remembered_until_they_expire(records: CallRecords, target: str) -> None:
    assert records.claim_nonce("n1", 3600)
    assert not records.claim_nonce("n1", 3600)  # a replay
    with CallRecords.open(target) as other:  # another gateway, or this one restarted
        assert not other.claim_nonce("n1", 3600)
        assert other.claim_nonce("n2", 3600)
    assert records.claim_nonce("n3", -1)  # expired at once
    assert records.claim_nonce("n3", 3600)  # so it counts as new
    with pytest.raises(ValueError):
        records.claim_nonce("", 60)
