"""The answer_url app's side of Plivo audio streams: the ``stream`` route target, the
``<Stream>`` XML, ``/stream-status`` and the stream capacity in ``/readyz``.

What Plivo documents about ``<Stream>`` is summarised, with its pages, in
docs/plivo-audio-streams.md (cited below by section).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.plivo.callcontext import decode_call_context
from gateway.stream.auth import query_call_token, verify_token
from sip_config import ConfigError, load_settings
from tests.helpers.app import (
    APP_LOGGER,
    CALLED,
    CALLER,
    TOKEN,
    Env,
    make_settings,
    new_uuid,
    parse,
    reserved,
    shape,
)
from xml_app import plivo_xml
from xml_app.app import MAX_STREAM_HEADERS_BYTES, fit_pairs

PUBLIC = "https://bot.example.com"
STREAM_ROUTE = {"default": {"target": "stream"}}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """One SIP worker (index 0) and two stream workers (1, 2) of two calls each; every call
    goes to a stream; Plivo calls https://bot.example.com."""
    e = Env(
        tmp_path,
        make_settings(app={"public_url": PUBLIC}, routing=STREAM_ROUTE),
        workers=1,
        stream_workers=2,
    )
    yield e
    e.records.close()


def stream_of(root: ET.Element) -> ET.Element:
    assert shape(root) == ["Stream"], shape(root)
    return root[0]


def extra_headers(stream: ET.Element) -> dict[str, str]:
    """The ``extraHeaders`` pairs as the ``X-PH-`` headers the call context is read from."""
    text = stream.get("extraHeaders") or ""
    return {f"X-PH-{k}": v for k, v in (pair.split("=", 1) for pair in text.split(","))}


# --- the <Stream> XML ---------------------------------------------------------------------


def test_the_answer_is_a_bidirectional_stream_as_plivo_documents_it(env: Env) -> None:
    call_uuid = new_uuid()
    stream = stream_of(parse(env.answer(call_uuid)))
    # docs/plivo-audio-streams.md §1.2 (attributes; the one track a bidirectional stream
    # may have is inbound; contentType set since Plivo's pages disagree on its default) and
    # §1.4 (keepCallAlive: the XML waits on the stream).
    assert stream.attrib == {
        "bidirectional": "true",
        "keepCallAlive": "true",
        "audioTrack": "inbound",
        "contentType": "audio/x-mulaw;rate=8000",
        "streamTimeout": "3600",  # conversation.max_call_s
        "statusCallbackUrl": PUBLIC + "/stream-status",
        "statusCallbackMethod": "POST",
        "extraHeaders": stream.get("extraHeaders"),
    }
    # §1.1: the URL is the element's text: app.public_url as wss + /stream, the call's token.
    url = stream.text or ""
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "bot.example.com", "/stream")
    call, token = query_call_token(parts.query)
    assert call == call_uuid
    now = env.clock.now
    assert verify_token(TOKEN, call_uuid, token, now)  # keyed by app.auth_token
    assert verify_token(TOKEN, call_uuid, token, now + 60)  # stream.token_ttl_s
    assert not verify_token(TOKEN, call_uuid, token, now + 61)
    assert not verify_token(TOKEN, new_uuid(), token, now)
    assert len(url) <= 2048  # §1.1: Plivo's limit on the URL
    # The slot is held on a stream worker; the record names the route and that worker.
    held = [w for w in env.pool.snapshot() if w["reserved"]]
    assert [w["kind"] for w in held] == ["stream"]
    row = env.records.get(call_uuid)
    assert row is not None
    assert (row["route"], row["worker"]) == ("stream", held[0]["index"])


def test_extra_headers_carry_the_call_context(env: Env) -> None:
    call_uuid = new_uuid()
    stream = stream_of(
        parse(env.answer(call_uuid, CallerName="Ada Lovelace", **{"X-PH-Ticket": "T42"}))
    )
    text = stream.get("extraHeaders") or ""
    # §1.3: letters and digits in key=value pairs, comma-separated, at most 512 bytes.
    assert len(text.encode()) <= MAX_STREAM_HEADERS_BYTES
    assert all(part.replace("=", "", 1).isalnum() for part in text.split(","))
    assert decode_call_context(extra_headers(stream)) == {
        "call_uuid": call_uuid,
        "from": CALLER,
        "to": CALLED,
        "caller_name": "Ada Lovelace",
        "ticket": "T42",
    }


def test_extra_headers_keep_the_apps_keys_and_drop_what_does_not_fit(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Eight caller headers of the largest size Plivo passes (24-character names,
    120-character values) make 1160 bytes: the app's own keys stay, the rest is cut."""
    caplog.set_level(logging.WARNING, logger=APP_LOGGER)
    names = [f"Header{i}".ljust(24, "x") for i in range(8)]
    params = {f"X-PH-{name}": "v" * 120 for name in names}
    call_uuid = new_uuid()
    stream = stream_of(parse(env.answer(call_uuid, CallerName="Ada", **params)))
    text = stream.get("extraHeaders") or ""
    assert len(text.encode()) <= MAX_STREAM_HEADERS_BYTES
    assert text.split(",")[0].startswith("Calluuid=")
    context = decode_call_context(extra_headers(stream))
    assert {k: context[k] for k in ("call_uuid", "from", "to", "caller_name")} == {
        "call_uuid": call_uuid,
        "from": CALLER,
        "to": CALLED,
        "caller_name": "Ada",
    }
    kept = [n for n in names if n.lower() in context]
    dropped = [n for n in names if n.lower() not in context]
    assert kept and dropped
    warning = next(
        r.getMessage() for r in caplog.records if "not passed to the stream" in r.getMessage()
    )
    assert all(n.capitalize() in warning for n in dropped)
    assert not any(n.capitalize() in warning for n in kept)


def test_stream_url_token_secret_and_timeout_from_the_settings(tmp_path: Path) -> None:
    settings = make_settings(
        routing=STREAM_ROUTE,
        stream={"url": "https://media.example.com/ws/", "token_secret": "s3cret"},
        conversation={"max_call_s": 90.5},
    )
    e = Env(tmp_path, settings, workers=0, stream_workers=1)
    try:
        call_uuid = new_uuid()
        stream = stream_of(parse(e.answer(call_uuid)))
        url = stream.text or ""
        assert url.startswith("wss://media.example.com/ws?")  # an https stream.url is wss
        _, token = query_call_token(urlsplit(url).query)
        assert verify_token("s3cret", call_uuid, token, e.clock.now)
        assert not verify_token(TOKEN, call_uuid, token, e.clock.now)
        assert stream.get("streamTimeout") == "91"  # whole seconds, rounded up
        # Without app.public_url the callback goes to the host Plivo called.
        assert stream.get("statusCallbackUrl") == "http://localhost/stream-status"
    finally:
        e.records.close()


def test_without_public_url_the_stream_goes_to_the_workers_own_port(tmp_path: Path) -> None:
    # The reserved worker listens on 0.0.0.0:9100 (make_pool): its port, under the host
    # Plivo called.
    settings = make_settings(
        app={"auth_token": "", "verify_signatures": False},
        routing=STREAM_ROUTE,
        stream={"listen_host": "0.0.0.0", "token_secret": "k"},
    )
    e = Env(tmp_path, settings, workers=0, stream_workers=1)
    try:
        body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
        client = e.plivo.client
        url = stream_of(parse(client.post("/answer", data=body))).text or ""
        assert url.startswith("ws://localhost:9100/stream?")
        response = client.post("/answer", data=body, base_url="http://[::1]:8080")
        assert (stream_of(parse(response)).text or "").startswith("ws://[::1]:9100/stream?")
    finally:
        e.records.close()


def test_the_stream_element_builder() -> None:
    doc = plivo_xml.render(
        plivo_xml.stream(
            "wss://h/stream?call=a&token=b",
            extra_headers=None,
            status_callback_url=None,
            stream_timeout_s=60,
        )
    )
    element = ET.fromstring(doc)[0]
    assert element.text == "wss://h/stream?call=a&token=b"
    assert "statusCallbackUrl" not in element.attrib
    assert "statusCallbackMethod" not in element.attrib
    assert "extraHeaders" not in element.attrib


def test_fit_pairs_keeps_the_order_and_skips_what_does_not_fit() -> None:
    assert fit_pairs("A=1,Bb=22,C=3", 8) == ("A=1,C=3", ["Bb"])
    assert fit_pairs("A=1,Bb=22,C=3", 9) == ("A=1,Bb=22", ["C"])
    assert fit_pairs("A=1,B=2", 7) == ("A=1,B=2", [])
    assert fit_pairs("", 10) == ("", [])


# --- routing and the fallback ------------------------------------------------------------


def test_per_number_and_after_hours_routes_to_the_stream(tmp_path: Path) -> None:
    routing: dict[str, Any] = {
        "numbers": {
            "+15550000001": {"target": "stream"},
            "15550000002": {
                "target": "+15550009999",
                "hours": {"timezone": "Asia/Tokyo", "open": "09:00", "close": "17:00"},
                "after_hours_target": "stream",
                "after_hours_say": "Closed; our assistant takes it.",
            },
        }
    }
    e = Env(tmp_path, make_settings(routing=routing), workers=1, stream_workers=1)
    try:
        assert shape(parse(e.answer(To="+15550000001"))) == ["Stream"]
        assert shape(parse(e.answer())) == ["Dial/User"]  # the default: the SIP pool
        # Midnight in Tokyo: closed; the apology, then the stream.
        call_uuid = new_uuid()
        root = parse(e.answer(call_uuid, To="+15550000002"))
        assert shape(root) == ["Speak", "Stream"]
        row = e.records.get(call_uuid)
        assert row is not None and (row["route"], row["worker"]) == ("after-hours", 1)
    finally:
        e.records.close()


@pytest.mark.parametrize(
    ("stream_workers", "stream_up", "why"),
    [(0, None, "pool.stream_workers"), (1, 0, "is free")],
)
def test_no_stream_worker_plays_the_fallback(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    stream_workers: int,
    stream_up: int | None,
    why: str,
) -> None:
    caplog.set_level(logging.WARNING, logger=APP_LOGGER)
    e = Env(
        tmp_path,
        make_settings(routing=STREAM_ROUTE),
        workers=1,
        stream_workers=stream_workers,
        stream_up=stream_up,
    )
    try:
        call_uuid = new_uuid()
        root = parse(e.answer(call_uuid))
        assert shape(root) == ["Speak", "Hangup"]  # not a SIP worker, though one is free
        assert reserved(e.pool) == 0
        row = e.records.get(call_uuid)
        assert row is not None and (row["route"], row["worker"]) == ("fallback", None)
        assert any(why in r.getMessage() for r in caplog.records)
    finally:
        e.records.close()


def test_full_stream_workers_play_the_fallback(tmp_path: Path) -> None:
    e = Env(
        tmp_path,
        make_settings(routing=STREAM_ROUTE),
        workers=0,
        stream_workers=1,
        stream_max_calls=2,
    )
    try:
        assert shape(parse(e.answer())) == ["Stream"]
        assert shape(parse(e.answer())) == ["Stream"]
        assert shape(parse(e.answer())) == ["Speak", "Hangup"]
        assert reserved(e.pool) == 2
    finally:
        e.records.close()


def test_without_a_token_secret_the_call_gets_the_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=APP_LOGGER)
    settings = make_settings(
        app={"auth_token": "", "verify_signatures": False}, routing=STREAM_ROUTE
    )
    e = Env(tmp_path, settings, workers=0, stream_workers=1)
    try:
        body = {"CallUUID": new_uuid(), "From": CALLER, "To": CALLED}
        assert shape(parse(e.plivo.client.post("/answer", data=body))) == ["Speak", "Hangup"]
        assert reserved(e.pool) == 0
        assert any("stream.token_secret" in r.getMessage() for r in caplog.records)
    finally:
        e.records.close()


def test_stream_is_a_route_target_but_not_the_fallback() -> None:
    routing = {"default": {"target": "stream", "after_hours_target": "stream"}}
    s = load_settings(None, env_file=None, overrides={"routing": routing})
    assert (s.routing.default.target, s.routing.default.after_hours_target) == ("stream",) * 2
    with pytest.raises(ConfigError, match=r"routing\.fallback_target: the fallback cannot"):
        load_settings(None, env_file=None, overrides={"routing": {"fallback_target": "stream"}})
    with pytest.raises(ConfigError, match=r"routing\.default\.target: must be 'agent', 'stream'"):
        load_settings(None, env_file=None, overrides={"routing": {"default": {"target": "ws"}}})


# --- /stream-status -----------------------------------------------------------------------


def test_stream_status_is_signed(env: Env) -> None:
    body = {"CallUUID": new_uuid(), "StreamID": new_uuid(), "Event": "StartStream"}
    assert env.plivo.client.post("/stream-status", data=body).status_code == 403
    signed = env.plivo.headers("POST", "/stream-status", {})
    assert env.plivo.client.post("/stream-status", json=body).status_code == 403
    assert env.plivo.client.post("/stream-status", json=body, headers=signed).status_code == 200
    response = env.plivo.post("/stream-status", body)
    assert response.status_code == 200
    assert (response.mimetype, response.get_data(as_text=True)) == ("text/plain", "ok\n")


@pytest.mark.parametrize(
    ("event", "frees"),
    [
        ("StartStream", False),
        ("started", False),
        ("DegradedStream", False),
        ("StopStream", True),
        ("stopped", True),
        ("DroppedStream", True),
        ("failed", True),
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_a_stream_that_failed_or_stopped_frees_its_slot(
    env: Env, caplog: pytest.LogCaptureFixture, event: str, frees: bool, as_json: bool
) -> None:
    """Both of Plivo's vocabularies (docs/plivo-audio-streams.md §4.3: the XML reference's
    StartStream/StopStream/DroppedStream/DegradedStream, the guide's started/stopped/failed
    in JSON bodies), as form or JSON."""
    caplog.set_level(logging.INFO, logger=APP_LOGGER)
    call_uuid = new_uuid()
    assert shape(parse(env.answer(call_uuid))) == ["Stream"]
    assert reserved(env.pool) == 1
    body: dict[str, Any] = {
        "CallUUID": call_uuid,
        "StreamID": "20170ada-f610-433b-8758-c02a2aab3662",
        "Event": event,
        "StatusReason": "connection_failed",
        "Timestamp": "2026-01-15T10:30:00Z",
    }
    if as_json:
        body["Duration"] = 12  # a number in the guide's JSON examples
        headers = env.plivo.headers("POST", "/stream-status", {})
        response = env.plivo.client.post("/stream-status", json=body, headers=headers)
    else:
        response = env.plivo.post("/stream-status", body)
    assert response.status_code == 200
    assert reserved(env.pool) == (0 if frees else 1)
    lines = [r.getMessage() for r in caplog.records if "stream-status" in r.getMessage()]
    assert len(lines) == 1
    assert call_uuid in lines[0] and "20170ada" in lines[0] and "connection_failed" in lines[0]


def test_stream_status_needs_a_call_uuid(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    for body, problem in (
        ({"Event": "StartStream"}, "missing parameter: CallUUID"),
        ({"Event": "StartStream", "CallUUID": "nonsense"}, "malformed parameter: CallUUID"),
    ):
        response = env.plivo.post("/stream-status", body)
        assert response.status_code == 400
        assert problem in response.get_data(as_text=True)
        headers = env.plivo.headers("POST", "/stream-status", {})
        response = env.plivo.client.post("/stream-status", json=body, headers=headers)
        assert response.status_code == 400
        assert problem in response.get_data(as_text=True)
    caplog.set_level(logging.WARNING, logger=APP_LOGGER)
    response = env.plivo.post("/stream-status", {"CallUUID": new_uuid(), "Event": "Weird"})
    assert response.status_code == 200  # an event Plivo adds later is no error
    assert any("unknown event 'Weird'" in r.getMessage() for r in caplog.records)


# --- /readyz ------------------------------------------------------------------------------


def test_readyz_shows_the_capacity_of_each_kind(tmp_path: Path) -> None:
    e = Env(tmp_path, make_settings(), workers=1, up=0, stream_workers=2, stream_up=0)
    try:
        client = e.plivo.client
        r = client.get("/readyz")
        assert r.status_code == 503
        body = r.get_json()
        assert body["ready"] is False and len(body["workers"]) == 3
        assert body["capacity"] == {
            "sip": {"workers": 1, "up": 0, "max_calls": 4, "calls": 0, "free": 0},
            "stream": {"workers": 2, "up": 0, "max_calls": 4, "calls": 0, "free": 0},
        }
        # A stream worker alone makes the app ready (stream routes can take calls).
        e.pool.worker_up(2, 4242, "ws://127.0.0.1:8090/stream", registers=False)
        r = client.get("/readyz")
        assert r.status_code == 200 and r.get_json()["ready"] is True
        capacity = r.get_json()["capacity"]
        assert capacity["stream"] == {"workers": 2, "up": 1, "max_calls": 4, "calls": 0, "free": 2}
        assert capacity["sip"]["free"] == 0
    finally:
        e.records.close()
