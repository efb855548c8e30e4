"""`sipagent calls list|show` run as a subprocess against stores (SQLite and a real
PostgreSQL) filled through the CallRecords API, configured like `sipagent serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.records.model import sip_key
from gateway.records.store import CallRecords
from tests.helpers.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
UUID = "3f2a9c1e-7b4d-4e8a-9f01-23456789abcd"
UUID2 = "3f2a0000-1111-4222-8333-444444444444"
T0 = 1_736_935_200.0  # 2025-01-15 10:00:00 UTC


def _fill(records: CallRecords) -> None:
    records.answered(UUID, "+14155550100", "+14155550199", "inbound", "agent", 1, T0)
    records.sip_started(UUID, "cid-1@10.0.0.5", 1, "sip:+14155550100@plivo", "sip:a@w1", T0 + 1)
    records.add_turn(
        UUID,
        "cid-1@10.0.0.5",
        {"turn": 1, "kind": "greeting", "agent_text": "Hello, how can I help?", "total_ms": 120},
        T0 + 1.5,
    )
    records.add_turn(
        UUID,
        "cid-1@10.0.0.5",
        {
            "turn": 2,
            "kind": "goodbye",
            "user_text": "what are your hours",
            "agent_text": "Nine to five. Goodbye!",
            "intent": "hours",
            "actions": ["hangup"],
            "eot_wait_ms": 400.0,
            "stt_ms": 12.0,
            "brain_ms": 150.0,
            "tts_first_ms": 80.0,
            "playout_ms": 9.0,
            "total_ms": 651.0,
            "barge_in": True,
        },
        T0 + 9.0,
    )
    records.sip_ended(None, "cid-1@10.0.0.5", 1, "local hangup", T0 + 12)
    records.hung_up(UUID, {"HangupCause": "NORMAL_CLEARING", "Duration": "75"}, T0 + 12.5)
    records.answered(UUID2, "+15550001111", "+14155550199", "inbound", "fallback", None, T0 + 60)
    records.sip_started(None, "softphone-7", 0, "sip:dev@lan", "sip:agent@lan", T0 + 120)


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A TOML config whose records.url names a store filled by `_fill`."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'calls.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.fresh_url()
    with CallRecords.open(url) as records:
        _fill(records)
    path = tmp_path / "sipagent.toml"
    path.write_text(f"[records]\nurl = {json.dumps(url)}\n")
    return path


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIPAGENT_")}
    env["TZ"] = "UTC"
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "calls", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_prints_recent_calls_newest_first(config: Path, tmp_path: Path) -> None:
    out = _run(tmp_path, "list", "--config", str(config))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == [
        "START", "CALL", "FROM", "TO", "DURATION", "HANGUP", "WORKER", "TURNS",
    ]  # fmt: skip
    assert len(lines) == 4
    assert lines[1].split() == [
        "2025-01-15", "10:02:00", sip_key("softphone-7"), "sip:dev@lan", "sip:agent@lan",
        "-", "-", "0", "0",
    ]  # fmt: skip
    assert lines[2].split()[3:] == ["+15550001111", "+14155550199", "-", "-", "-", "0"]
    assert lines[3].split() == [
        "2025-01-15", "10:00:00", UUID, "+14155550100", "+14155550199", "1m15s",
        "NORMAL_CLEARING", "1", "2",
    ]  # fmt: skip
    limited = _run(tmp_path, "list", "--config", str(config), "--limit", "1")
    assert limited.returncode == 0, limited.stderr
    assert [line.split() for line in limited.stdout.splitlines()[1:]] == [lines[1].split()]


def test_list_json(config: Path, tmp_path: Path) -> None:
    out = _run(tmp_path, "list", "--config", str(config), "--json", "--limit", "2")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["call_uuid"] for r in rows] == [sip_key("softphone-7"), UUID2]
    assert rows[1]["route"] == "fallback" and rows[1]["turn_count"] == 0


def test_show_prints_the_call_and_its_transcript(config: Path, tmp_path: Path) -> None:
    for call_id in (UUID, "cid-1"):  # exact and prefix lookups: test_records.py
        out = _run(tmp_path, "show", call_id, "--config", str(config))
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        for expected in (
            f"CallUUID:           {UUID}",
            "SIP Call-ID:        cid-1@10.0.0.5",
            "From:               +14155550100",
            "Answered:           2025-01-15 10:00:00",
            "Duration:           1m15s",
            "Hang-up cause:      NORMAL_CLEARING",
            "End reason:         local hangup",
            "Transcript (2 turns):",
            "  #1 greeting  2025-01-15 10:00:01 (+1.5s)",
            "      agent:  Hello, how can I help?",
            "      latency: 120 ms",
            "  #2 goodbye  2025-01-15 10:00:09 (+9.0s)  [barge-in]",
            "      caller: what are your hours",
            "      agent:  Nine to five. Goodbye!",
            "      intent hours; actions hangup",
            "      latency: 651 ms (eot 400, stt 12, brain 150, tts 80, playout 9)",
        ):
            assert expected in lines, expected
        assert "Dial status" not in out.stdout  # unset fields are left out


def test_show_json_and_a_sip_only_call(config: Path, tmp_path: Path) -> None:
    out = _run(tmp_path, "show", "softphone-7", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["call"]["call_uuid"] == sip_key("softphone-7") and data["turns"] == []
    out = _run(tmp_path, "show", UUID, "--config", str(config), "--json")
    turns = json.loads(out.stdout)["turns"]
    assert [t["turn"] for t in turns] == [1, 2] and turns[1]["brain_ms"] == 150.0


def test_show_unknown_and_ambiguous_ids_exit_1(config: Path, tmp_path: Path) -> None:
    out = _run(tmp_path, "show", "nope", "--config", str(config))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == "sipagent: no call 'nope' in the call records"
    out = _run(tmp_path, "show", "3f2a", "--config", str(config))
    assert out.returncode == 1
    assert "matches 2 calls" in out.stderr and UUID in out.stderr and UUID2 in out.stderr


def test_missing_store_and_bad_config(tmp_path: Path) -> None:
    out = _run(tmp_path, "list")  # default records.url: sipagent-records.db in the cwd
    assert out.returncode == 1
    assert out.stderr.strip() == ("sipagent: call records: no call records at sipagent-records.db")
    assert not (tmp_path / "sipagent-records.db").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('[records]\nurl = "mysql://u:secret@h/db"\n')
    out = _run(tmp_path, "list", "--config", str(bad))
    assert out.returncode == 2 and "records.url" in out.stderr and "secret" not in out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "pg.toml"
    cfg.write_text(f'[records]\nurl = "postgresql://u:hunter2@127.0.0.1:{port}/db"\n')
    out = _run(tmp_path, "list", "--config", str(cfg))
    assert out.returncode == 1
    assert out.stderr.startswith("sipagent: call records: cannot connect to postgresql://u:***@")
    assert out.stderr.count("\n") == 1 and "hunter2" not in out.stderr


def test_serve_with_an_unreachable_postgres_is_a_one_line_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "pg.toml"
    cfg.write_text(f'[records]\nurl = "postgresql://u:hunter2@127.0.0.1:{port}/db"\n')
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIPAGENT_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[0].startswith(
        "sipagent: configuration error: records.url: cannot connect to postgresql://u:***@"
    ), out.stderr
    assert "hunter2" not in out.stderr and "Traceback" not in out.stderr
