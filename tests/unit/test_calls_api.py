"""``POST /calls`` on the answer_url app: auth, validation, DNC / hours / CPS refusals
(recorded), via=sip through a dial function, via=plivo through the plivo SDK pointed at
the loopback `FakePlivoApi` (which then answers the call at the app's /answer, signed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.plivo.callcontext import decode_call_context, record_key
from gateway.policy.outbound import CpsLimiter
from gateway.pool.outcomes import DialOutcome, DialStatus
from gateway.records.store import CallRecords
from sip_config import ConfigError, Route, Settings
from tests.fakes.plivo_api import FakePlivoApi
from tests.helpers.app import TOKEN, FakeClock, make_pool, make_settings, sip_headers_of
from tests.helpers.calls import KEY, FakeDial, client_for, post
from xml_app import create_app, serve_app
from xml_app.calls_api import CallsApi

pytestmark = pytest.mark.timeout(30)

AUTH_ID = "MAFAKEAUTHID00000000"
# MONDAY_15_UTC (the FakeClock's default) is 10:00 in New York, 07:00 in Los Angeles.


def outbound_settings(tmp_path: Path, **values: Any) -> Settings:
    dnc = tmp_path / "dnc.txt"
    dnc.write_text("# opted out\n+1 212 555 0100\n")
    base: dict[str, Any] = {
        "api_key": KEY,
        "dnc_file": str(dnc),
        "zones": {"1212": "America/New_York", "1310": "America/Los_Angeles"},
        "trunk": "trunk.example:5060",
        "headers": {"X-Campaign": "spring"},
    }
    base.update(values)
    return make_settings(outbound=base)


@pytest.fixture
def records(tmp_path: Path) -> Iterator[CallRecords]:
    with CallRecords.open(tmp_path / "records.db") as store:
        yield store


def test_the_api_key_is_required(tmp_path: Path, records: CallRecords) -> None:
    client = client_for(outbound_settings(tmp_path), records, FakeDial())
    assert post(client, {"to": "+12125550111"}, key=None)[0] == 401
    status, body = post(client, {"to": "+12125550111"}, key="wrong")
    assert status == 401 and "API key" in body["error"]
    off = client_for(outbound_settings(tmp_path, api_key=""), records, FakeDial())
    assert post(off, {"to": "+12125550111"}, key="")[0] == 404
    assert records.recent() == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "'to' is required"),
        ({"to": "not a number"}, "'to' is not a phone number"),
        ({"to": "sip:nobody"}, "not a valid sip: URI"),
        ({"to": "+12125550111", "via": "carrier-pigeon"}, "'via' must be"),
        ({"to": "+12125550111", "headers": {"Via": "x"}}, "written by the SIP stack"),
        ({"to": "+12125550111", "headers": {"X-A": "a\r\nB: c"}}, "control characters"),
        ({"to": "+12125550111", "timezone": "Mars/Olympus"}, "'timezone'"),
        ({"to": "+12125550111", "from": "nobody"}, "'from' must be"),
        ({"to": "sip:bob@example.com", "via": "plivo"}, "must be a phone number"),
    ],
)
def test_bad_requests_name_the_field(
    tmp_path: Path, records: CallRecords, body: dict[str, Any], problem: str
) -> None:
    dial = FakeDial()
    status, answer = post(client_for(outbound_settings(tmp_path), records, dial), body)
    assert status == 400 and problem in answer["error"], answer
    assert dial.requests == []


def test_via_sip_dials_the_trunk_with_the_configured_headers(
    tmp_path: Path, records: CallRecords
) -> None:
    dial = FakeDial()
    client = client_for(outbound_settings(tmp_path), records, dial)
    status, body = post(client, {"to": "(212) 555-0111", "headers": {"X-Lead": "42"}})
    assert status == 201, body
    assert body["uri"] == "sip:+12125550111@trunk.example:5060"
    assert body["sip_call_id"] == "sip-call-id-1"
    assert dial.requests == [
        (body["call_id"], body["uri"], {"X-Campaign": "spring", "X-Lead": "42"})
    ]
    record = records.get(body["call_id"])
    assert record is not None
    assert (record["direction"], record["via"], record["to_number"]) == (
        "outbound",
        "sip",
        "+12125550111",
    )
    assert record["outcome"] is None  # the worker reports it later


def test_a_sip_uri_needs_no_trunk_and_a_number_does(tmp_path: Path, records: CallRecords) -> None:
    dial = FakeDial()
    client = client_for(outbound_settings(tmp_path, trunk=None), records, dial)
    status, body = post(client, {"to": "sip:bob@127.0.0.1:5099"})
    assert status == 201 and dial.requests[0][1] == "sip:bob@127.0.0.1:5099"
    status, body = post(client, {"to": "+12125550111"})
    assert status == 400 and "outbound.trunk" in body["error"]


def test_dcs_calls_is_ocs_dcs_url_with_the_same_contract(
    tmp_path: Path, records: CallRecords
) -> None:
    """OCS starts calls through its DCS_URL, ``/dcs/calls``: the key, checks, records and
    answers of ``/calls``."""
    dial = FakeDial()
    client = client_for(outbound_settings(tmp_path), records, dial)
    assert post(client, {"to": "+12125550111"}, key="wrong", path="/dcs/calls")[0] == 401
    status, body = post(client, {"to": "nobody"}, path="/dcs/calls")
    assert status == 400 and "'to'" in body["error"]
    status, body = post(client, {"to": "+12125550100"}, path="/dcs/calls")
    assert status == 403 and "do-not-call" in body["error"]
    status, body = post(
        client, {"to": "(212) 555-0111", "headers": {"X-Lead": "42"}}, path="/dcs/calls"
    )
    assert status == 201, body
    assert body["uri"] == "sip:+12125550111@trunk.example:5060"
    assert body["sip_call_id"] == "sip-call-id-1" and body["via"] == "sip"
    assert dial.requests == [
        (body["call_id"], body["uri"], {"X-Campaign": "spring", "X-Lead": "42"})
    ]
    record = records.get(body["call_id"])
    assert record is not None and record["direction"] == "outbound"
    off = client_for(outbound_settings(tmp_path, api_key=""), records, FakeDial())
    assert post(off, {"to": "+12125550111"}, key="", path="/dcs/calls")[0] == 404


def test_dnc_refusal_is_403_and_recorded(tmp_path: Path, records: CallRecords) -> None:
    dial = FakeDial()
    client = client_for(outbound_settings(tmp_path), records, dial)
    status, body = post(client, {"to": "+12125550100"})
    assert status == 403 and "do-not-call" in body["error"]
    assert dial.requests == []
    record = records.get(body["call_id"])
    assert record is not None
    assert record["outcome"] == "refused" and "do-not-call" in record["refusal"]


def test_calling_hours_in_the_callee_zone(tmp_path: Path, records: CallRecords) -> None:
    dial = FakeDial()
    client = client_for(outbound_settings(tmp_path), records, dial)
    # 10:00 in New York: allowed; 07:00 in Los Angeles: refused.
    assert post(client, {"to": "+12125550111"})[0] == 201
    status, body = post(client, {"to": "+13105550111"})
    assert status == 403
    assert "07:00 in America/Los_Angeles" in body["error"]
    record = records.get(body["call_id"])
    assert record is not None and record["outcome"] == "refused"
    assert "outside calling hours" in record["refusal"]
    # The request's own zone wins over the prefix table.
    assert post(client, {"to": "+13105550111", "timezone": "Europe/Paris"})[0] == 201
    assert len(dial.requests) == 2


def test_cps_queue_full_is_429_and_recorded(tmp_path: Path, records: CallRecords) -> None:
    dial = FakeDial()
    limiter = CpsLimiter(2.0, 1, 0, clock=lambda: 0.0, sleep=lambda s: None)
    client = client_for(outbound_settings(tmp_path), records, dial, limiter=limiter)
    assert post(client, {"to": "+12125550111"})[0] == 201
    status, body = post(client, {"to": "+12125550112"})
    assert status == 429 and "calls-per-second" in body["error"]
    record = records.get(body["call_id"])
    assert record is not None and record["outcome"] == "refused"
    assert len(dial.requests) == 1


def test_dial_failure_is_passed_on_and_recorded(tmp_path: Path, records: CallRecords) -> None:
    dial = FakeDial(DialOutcome(DialStatus.UNAVAILABLE, "no worker can place a call now"))
    client = client_for(outbound_settings(tmp_path), records, dial)
    status, body = post(client, {"to": "+12125550111"})
    assert status == 503 and body["error"] == "no worker can place a call now"
    record = records.get(body["call_id"])
    assert record is not None and record["outcome"] == "failed"
    assert record["end_reason"] == "no worker can place a call now"
    dial.result = DialOutcome(DialStatus.BAD_TARGET, "cannot call sip:x@y: bad URI")
    status, body = post(client, {"to": "sip:x@y"})
    assert (status, body["error"], body["outcome"]) == (400, dial.result.reason, "failed")


def test_a_malformed_dnc_file_is_a_config_error(tmp_path: Path, records: CallRecords) -> None:
    settings = outbound_settings(tmp_path)
    assert settings.outbound.dnc_file is not None
    settings.outbound.dnc_file.write_text("+12125550100\nnope\n")
    with pytest.raises(ConfigError, match=r"outbound\.dnc_file: .*line 2"):
        create_app(settings, make_pool(FakeClock()), records)


def _post_http(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Authorization": f"Bearer {KEY}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def test_via_plivo_uses_the_call_api_and_the_answer_reaches_a_worker(
    tmp_path: Path, records: CallRecords
) -> None:
    """REST + app level: the SDK's request reaches the fake, whose signed /answer gets
    Dial XML to a worker (the SIP leg Plivo would then place is not emulated here)."""
    with FakePlivoApi(AUTH_ID, TOKEN) as api:
        settings = outbound_settings(
            tmp_path, plivo_auth_id=AUTH_ID, plivo_api_url=api.url, caller_id="+14155550100"
        )
        # A routing rule for the callee's number applies to calls *from* it, not to ours.
        settings.routing.numbers["12125550111"] = Route(target="+14155550999")
        clock = FakeClock()
        app = create_app(settings, make_pool(clock), records, clock=clock)
        server = serve_app(app, "127.0.0.1", 0)
        try:
            status, body = _post_http(
                f"{server.url}/calls",
                {"to": "+12125550111", "via": "plivo", "headers": {"X-Ticket": "T-42"}},
            )
            assert status == 201, body
            assert len(api.calls) == 1
            call = api.calls[0]
            assert body["request_uuid"] == call["request_uuid"]
            assert (call["from"], call["to"]) == ("+14155550100", "+12125550111")
            call_id = body["call_id"]
            assert call["answer_url"] == f"{server.url}/answer?outbound_id={call_id}"
            assert call["hangup_url"] == f"{server.url}/hangup?outbound_id={call_id}"
            record = records.get(call_id)
            assert record is not None and record["via"] == "plivo"

            plivo_uuid = str(uuid.uuid4())
            status, xml = api.answer(call, plivo_uuid)
            assert status == 200, xml
            dial = ET.fromstring(xml).find("./Dial")
            assert dial is not None
            user = dial.find("User")
            assert user is not None and user.text is not None
            assert user.text.startswith("sip:agent@127.0.0.1:")
            # The worker gets Plivo's CallUUID (what a REST transfer and the brain need:
            # Plivo's Transfer API takes the call_uuid Plivo gave the call) and records
            # the call under our id (X-PH-Recordid), so one record.
            context = decode_call_context(sip_headers_of(ET.fromstring(xml)))
            assert (context["call_uuid"], context["record_id"]) == (plivo_uuid, call_id)
            # The request's headers travel as Plivo carries them (sip_headers, then X-PH-
            # parameters of the answer_url) to the worker.
            assert call["sip_headers"] == "Campaign=spring,Ticket=x542d3432", call
            assert (context["campaign"], context["ticket"]) == ("spring", "x542d3432"), context
            assert record_key(context) == call_id
            assert f"outbound_id={call_id}" in dial.get("action", "")
            assert api.hang_up(call, plivo_uuid, "completed")[0] == 200
            record = records.get(call_id)
            assert record is not None
            assert (record["outcome"], record["route"], record["plivo_call_uuid"]) == (
                "answered",
                "agent",
                plivo_uuid,
            )
            assert record["hangup_cause"] == "NORMAL_CLEARING"
            assert records.get(plivo_uuid) is None

            # Unanswered: Plivo's hangup callback says busy.
            status, body = _post_http(f"{server.url}/calls", {"to": "+12125550112", "via": "plivo"})
            assert status == 201, body
            assert api.hang_up(api.calls[1], str(uuid.uuid4()), "busy")[0] == 200
            record = records.get(body["call_id"])
            assert record is not None and record["outcome"] == "busy"
        finally:
            server.close()


def test_via_plivo_refused_by_plivo_is_502(tmp_path: Path, records: CallRecords) -> None:
    with FakePlivoApi(AUTH_ID, "another-token") as api:
        settings = outbound_settings(
            tmp_path, plivo_auth_id=AUTH_ID, plivo_api_url=api.url, caller_id="+14155550100"
        )
        client = client_for(settings, records, FakeDial())
        # client_for's CallsApi builds the real SDK client (no plivo_factory given).
        status, body = post(client, {"to": "+12125550111", "via": "plivo"})
        assert status == 502 and "authentication failed" in body["error"]
        assert api.calls == []
        record = records.get(body["call_id"])
        assert record is not None and record["outcome"] == "failed"


def test_sipagent_dial_posts_to_the_app(
    tmp_path: Path, records: CallRecords, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    dial = FakeDial()
    settings = outbound_settings(tmp_path)
    clock = FakeClock()

    def calls_api(s: Settings, base_url: Any) -> CallsApi:
        return CallsApi(s, records, dial, base_url, clock=clock)

    app = create_app(settings, make_pool(clock), records, clock=clock, calls_api=calls_api)
    server = serve_app(app, "127.0.0.1", 0)
    config = tmp_path / "dial.toml"
    config.write_text(f'[outbound]\napi_key = "{KEY}"\napp_url = "{server.url}"\n')
    try:
        code = main(["dial", "+12125550111", "--config", str(config), "--header", "X-Lead:7"])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "placed via sip" in out.out
        assert dial.requests[0][1:] == (
            "sip:+12125550111@trunk.example:5060",
            {"X-Campaign": "spring", "X-Lead": "7"},
        )
        # Refused (do-not-call): exit 1 with the reason.
        code = main(["dial", "+12125550100", "--config", str(config)])
        out = capsys.readouterr()
        assert code == 1 and "refused (403)" in out.err and "do-not-call" in out.err
        assert len(dial.requests) == 1
    finally:
        server.close()
    # Nothing listening any more: exit 3, saying where it tried.
    code = main(["dial", "+12125550111", "--config", str(config), "--timeout", "2"])
    assert code == 3 and "cannot reach the app" in capsys.readouterr().err
