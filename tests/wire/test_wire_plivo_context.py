"""What Plivo tells the answer_url reaches the agent on the wire.

Plivo sends the answer_url the caller's custom SIP headers as ``X-PH-*`` parameters, the
dialled SIP To header as ``SIP-H-To`` (docs.plivo.com, voice/use-cases/pass-custom-headers)
and the caller's name (``CallerName``); the app's Dial ``sipHeaders`` carry them to the
worker, where Plivo puts each pair on the INVITE as ``X-PH-<key>`` (voice/xml/dial/user).
The softphone plays Plivo's leg here: it sends the INVITE with those headers.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.plivo.callcontext import decode_call_context
from tests.fakes.plivo import PlivoEmulator, inbound_params
from tests.helpers.wire import POOL_TOKEN, place_call, running_pool, wait_for

pytestmark = [pytest.mark.wire, pytest.mark.timeout(240)]


def record(pool_tmp: Path, call_uuid: str) -> dict[str, Any] | None:
    with sqlite3.connect(pool_tmp / "records.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM calls WHERE call_uuid = ?", (call_uuid,)).fetchone()
        return dict(row) if row is not None else None


def test_a_withheld_caller_and_its_headers_reach_the_agent_and_the_record(tmp_path: Path) -> None:
    with running_pool(
        tmp_path,
        1,
        pool__spare="false",
        providers__stt="fake",
        providers__tts="fake",
        providers__brain="fake",
    ) as pool:
        assert pool.app_url is not None
        call_uuid = str(uuid.uuid4())
        params = inbound_params(
            "",  # withheld: Plivo must still get XML, not an HTTP 400
            "sip:7f3a2b@app.plivo.com",
            call_uuid=call_uuid,
            sip_h_to="<sip:+14155550100@app.plivo.com>;tag=a1",
            caller_name="Ana",
            headers={"Customerid": "A1234"},
        )
        leg = PlivoEmulator(pool.app_url, POOL_TOKEN).dial(params)
        report = place_call(leg.uri, *leg.softphone(), "--timeout", "20")
        assert report["answered"] and report["greeting_ms"] is not None, report
        wait_for(lambda: (record(tmp_path, call_uuid) or {}).get("end_at") is not None, 20, "end")
    row = record(tmp_path, call_uuid)
    assert row is not None
    assert row["from_number"] == "anonymous", row
    assert row["to_number"] == "sip:+14155550100@app.plivo.com", row
    sent = json.loads(row["sip_headers"])
    context = decode_call_context(sent)
    assert context["customerid"] == "A1234" and context["caller_name"] == "Ana", sent
    assert context["call_uuid"] == call_uuid and context["from"] == "anonymous", sent
