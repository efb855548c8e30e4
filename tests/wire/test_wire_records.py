"""End to end: `sipagent serve` storing a call's turns in a real PostgreSQL with
``records.redact_pii`` on, and `sipagent calls show` reading them back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.records.store import CallRecords
from sip_config import bundled_playbook_path
from tests.helpers.postgres import PostgresServer
from tests.helpers.wire import answer, clean_env, finish_call, running_pool, start_call, wait_for

pytestmark = [pytest.mark.wire, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
GREETING = (
    "Hello! Write to help at maplebakery dot com,"
    " or call four one five five five five zero one zero zero."
)
REDACTED = "Hello! Write to [email], or call [phone]."


def test_serve_stores_redacted_turns_in_postgres(tmp_path: Path, postgres: PostgresServer) -> None:
    demo = bundled_playbook_path()
    playbook = tmp_path / "playbook.toml"
    lines = demo.read_text().splitlines()
    playbook.write_text(
        "\n".join(f"greeting = {GREETING!r}" if ln.startswith("greeting =") else ln for ln in lines)
    )
    url = postgres.fresh_url()
    with running_pool(
        tmp_path, 1, records__url=url, records__redact_pii="true", playbook=str(playbook)
    ) as pool:
        call_uuid, uri, headers = answer(pool, "+14155551234")
        report = finish_call(start_call(uri, "--hold", "2", *headers), timeout=120)
        assert report["returncode"] == 0, report["stderr"][-2000:]
        wait_for(lambda: any(" TURN {" in line for line in pool.lines), 30, "TURN line")
    turn_lines = [line for line in pool.lines if " TURN {" in line]
    assert turn_lines and all("four one five" not in line for line in turn_lines), turn_lines
    assert any(REDACTED in line for line in turn_lines), turn_lines
    with CallRecords.open(url) as records:
        row = records.get(call_uuid)
        assert row is not None and row["route"] == "agent" and row["end_at"] is not None, row
        turns = records.turns(call_uuid)
    assert turns[0]["kind"] == "greeting" and turns[0]["agent_text"] == REDACTED, turns
    assert turns[0]["total_ms"] is not None
    shown = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "calls", "show", call_uuid[:8]],
        cwd=tmp_path,
        env=clean_env(SIPAGENT_RECORDS__URL=url, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"      agent:  {REDACTED}" in shown.stdout.splitlines(), shown.stdout
