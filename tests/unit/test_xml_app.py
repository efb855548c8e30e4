"""Tests for the answer_url app (xml_app): signatures, routing, callbacks, health, server."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.plivo.callcontext import decode_call_context
from gateway.plivo.signature import (
    MAIN_SIGNATURE_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    NonceCache,
    SignatureVerifier,
    expected_signature,
)
from gateway.pool.outcomes import PushOutcome, PushStatus
from gateway.pool.state import DialTarget, PoolState, WorkerKind
from gateway.records.store import CallRecords
from sip_config import ConfigError
from tests.helpers.app import (
    APP_LOGGER,
    BASE,
    CALLED,
    CALLER,
    MONDAY_15_UTC,
    TOKEN,
    Env,
    FakeClock,
    Plivo,
    make_pool,
    make_settings,
    new_uuid,
    parse,
    plivo_signature,
    reserved,
    shape,
    sip_headers_of,
)
from xml_app import create_app, serve_app


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, make_settings())
    yield e
    e.records.close()


# --- signatures -------------------------------------------------------------------------


def test_signed_request_passes(env: Env) -> None:
    root = parse(env.answer())
    assert shape(root) == ["Dial/User"]


def test_missing_signature_is_rejected_as_unsigned(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=APP_LOGGER)
    body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
    r = env.plivo.client.post("/answer", data=body)
    assert r.status_code == 403
    only_nonce = env.plivo.client.post("/answer", data=body, headers={NONCE_HEADER: "n"})
    assert only_nonce.status_code == 403
    lines = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(lines) == 2
    assert all("unsigned" in line and "/answer" in line and "127.0.0.1" in line for line in lines)
    assert reserved(env.pool) == 0


def test_wrong_token_is_rejected_as_forged(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=APP_LOGGER)
    env.plivo.token = "some-other-token"
    r = env.answer()
    assert r.status_code == 403
    (line,) = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert "forged" in line and "/answer" in line
    assert TOKEN not in line and "some-other-token" not in line


def test_altered_parameter_is_rejected_as_forged(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=APP_LOGGER)
    body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
    headers = env.plivo.headers("POST", "/answer", body)
    r = env.plivo.post("/answer", {**body, "To": "+19995550000"}, headers=headers)
    assert r.status_code == 403
    (line,) = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert "forged" in line
    assert headers[SIGNATURE_HEADER] not in line


MAIN_TOKEN = "ZmFrZS1tYWluLWFjY291bnQtdG9rZW4tMDAwMDAw"


def test_a_subaccount_app_takes_the_main_accounts_signature(tmp_path: Path) -> None:
    # Plivo signs every request twice: X-Plivo-Signature-V3 with the (sub)account's token
    # and X-Plivo-Signature-Ma-V3 with the main account's ("Validate requests" page).
    body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}

    def post(env: Env, nonce: str, v3: str | None, ma: str | None) -> int:
        headers = {NONCE_HEADER: nonce}
        for name, token in ((SIGNATURE_HEADER, v3), (MAIN_SIGNATURE_HEADER, ma)):
            if token is not None:
                headers[name] = plivo_signature("POST", BASE + "/answer", body, nonce, token)
        return env.plivo.post("/answer", body, headers=headers).status_code

    with_main = Env(tmp_path, make_settings(app={"main_auth_token": MAIN_TOKEN}))
    without = Env(tmp_path / "2", make_settings())
    main_only = Env(tmp_path / "3", make_settings(app={"auth_token": MAIN_TOKEN}))
    try:
        assert post(with_main, "n1", None, MAIN_TOKEN) == 200
        assert post(with_main, "n2", "wrong-token", MAIN_TOKEN) == 200  # one valid is enough
        assert post(with_main, "n3", None, "wrong-token") == 403
        assert post(with_main, "n1", None, MAIN_TOKEN) == 403  # its nonce was used
        assert post(without, "n4", None, MAIN_TOKEN) == 403  # the main token is not known
        assert post(main_only, "n5", "sub-token-we-lack", MAIN_TOKEN) == 200
    finally:
        for env in (with_main, without, main_only):
            env.records.close()


def test_a_replay_is_refused_after_a_restart_and_by_another_gateway(tmp_path: Path) -> None:
    # Nonces live in the records store: a new app on the same store (a restart, or a second
    # gateway sharing PostgreSQL) refuses a request it has never seen but the store has.
    first = Env(tmp_path, make_settings())
    body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
    headers = first.plivo.headers("POST", "/answer", body)
    assert first.plivo.post("/answer", body, headers=headers).status_code == 200
    first.records.close()
    second = Env(tmp_path, make_settings())
    second.plivo.nonces = 1000  # its own nonces differ from the first app's
    try:
        assert second.plivo.post("/answer", body, headers=headers).status_code == 403
        assert second.plivo.post("/answer", body).status_code == 200  # a fresh nonce
    finally:
        second.records.close()


def test_replayed_nonce_is_rejected(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=APP_LOGGER)
    body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
    headers = env.plivo.headers("POST", "/answer", body)
    assert env.plivo.post("/answer", body, headers=headers).status_code == 200
    assert env.plivo.post("/answer", body, headers=headers).status_code == 403
    (line,) = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert "replayed" in line


def test_failed_check_does_not_burn_the_nonce(env: Env) -> None:
    body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
    headers = env.plivo.headers("POST", "/answer", body)
    forged = {**headers, SIGNATURE_HEADER: "AAAA" + headers[SIGNATURE_HEADER][4:]}
    assert env.plivo.post("/answer", body, headers=forged).status_code == 403
    assert env.plivo.post("/answer", body, headers=headers).status_code == 200


def test_one_valid_signature_among_several_passes(env: Env) -> None:
    body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
    headers = env.plivo.headers("POST", "/answer", body)
    bogus = "bm90IGEgcmVhbCBzaWduYXR1cmUgYXQgYWxsIGhlcmU="
    headers[SIGNATURE_HEADER] = f"{bogus}, {headers[SIGNATURE_HEADER]},{bogus}"
    assert env.plivo.post("/answer", body, headers=headers).status_code == 200


def test_signed_get_with_query(env: Env) -> None:
    params = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED, "Direction": "inbound"}
    assert shape(parse(env.plivo.get("/answer", params))) == ["Dial/User"]
    # The signature covers the query: change a parameter and it no longer matches.
    full = f"/answer?{urllib.parse.urlencode(params)}"
    headers = env.plivo.headers("GET", full, {})
    tampered = full.replace("inbound", "outbound")
    assert env.plivo.client.get(tampered, headers=headers).status_code == 403


def test_public_url_is_what_is_signed(tmp_path: Path) -> None:
    public = "https://bot.example.com/plivo"
    e = Env(tmp_path, make_settings(app={"public_url": public + "/"}))
    try:
        e.plivo.public = public
        root = parse(e.answer())
        assert root[0].get("action") == public + "/dial-status?target=agent"
        # Signed over the internal URL the request arrived at: not what Plivo signs.
        e.plivo.public = BASE
        assert e.answer().status_code == 403
    finally:
        e.records.close()


def test_forged_malformed_request_is_403_not_400(env: Env) -> None:
    body = {"CallUUID": "nonsense", "From": CALLER}
    assert env.plivo.client.post("/answer", data=body).status_code == 403
    env.plivo.token = "wrong"
    assert env.plivo.post("/hangup", body).status_code == 403


def test_every_plivo_route_is_signed(env: Env) -> None:
    body = {"CallUUID": new_uuid(), "DialStatus": "busy", "HangupCause": "NORMAL_CLEARING"}
    for path in ("/dial-status?target=agent", "/hangup"):
        assert env.plivo.client.post(path, data=body).status_code == 403
        assert env.plivo.post(path, body).status_code == 200


def test_verification_needs_a_token(tmp_path: Path) -> None:
    settings = make_settings(app={"auth_token": ""})
    with CallRecords.open(tmp_path / "r.db") as records:
        with pytest.raises(ConfigError) as info:
            create_app(settings, make_pool(FakeClock()), records)
        assert "app.auth_token" in str(info.value) and "app.verify_signatures" in str(info.value)
        off = make_settings(app={"auth_token": "", "verify_signatures": False})
        app = create_app(off, make_pool(FakeClock()), records)
        body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
        assert app.test_client().post("/answer", data=body).status_code == 200


def test_a_signature_over_any_of_several_url_forms_is_taken() -> None:
    # A stream's upgrade: which form of its URL Plivo signs is not documented.
    forms = ["wss://bot.example.com/stream", "https://bot.example.com/stream"]
    verifier = SignatureVerifier(TOKEN, nonce_ttl_s=60)
    signed = expected_signature(TOKEN, "GET", forms[1], {}, "n1").decode()
    assert verifier.check("GET", forms, {}, signed, "n1") == "ok"
    assert verifier.check("GET", forms, {}, signed, "n1") == "replayed"
    other = expected_signature(TOKEN, "GET", forms[1], {}, "n2").decode()
    assert verifier.check("GET", forms[:1], {}, other, "n2") == "forged"  # not its form


def test_nonce_cache_expires_and_is_bounded() -> None:
    clock = FakeClock(1000.0)
    cache = NonceCache(60.0, clock=clock, max_entries=3)
    assert cache.add_if_new("a")
    assert not cache.add_if_new("a")
    clock.now += 59.9
    assert not cache.add_if_new("a")
    clock.now += 0.2
    assert cache.add_if_new("a")  # expired: remembered afresh
    for nonce in ("b", "c", "d"):
        assert cache.add_if_new(nonce)
    assert len(cache) == 3  # "a", the oldest, made room


# --- routing ----------------------------------------------------------------------------


def test_default_route_dials_a_worker_with_the_call_context(env: Env) -> None:
    call_uuid = new_uuid()
    root = parse(env.answer(call_uuid))
    assert shape(root) == ["Dial/User"]
    dial = root[0]
    assert dial.get("action") == BASE + "/dial-status?target=agent"
    assert dial.get("method") == "POST"
    assert dial.get("timeout") == "20"
    assert dial.get("callerId") == CALLER
    user = dial[0].text or ""
    assert user in {f"sip:agent@127.0.0.1:{5070 + i}" for i in range(3)}
    invite = sip_headers_of(root)
    assert decode_call_context(invite) == {"call_uuid": call_uuid, "from": CALLER, "to": CALLED}
    assert reserved(env.pool) == 1
    row = env.records.get(call_uuid)
    assert row is not None
    assert (row["route"], row["from_number"], row["direction"]) == ("agent", CALLER, "inbound")
    assert row["worker"] == int(user.rsplit(":", 1)[1]) - 5070


def test_the_dial_to_a_worker_carries_the_inbound_credentials(tmp_path: Path) -> None:
    """With sip.inbound_auth the workers challenge every call: the Dial gives Plivo the
    credentials as <User sipAuthUsername sipAuthPassword> (Plivo's Dial XML, User element;
    https://plivo.com/docs/voice/concepts/sip-authentication); other Dials do not."""
    auth = {"inbound_auth": {"username": "plivo", "password": "s3cret&pass<42"}}
    numbers = {"+1999": {"target": "+18885550100"}}
    e = Env(tmp_path, make_settings(sip=auth, routing={"numbers": numbers}))
    try:
        user = parse(e.answer())[0][0]
        assert user.tag == "User"
        assert (user.get("sipAuthUsername"), user.get("sipAuthPassword")) == (
            "plivo",
            "s3cret&pass<42",
        )
        number = parse(e.answer(To="+1999"))[0][0]
        assert number.tag == "Number" and number.get("sipAuthUsername") is None
    finally:
        e.records.close()
    e = Env(tmp_path / "2", make_settings())
    try:
        assert parse(e.answer())[0][0].get("sipAuthUsername") is None
    finally:
        e.records.close()


def test_configured_caller_id_and_sip_caller(tmp_path: Path) -> None:
    e = Env(tmp_path, make_settings(app={"caller_id": "+18005550123", "dial_timeout_s": 30}))
    try:
        dial = parse(e.answer())[0]
        assert (dial.get("callerId"), dial.get("timeout")) == ("+18005550123", "30")
    finally:
        e.records.close()
    e = Env(tmp_path / "2", make_settings())
    try:
        # A SIP-endpoint caller has no number to show: no callerId, but it is in sipHeaders.
        dial = parse(e.answer(From="sip:alice@phone.plivo.com"))[0]
        assert dial.get("callerId") is None
        assert "From=x" in (dial.get("sipHeaders") or "")
    finally:
        e.records.close()


def test_per_number_routes_to_sip_uri_and_to_phone_number(tmp_path: Path) -> None:
    numbers = {
        "+14155550199": {"target": "sip:desk@pbx.example.com"},
        "442071234567": {"target": "+442079460000"},
    }
    e = Env(tmp_path, make_settings(routing={"numbers": numbers}))
    try:
        for to in ("+14155550199", "14155550199", "sip:+14155550199@phone.plivo.com"):
            call_uuid = new_uuid()
            root = parse(e.answer(call_uuid, To=to))
            assert shape(root) == ["Dial/User"]
            assert root[0][0].text == "sip:desk@pbx.example.com"
            assert root[0].get("action") == BASE + "/dial-status?target=sip"
            assert root[0].get("sipHeaders") is None
            row = e.records.get(call_uuid)
            assert row is not None and row["route"] == "sip" and row["worker"] is None
        call_uuid = new_uuid()
        root = parse(e.answer(call_uuid, To="+442071234567"))
        assert shape(root) == ["Dial/Number"]
        assert root[0][0].text == "+442079460000"
        row = e.records.get(call_uuid)
        assert row is not None and row["route"] == "number"
        assert reserved(e.pool) == 0
        # Unlisted numbers take the default route (the agent pool).
        assert shape(parse(e.answer(To="+15550001111"))) == ["Dial/User"]
    finally:
        e.records.close()


def test_business_hours_across_time_zones(tmp_path: Path) -> None:
    numbers = {
        "15550000001": {
            "hours": {"timezone": "America/New_York", "open": "09:00", "close": "17:00"},
            "after_hours_target": "hangup",
            "after_hours_say": "We are closed.",
        },
        "15550000002": {
            "hours": {"timezone": "Asia/Tokyo", "days": ["mon", "tue"], "open": "08:00"},
            "after_hours_target": "+15550009999",
        },
    }
    e = Env(tmp_path, make_settings(routing={"numbers": numbers}))
    try:
        # Monday 15:00 UTC: 10:00 Monday in New York (open), 00:00 Tuesday in Tokyo (closed).
        assert shape(parse(e.answer(To="+15550000001"))) == ["Dial/User"]
        call_uuid = new_uuid()
        root = parse(e.answer(call_uuid, To="+15550000002"))
        assert shape(root) == ["Speak", "Dial/Number"]
        assert root[1][0].text == "+15550009999"
        row = e.records.get(call_uuid)
        assert row is not None and row["route"] == "after-hours"
        # Monday 23:30 UTC: 18:30 in New York (closed), 08:30 Tuesday in Tokyo (open).
        e.clock.now = MONDAY_15_UTC + 8.5 * 3600
        root = parse(e.answer(To="+15550000001"))
        assert shape(root) == ["Speak", "Hangup"]
        assert root[0].text == "We are closed."
        assert shape(parse(e.answer(To="+15550000002"))) == ["Dial/User"]
        # Saturday noon in New York: closed all day.
        e.clock.now = datetime(2025, 1, 11, 17, 0, tzinfo=UTC).timestamp()
        assert shape(parse(e.answer(To="+15550000001"))) == ["Speak", "Hangup"]
        # Closing time itself is closed; opening time is open (New York, Monday).
        e.clock.now = datetime(2025, 1, 6, 22, 0, tzinfo=UTC).timestamp()
        assert shape(parse(e.answer(To="+15550000001"))) == ["Speak", "Hangup"]
        e.clock.now = datetime(2025, 1, 6, 14, 0, tzinfo=UTC).timestamp()
        assert shape(parse(e.answer(To="+15550000001"))) == ["Dial/User"]
    finally:
        e.records.close()


def test_no_worker_up_plays_fallback_and_hangs_up(tmp_path: Path) -> None:
    e = Env(tmp_path, make_settings(), up=0)
    try:
        call_uuid = new_uuid()
        root = parse(e.answer(call_uuid))
        assert shape(root) == ["Speak", "Hangup"]
        assert root[0].text == e.app_settings_fallback_say
        row = e.records.get(call_uuid)
        assert row is not None and row["route"] == "fallback" and row["worker"] is None
    finally:
        e.records.close()


def test_fallback_can_dial_a_number_or_a_sip_uri(tmp_path: Path) -> None:
    for target, tag in (("+15550001234", "Number"), ("sip:ops@pbx.example.com", "User")):
        e = Env(
            tmp_path / tag,
            make_settings(routing={"fallback_target": target, "fallback_say": "One moment."}),
            up=0,
        )
        try:
            root = parse(e.answer())
            assert shape(root) == ["Speak", f"Dial/{tag}"]
            assert root[0].text == "One moment."
            assert root[1][0].text == target
            assert root[1].get("action") == BASE + "/dial-status?target=fallback"
        finally:
            e.records.close()


def test_one_worker_is_full_after_four_calls(tmp_path: Path) -> None:
    e = Env(tmp_path, make_settings(), workers=1)
    try:
        for _ in range(4):
            assert shape(parse(e.answer())) == ["Dial/User"]
        assert shape(parse(e.answer())) == ["Speak", "Hangup"]
        assert e.pool.ready() is False
    finally:
        e.records.close()


def test_twelve_calls_spread_over_three_workers(env: Env) -> None:
    users = Counter(parse(env.answer())[0][0].text for _ in range(12))
    assert len(users) == 3
    assert sum(users.values()) == 12
    assert max(users.values()) <= 4
    assert shape(parse(env.answer())) == ["Speak", "Hangup"]


def test_pool_error_still_answers_with_the_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenPool(PoolState):
        def reserve(self, call_uuid: str, kind: WorkerKind = "sip") -> DialTarget | None:
            raise RuntimeError("pool bookkeeping bug")

    caplog.set_level(logging.ERROR, logger=APP_LOGGER)
    clock = FakeClock()
    with CallRecords.open(tmp_path / "r.db") as records:
        app = create_app(make_settings(), BrokenPool(1, 4, clock=clock), records, clock=clock)
        plivo = Plivo(app.test_client())
        body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
        assert shape(parse(plivo.post("/answer", body))) == ["Speak", "Hangup"]
    assert any("routing call" in rec.getMessage() for rec in caplog.records)


def test_records_failure_is_logged_and_the_call_still_routed(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=APP_LOGGER)
    env.records.close()  # every write now raises
    assert shape(parse(env.answer())) == ["Dial/User"]
    body = {"CallUUID": new_uuid(), "HangupCause": "NORMAL_CLEARING"}
    assert env.plivo.post("/hangup", body).status_code == 200
    assert env.plivo.post("/dial-status?target=agent", body).status_code == 200
    messages = [rec.getMessage() for rec in caplog.records]
    assert sum("could not record" in m for m in messages) == 3


# --- parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"CallUUID": ""}, "CallUUID"),
        ({"CallUUID": "not-a-uuid"}, "CallUUID"),
        ({"CallUUID": "3f2a9c1e7b4d4e8a9f0123456789abcd"}, "CallUUID"),
        ({"To": ""}, "To"),
        ({"To": "<script>"}, "To"),
        ({"To": "sip:" + "a" * 300 + "@x"}, "To"),
    ],
)
def test_bad_answer_parameter_is_400_naming_it(env: Env, change: dict[str, str], name: str) -> None:
    body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED, **change}
    body = {k: v for k, v in body.items() if v}
    r = env.plivo.post("/answer", body)
    assert r.status_code == 400
    assert name in r.get_data(as_text=True)
    assert reserved(env.pool) == 0


@pytest.mark.parametrize(
    "withheld",
    [
        "",
        "anonymous",
        "Anonymous",
        "Restricted",
        "private",
        "sip:anonymous@anonymous.invalid",
        "+1 415 555",
        "+" + "1" * 300,
    ],
)
def test_a_withheld_or_unreadable_caller_is_routed_and_recorded(env: Env, withheld: str) -> None:
    # Plivo drops a call whose answer_url fails: an odd From must never be an HTTP 400.
    call_uuid = new_uuid()
    body = {"CallUUID": call_uuid, "From": withheld, "To": CALLED, "Direction": "inbound"}
    root = parse(env.plivo.post("/answer", {k: v for k, v in body.items() if v}))
    assert shape(root) == ["Dial/User"]
    assert root[0].get("callerId") is None  # no number to show the worker
    context = decode_call_context(sip_headers_of(root))
    assert context["from"] == "anonymous" and context["call_uuid"] == call_uuid
    row = env.records.get(call_uuid)
    assert row is not None and (row["from_number"], row["route"]) == ("anonymous", "agent")


def test_withheld_callers_take_the_anonymous_route(tmp_path: Path) -> None:
    e = Env(tmp_path, make_settings(routing={"anonymous": {"target": "+14155550123"}}))
    try:
        root = parse(e.answer(From=""))
        assert shape(root) == ["Dial/Number"] and root[0][0].text == "+14155550123"
        assert shape(parse(e.answer())) == ["Dial/User"]  # a caller who shows a number
    finally:
        e.records.close()


def test_calls_are_routed_by_the_sip_to_header_plivo_passes(tmp_path: Path) -> None:
    # A call to an application's SIP URI (or BYOC) carries the dialled number in SIP-H-To
    # (Plivo's pass-custom-headers page shows SIP-H-To beside To on the answer_url).
    numbers = {"+14155550177": {"target": "sip:desk@pbx.example.com"}}
    e = Env(tmp_path, make_settings(routing={"numbers": numbers}))
    try:
        call_uuid = new_uuid()
        root = parse(
            e.answer(
                call_uuid,
                To="sip:3a1b2c@app.plivo.com",
                **{"SIP-H-To": "<sip:+14155550177@app.plivo.com>;tag=6U9J4.uVHI7"},
            )
        )
        assert root[0][0].text == "sip:desk@pbx.example.com"
        row = e.records.get(call_uuid)
        assert row is not None and row["to_number"] == "sip:+14155550177@app.plivo.com"
        # A SIP-H-To without a number in it leaves To in charge.
        root = parse(e.answer(To="+14155550177", **{"SIP-H-To": "<sip:agent@x.example>"}))
        assert root[0][0].text == "sip:desk@pbx.example.com"
    finally:
        e.records.close()


def test_the_callers_headers_name_and_forwarding_reach_the_worker(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # Plivo sends a caller's custom SIP headers (Call API sip_headers, SIP callers) to the
    # answer_url as X-PH-* parameters, letters and digits only (pass-custom-headers page).
    caplog.set_level(logging.WARNING, logger=APP_LOGGER)
    call_uuid = new_uuid()
    params = {
        "X-PH-CustomerId": "A1234",
        "X-PH-Campaign": "spring24",
        "X-PH-From": "p19995550000",  # may not pose as the app's own From
        "X-PH-Bad": "two words",
        "CallerName": "Ana María",
        "ForwardedFrom": "+14155550111",
    }
    root = parse(env.answer(call_uuid, **params))
    invite = sip_headers_of(root)
    assert invite["X-PH-Customerid"] == "A1234" and invite["X-PH-Campaign"] == "spring24"
    context = decode_call_context(invite)
    assert context["from"] == CALLER and context["call_uuid"] == call_uuid
    assert context["caller_name"] == "Ana María"
    assert context["forwarded_from"] == "+14155550111"
    assert (context["customerid"], context["campaign"]) == ("A1234", "spring24")
    assert "bad" not in context
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "X-PH-Bad" in line and "X-PH-From" in line


def test_callbacks_need_a_call_uuid(env: Env) -> None:
    for path in ("/dial-status?target=agent", "/hangup"):
        r = env.plivo.post(path, {"DialStatus": "busy"})
        assert r.status_code == 400 and "CallUUID" in r.get_data(as_text=True)
        r = env.plivo.post(path, {"CallUUID": "x"})
        assert r.status_code == 400 and "CallUUID" in r.get_data(as_text=True)


# --- dial status and hangup -------------------------------------------------------------


def test_failed_dial_to_worker_releases_slot_and_plays_fallback(env: Env) -> None:
    call_uuid = new_uuid()
    action = parse(env.answer(call_uuid))[0].get("action") or ""
    assert reserved(env.pool) == 1
    path = action.removeprefix(BASE)
    params = {
        "CallUUID": call_uuid,
        "DialALegUUID": call_uuid,
        "DialBLegUUID": "",
        "DialStatus": "busy",
        "DialHangupCause": "USER_BUSY",
        "CallStatus": "in-progress",
    }
    root = parse(env.plivo.post(path, params))
    assert shape(root) == ["Speak", "Hangup"]
    assert reserved(env.pool) == 0
    row = env.records.get(call_uuid)
    assert row is not None
    assert (row["dial_status"], row["dial_hangup_cause"]) == ("busy", "USER_BUSY")


def test_dial_status_without_fallback_cases(env: Env) -> None:
    call_uuid = new_uuid()
    parse(env.answer(call_uuid))
    # Completed dial: nothing more to do.
    done = {"CallUUID": call_uuid, "DialStatus": "completed", "CallStatus": "in-progress"}
    assert shape(parse(env.plivo.post("/dial-status?target=agent", done))) == []
    assert reserved(env.pool) == 0
    # Failed dial, but the caller already hung up: release, no XML to play.
    call_uuid = new_uuid()
    parse(env.answer(call_uuid))
    gone = {"CallUUID": call_uuid, "DialStatus": "no-answer", "CallStatus": "completed"}
    assert shape(parse(env.plivo.post("/dial-status?target=agent", gone))) == []
    assert reserved(env.pool) == 0
    # A failed dial to a SIP URI or number is recorded but gets no apology.
    other = {"CallUUID": new_uuid(), "DialStatus": "failed", "CallStatus": "in-progress"}
    assert shape(parse(env.plivo.post("/dial-status?target=sip", other))) == []


def test_hangup_records_and_releases(env: Env) -> None:
    call_uuid = new_uuid()
    parse(env.answer(call_uuid))
    assert reserved(env.pool) == 1
    params = {
        "CallUUID": call_uuid,
        "HangupCause": "NORMAL_CLEARING",
        "Duration": "12",
        "BillDuration": "60",
        "StartTime": "2025-01-06 15:00:00",
        "EndTime": "2025-01-06 15:00:12",
        "CallStatus": "completed",
    }
    env.clock.now += 12
    r = env.plivo.post("/hangup", params)
    assert shape(parse(r)) == []
    assert reserved(env.pool) == 0
    row = env.records.get(call_uuid)
    assert row is not None
    assert row["route"] == "agent"
    assert row["hangup_cause"] == "NORMAL_CLEARING"
    assert row["duration_s"] == 12.0
    assert row["end_at"] == env.clock.now
    assert row["raw_hangup"]["StartTime"] == "2025-01-06 15:00:00"


# --- health -----------------------------------------------------------------------------


def test_healthz_and_readyz(tmp_path: Path) -> None:
    e = Env(tmp_path, make_settings(), workers=2, up=0)
    try:
        client = e.plivo.client
        r = client.get("/healthz")
        assert r.status_code == 200 and r.get_json() == {"status": "ok"}
        r = client.get("/readyz")
        assert r.status_code == 503
        body = r.get_json()
        assert body["ready"] is False and len(body["workers"]) == 2
        e.pool.worker_up(1, 4242, "sip:agent@127.0.0.1:5071", registers=False)
        r = client.get("/readyz")
        assert r.status_code == 200
        assert r.get_json()["workers"][1]["pid"] == 4242
    finally:
        e.records.close()


# --- a real server ------------------------------------------------------------------------


def post_over_http(
    url: str, params: Mapping[str, str], headers: dict[str, str]
) -> tuple[int, bytes]:
    data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def test_waitress_server_end_to_end(tmp_path: Path) -> None:
    clock = FakeClock()
    pool = make_pool(clock)
    with CallRecords.open(tmp_path / "r.db") as records:
        app: Flask = create_app(make_settings(), pool, records, clock=clock)
        server = serve_app(app, "127.0.0.1", 0, threads=2)
        try:
            assert server.port > 0 and server.running
            assert server.url == f"http://127.0.0.1:{server.port}"
            with urllib.request.urlopen(server.url + "/healthz", timeout=5) as resp:
                assert resp.status == 200
            call_uuid = new_uuid()
            params = {"CallUUID": call_uuid, "From": CALLER, "To": CALLED}
            url = server.url + "/answer"
            nonce = "waitress-nonce-1"
            sig = plivo_signature("POST", url, params, nonce, TOKEN)
            headers = {SIGNATURE_HEADER: sig, NONCE_HEADER: nonce}
            status, body = post_over_http(url, params, headers)
            assert status == 200
            root = ET.fromstring(body)
            assert root[0].tag == "Dial"
            assert root[0].get("action") == server.url + "/dial-status?target=agent"
            status, _ = post_over_http(url, params, headers)  # the same nonce again
            assert status == 403
            row = records.get(call_uuid)
            assert row is not None and row["route"] == "agent"
        finally:
            server.close()
        assert not server.running
        server.close()  # idempotent
        with pytest.raises(OSError):
            urllib.request.urlopen(server.url + "/healthz", timeout=2)


def test_idle_and_slow_connections_do_not_block_plivos_callbacks(tmp_path: Path) -> None:
    # waitress accepts 100 connections by default and then none: 300 idle or half-sent
    # requests (a slow client, a scanner) used to keep Plivo's /answer out.
    clock = FakeClock()
    with CallRecords.open(tmp_path / "r.db") as records, contextlib.ExitStack() as held:
        app: Flask = create_app(make_settings(), make_pool(clock), records, clock=clock)
        server = serve_app(app, "127.0.0.1", 0, threads=2)
        held.callback(server.close)
        for i in range(300):
            conn = held.enter_context(socket.create_connection(("127.0.0.1", server.port), 5))
            if i % 2:  # half of them send a request head and stop there
                conn.sendall(b"POST /answer HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n")
        params = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
        url = server.url + "/answer"
        sig = plivo_signature("POST", url, params, "idle-nonce", TOKEN)
        started = time.monotonic()
        headers = {SIGNATURE_HEADER: sig, NONCE_HEADER: "idle-nonce"}
        status, body = post_over_http(url, params, headers)
        elapsed = time.monotonic() - started
    assert status == 200 and b"<Dial" in body, body
    assert elapsed < 1.0, f"/answer took {elapsed:.2f} s with 300 idle connections"


# -- pushed bot replies ---------------------------------------------------------------------

PUSH_TOKEN = "bot-push-secret"


class Pushes:
    """Stands in for the supervisor: records pushes, answers with a scripted status."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answer = PushOutcome(PushStatus.ACCEPTED, "accepted")

    def __call__(self, call_id: str, payload: dict[str, Any]) -> PushOutcome:
        self.calls.append((call_id, payload))
        return self.answer


def push_client(tmp_path: Path, pushes: Pushes | None, **app: Any) -> tuple[FlaskClient, Any]:
    settings = make_settings(webhook={"push_token": PUSH_TOKEN}, app=app)
    records = CallRecords.open(tmp_path / "records.db")
    flask_app = create_app(settings, make_pool(FakeClock()), records, push=pushes)
    return flask_app.test_client(), records


def test_a_pushed_reply_reaches_the_pool_with_the_bearer_token(tmp_path: Path) -> None:
    pushes = Pushes()
    client, records = push_client(tmp_path, pushes)
    auth = {"Authorization": f"Bearer {PUSH_TOKEN}"}
    try:
        ok = client.post("/bot/calls/abc%2F1@host/reply", json={"text": "Ten."}, headers=auth)
        assert ok.status_code == 202 and ok.get_json() == {"status": "accepted"}
        assert pushes.calls == [("abc/1@host", {"text": "Ten."})]
        for status, answer in (
            (404, PushOutcome(PushStatus.NO_CALL, "no call with that id is in progress")),
            (400, PushOutcome(PushStatus.MALFORMED, "bad 'text'")),
            (409, PushOutcome(PushStatus.REFUSED, "this brain takes no pushed replies")),
            (503, PushOutcome(PushStatus.UNAVAILABLE, "the worker pool did not answer")),
        ):
            pushes.answer = answer
            r = client.post("/bot/calls/x/reply", json={"text": 5}, headers=auth)
            assert (r.status_code, r.get_json()) == (status, {"error": answer.reason})
        # Refused before the pool is asked: bad tokens, a body that is not a JSON object.
        before = len(pushes.calls)
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": PUSH_TOKEN}):
            r = client.post("/bot/calls/x/reply", json={"text": "a"}, headers=headers)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        for body in ({"data": b"not json"}, {"json": ["a list"]}):
            r = client.post("/bot/calls/x/reply", headers=auth, **body)
            assert r.status_code == 400, r.get_data(as_text=True)
        r = client.post("/bot/calls/x/reply", headers=auth, data=b"{" + b" " * 70_000 + b"}")
        assert r.status_code == 413
        assert len(pushes.calls) == before
    finally:
        records.close()


def test_pushes_are_off_without_a_token_and_503_without_a_pool(tmp_path: Path) -> None:
    records = CallRecords.open(tmp_path / "records.db")
    try:
        app = create_app(make_settings(), make_pool(FakeClock()), records, push=Pushes())
        r = app.test_client().post(
            "/bot/calls/x/reply", json={"text": "a"}, headers={"Authorization": "Bearer "}
        )
        assert r.status_code == 404 and "webhook.push_token" in r.get_json()["error"]
    finally:
        records.close()
    client, records = push_client(tmp_path, None)
    try:
        r = client.post(
            "/bot/calls/x/reply",
            json={"text": "a"},
            headers={"Authorization": f"Bearer {PUSH_TOKEN}"},
        )
        assert r.status_code == 503
    finally:
        records.close()


OCS_TOKEN = "ocs-push-secret"


def ocs_client(tmp_path: Path, pushes: Pushes | None, **app: Any) -> tuple[FlaskClient, Any]:
    settings = make_settings(external={"push_token": OCS_TOKEN}, app=app)
    records = CallRecords.open(tmp_path / "records.db")
    flask_app = create_app(settings, make_pool(FakeClock()), records, push=pushes)
    return flask_app.test_client(), records


def test_dcs_response_hands_ocs_replies_to_the_call_named_in_the_body(tmp_path: Path) -> None:
    pushes = Pushes()
    client, records = ocs_client(tmp_path, pushes)
    auth = {"Authorization": f"Bearer {OCS_TOKEN}"}
    try:
        reply = {"type": "text", "text": "Ten dollars.", "audio_url": "https://ocs.example/a.wav"}
        ok = client.post("/dcs/response", json={"call_id": "rec-1", **reply}, headers=auth)
        assert ok.status_code == 202 and ok.get_json() == {"status": "accepted"}
        # By CallUUID when there is no call_id; the id is not part of the reply.
        by_uuid = {"call_uuid": "uuid-1", "text": "Bye.", "actions": ["hangup"]}
        assert client.post("/dcs/response", json=by_uuid, headers=auth).status_code == 202
        assert pushes.calls == [
            ("rec-1", reply),
            ("uuid-1", {"text": "Bye.", "actions": ["hangup"]}),
        ]
        pushes.answer = PushOutcome(PushStatus.NO_CALL, "no call with that id is in progress")
        r = client.post("/dcs/response", json={"call_id": "gone", "text": "a"}, headers=auth)
        assert (r.status_code, r.get_json()["error"]) == (404, pushes.answer.reason)
        before = len(pushes.calls)
        for body in ({"text": "a"}, {"call_id": 5, "text": "a"}, {"call_id": " ", "text": "a"}):
            r = client.post("/dcs/response", json=body, headers=auth)
            assert r.status_code == 400 and "'call_id'" in r.get_json()["error"], body
        r = client.post("/dcs/response", json=["a list"], headers=auth)
        assert r.status_code == 400
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": PUSH_TOKEN}):
            r = client.post("/dcs/response", json={"call_id": "x", "text": "a"}, headers=headers)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        # The webhook's route takes its own token, not OCS's.
        r = client.post("/bot/calls/x/reply", json={"text": "a"}, headers=auth)
        assert r.status_code == 404 and "webhook.push_token" in r.get_json()["error"]
        assert len(pushes.calls) == before
    finally:
        records.close()


def test_dcs_response_is_off_without_a_token(tmp_path: Path) -> None:
    records = CallRecords.open(tmp_path / "records.db")
    try:
        app = create_app(make_settings(), make_pool(FakeClock()), records, push=Pushes())
        r = app.test_client().post(
            "/dcs/response", json={"call_id": "x"}, headers={"Authorization": "Bearer "}
        )
        assert r.status_code == 404 and "external.push_token" in r.get_json()["error"]
    finally:
        records.close()
    # An OCS token alone starts the app (without Plivo's routes when no auth token).
    client, records = ocs_client(tmp_path, Pushes(), auth_token="")
    try:
        assert client.post("/answer", data={"CallUUID": new_uuid()}).status_code == 404
        r = client.post(
            "/dcs/response",
            json={"call_id": "x", "text": "a"},
            headers={"Authorization": f"Bearer {OCS_TOKEN}"},
        )
        assert r.status_code == 202
    finally:
        records.close()


def test_a_push_token_alone_starts_the_app_without_the_plivo_routes(tmp_path: Path) -> None:
    client, records = push_client(tmp_path, Pushes(), auth_token="")
    try:
        assert client.post("/answer", data={"CallUUID": new_uuid()}).status_code == 404
        assert client.get("/healthz").status_code == 200
        r = client.post(
            "/bot/calls/x/reply",
            json={"text": "a"},
            headers={"Authorization": f"Bearer {PUSH_TOKEN}"},
        )
        assert r.status_code == 202
    finally:
        records.close()
