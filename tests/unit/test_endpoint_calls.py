"""Calls a worker places through its registered Plivo endpoint (register mode, no trunk).

The worker sends the INVITE for ``sip:<number>@phone.plivo.com`` to Plivo as the endpoint;
Plivo then runs the application attached to the endpoint — this app's ``/answer`` — the
same way it does for an incoming call (Plivo's Application docs: "On receiving an incoming
call on a number or an endpoint attached to an Application, Plivo sends a request to the
answer_url"), forwarding only the ``X-PH-*`` headers of the INVITE as parameters
(voice/use-cases/pass-custom-headers). The app must dial the number, not a worker.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from gateway.plivo.callcontext import decode_call_context
from gateway.records.store import CallRecords
from tests.fakes.plivo import endpoint_params
from tests.helpers.app import BASE, Env, make_settings, reserved
from tests.helpers.calls import KEY, FakeDial, client_for, post

ACCOUNTS = {"accounts": [{"username": "agent1", "password": "secret123"}]}


def endpoint_settings(tmp_path: Path, **outbound: Any) -> Any:
    dnc = tmp_path / "dnc.txt"
    dnc.write_text("")
    return make_settings(
        sip={"mode": "register"},
        registration=ACCOUNTS,
        outbound={
            "api_key": KEY,
            "dnc_file": str(dnc),
            "caller_id": "+14155550100",
            "headers": {"X-Campaign": "spring"},
            **outbound,
        },
    )


def test_a_number_called_through_the_endpoint_carries_plivos_headers(tmp_path: Path) -> None:
    records = CallRecords.open(tmp_path / "records.db")
    dial = FakeDial()
    client = client_for(endpoint_settings(tmp_path), records, dial)
    status, body = post(
        client, {"to": "+12125550111", "headers": {"X-Ticket": "T-42", "X-PH-Tier": "gold"}}
    )
    assert status == 201, body
    ((call_id, uri, headers),) = dial.requests
    assert uri == "sip:+12125550111@phone.plivo.com"
    # Plivo forwards only X-PH- headers, letters and digits: each one is put in that form.
    assert headers["X-PH-Campaign"] == "spring" and headers["X-PH-Tier"] == "gold"
    assert decode_call_context({"X-PH-Ticket": headers["X-PH-Ticket"]}) == {"ticket": "x542d3432"}
    assert set(headers) == {
        "X-PH-Campaign",
        "X-PH-Ticket",
        "X-PH-Tier",
        "X-PH-Recordid",
        "X-PH-Callerid",
    }
    context = decode_call_context(headers)
    assert context["record_id"] == call_id and context["callerid"] == "p14155550100"
    records.close()


def test_the_endpoints_own_call_is_dialled_to_the_number_not_to_a_worker(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path, endpoint_settings(tmp_path))
    try:
        ours = str(uuid.uuid4())
        # What POST /calls recorded before the worker sent the INVITE.
        env.records.outbound_requested(ours, "+14155550177", "+12125550111", "sip", env.clock())
        # What Plivo sends when the endpoint's INVITE arrives (tests/fakes/plivo.py).
        params = endpoint_params(
            "agent1",
            "+12125550111",
            headers={
                "Recordid": ours.replace("-", ""),
                "Callerid": "p14155550177",
                "Campaign": "spring",
            },
        )
        root = ET.fromstring(env.answer(**params).get_data())
        dial = root.find("Dial")
        assert dial is not None and [c.tag for c in dial] == ["Number"], ET.tostring(root)
        assert dial[0].text == "+12125550111"
        assert dial.get("callerId") == "+14155550177"
        assert dial.get("action") == f"{BASE}/dial-status?target=number&outbound_id={ours}"
        assert dial.get("sipHeaders") == "Campaign=spring"
        assert reserved(env.pool) == 0  # no worker slot taken: no loop back to the pool
        # Without the caller ID header the configured one is shown.
        bare = ET.fromstring(
            env.answer(From="agent1", To="+12125550111", **{"X-PH-Recordid": ours}).get_data()
        )
        assert bare.find("Dial").get("callerId") == "+14155550100"  # type: ignore[union-attr]
        # Another endpoint's call is an ordinary inbound call: routed to a worker.
        other = ET.fromstring(env.answer(From="sip:bob@phone.plivo.com").get_data())
        assert other.find("Dial/User") is not None
    finally:
        env.records.close()


def test_a_caller_who_only_claims_to_be_our_endpoint_is_not_dialled_out(tmp_path: Path) -> None:
    # Anyone can put "agent1" in From (a SIP caller of the application's public URI): only
    # the id of a live outbound call of ours makes the app dial a number for a call.
    env = Env(tmp_path, endpoint_settings(tmp_path))
    try:
        ended = str(uuid.uuid4())
        env.records.outbound_requested(ended, None, "+19005550111", "sip", env.clock())
        env.records.outbound_failed(ended, "busy", env.clock())
        for recordid in ("", str(uuid.uuid4()), ended):
            params = {"From": "sip:agent1@phone.plivo.com", "To": "+19005550111"}
            if recordid:
                params["X-PH-Recordid"] = recordid.replace("-", "")
            root = ET.fromstring(env.answer(**params).get_data())
            assert root.find("Dial/Number") is None, ET.tostring(root)
            assert root.find("Dial/User") is not None  # the agent takes it, as any caller
    finally:
        env.records.close()
