"""The call console (/console) through Flask's test client: its credential, the pages over
stored records and the pool, and the recording route."""

from __future__ import annotations

import base64
import re
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway.pool.state import LiveCall
from gateway.records.model import CallTurn, SipCallEnd, SipCallStart
from gateway.records.store import CallRecords
from tests.helpers.app import CALLED, CALLER, MONDAY_15_UTC, FakeClock, make_pool, make_settings
from xml_app import create_app
from xml_app.console import COOKIE, waterfall

CONSOLE = "s3cret-console-token"
BEARER = {"Authorization": f"Bearer {CONSOLE}"}
CALL = "call-1@host"


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def turn(n: int, user: str, agent: str, **fields: Any) -> CallTurn:
    record: dict[str, Any] = {
        "turn": n,
        "kind": "turn",
        "user_text": user,
        "agent_text": agent,
        "eot_wait_ms": 300.0,
        "stt_ms": 120.0,
        "brain_ms": 400.0,
        "tts_first_ms": 150.0,
        "playout_ms": 30.0,
        "total_ms": 1000.0,
        "interrupted": False,
        "barge_in": False,
        "actions": [],
    }
    record.update(fields)
    return CallTurn(CALL, None, record, MONDAY_15_UTC + n)


class Console:
    """An app with a console, a pool and a records store holding one finished call."""

    def __init__(self, tmp_path: Path, token: str = CONSOLE, redact: bool = False) -> None:
        self.clock = FakeClock()
        self.pool = make_pool(self.clock, workers=2)
        self.records = CallRecords.open(tmp_path / "records.db")
        self.rec_dir = tmp_path / "rec"
        self.rec_dir.mkdir()
        wav = self.rec_dir / "call-1.wav"
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"\0\0\0\0" * 800)
        settings = make_settings(
            app={"console_token": token},
            records={"redact_pii": redact, "recording_dir": str(self.rec_dir)},
        )
        self.records.sip_call_started(
            SipCallStart(
                CALL,
                None,
                f"sip:{CALLER}@plivo",
                f"sip:{CALLED}@agent",
                MONDAY_15_UTC,
                recording=str(wav),
            ),
            0,
        )
        self.records.call_turn(turn(1, "", "Hello, how can I help?", kind="greeting"))
        self.records.call_turn(
            turn(2, "My card is 4111 1111 1111 1111", "Thanks.", interrupted=True)
        )
        self.records.call_turn(turn(3, "Goodbye", "Bye!", actions=["hangup"]))
        self.records.sip_call_ended(SipCallEnd(CALL, None, "caller hung up", MONDAY_15_UTC + 42), 0)
        self.key = self.records.get(CALL)["call_uuid"]  # type: ignore[index]
        self.client: FlaskClient = create_app(
            settings, self.pool, self.records, clock=self.clock
        ).test_client()

    def close(self) -> None:
        self.records.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    c = Console(tmp_path)
    yield c
    c.close()


def console_urls(c: Console) -> list[str]:
    return [
        "/console/",
        f"/console/calls/{c.key}",
        f"/console/calls/{c.key}/recording.wav",
        "/console/live",
        "/console/live.json",
        "/console/static/console.css",
    ]


def test_without_the_credential_every_console_url_is_401(console: Console) -> None:
    for url in console_urls(console):
        for headers in ({}, basic("admin", "wrong"), {"Authorization": "Bearer wrong"}):
            r = console.client.get(url, headers=headers)
            assert r.status_code == 401, url
            assert r.headers["WWW-Authenticate"].startswith("Basic ")
            assert b"Hello" not in r.data


def test_basic_auth_with_any_user_or_a_bearer_token_is_let_in(console: Console) -> None:
    for headers in (basic("anyone", CONSOLE), basic("", CONSOLE), BEARER):
        for url in console_urls(console):
            r = console.client.get(url, headers=headers)
            r.close()  # a static file's or the recording's handle
            assert r.status_code == 200, (url, headers)
            assert r.headers["Cache-Control"] == "no-store"


def test_a_token_in_the_query_sets_a_cookie_and_is_taken_out_of_the_url(
    console: Console,
) -> None:
    r = console.client.get(f"/console/live?token={CONSOLE}")
    assert r.status_code == 303
    assert r.headers["Location"].endswith("/console/live")
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(COOKIE + "=")
    assert "HttpOnly" in cookie and "Path=/console" in cookie and CONSOLE not in cookie
    assert console.client.get("/console/live").status_code == 200
    assert console.client.get("/console/live?token=wrong").status_code == 303
    console.client.delete_cookie(COOKIE, path="/console")
    assert console.client.get("/console/live?token=wrong").status_code == 401


def test_without_a_console_token_there_is_no_console(tmp_path: Path) -> None:
    c = Console(tmp_path, token="")
    try:
        for url in console_urls(c):
            assert c.client.get(url, headers=basic("x", "")).status_code == 404
        assert c.client.get("/healthz").status_code == 200
    finally:
        c.close()


def test_recent_calls_list_and_search(console: Console) -> None:
    page = console.client.get("/console/", headers=BEARER).get_data(as_text=True)
    assert CALLER in page and f"/console/calls/{console.key}" in page
    for q, found in [("415 555 0100", True), ("0199", True), ("999", False)]:
        page = console.client.get(f"/console/?q={q}", headers=BEARER).get_data(as_text=True)
        assert (CALLER in page) is found, q
    for date, found in [("2025-01-06", True), ("2025-01-07", False)]:
        page = console.client.get(f"/console/?date={date}", headers=BEARER).get_data(as_text=True)
        assert (CALLER in page) is found, date


def test_the_call_page_shows_the_turns_a_waterfall_per_turn_and_the_recording(
    console: Console,
) -> None:
    page = console.client.get(f"/console/calls/{console.key}", headers=BEARER).get_data(
        as_text=True
    )
    for said in ("Hello, how can I help?", "4111 1111 1111 1111", "Goodbye", "Bye!"):
        assert said in page
    assert len(re.findall(r'<li class="turn[ "]', page)) == 3
    assert len(re.findall(r'<li class="turn interrupted"', page)) == 1
    assert page.count('class="turn-bars"') == 3
    # Five parts per turn, on one axis of 1000 ms: brain starts at 42 % and is 40 % wide.
    assert page.count('class="bar brain" style') == 3
    assert 'class="bar brain" style="left: 42.0%; width: 40.0%"' in page
    assert '<span class="action">hangup</span>' in page
    src = f"/console/calls/{console.key}/recording.wav"
    assert f'<audio id="recording" controls preload="metadata"\n       src="{src}"' in page
    r = console.client.get(src, headers=BEARER)
    assert r.status_code == 200 and r.mimetype == "audio/wav"
    assert r.data.startswith(b"RIFF")
    r.close()
    assert console.client.get(src).status_code == 401


def test_a_recording_outside_the_recording_dir_is_not_served(
    console: Console, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.wav"
    outside.write_bytes(b"RIFF")
    console.records.sip_call_started(
        SipCallStart("other@host", None, None, None, MONDAY_15_UTC, recording=str(outside)), 1
    )
    key = console.records.get("other@host")["call_uuid"]  # type: ignore[index]
    page = console.client.get(f"/console/calls/{key}", headers=BEARER).get_data(as_text=True)
    assert "<audio" not in page
    r = console.client.get(f"/console/calls/{key}/recording.wav", headers=BEARER)
    assert r.status_code == 404
    assert console.client.get("/console/calls/nope", headers=BEARER).status_code == 404


def test_redact_pii_masks_numbers_and_words(tmp_path: Path) -> None:
    c = Console(tmp_path, redact=True)
    try:
        page = c.client.get(f"/console/calls/{c.key}", headers=BEARER).get_data(as_text=True)
        assert CALLER not in page and "…0100" in page and "…0199" in page
        assert "4111" not in page and "[card]" in page
        listing = c.client.get("/console/?q=0100", headers=BEARER).get_data(as_text=True)
        assert CALLER not in listing and "…0100" in listing
    finally:
        c.close()


def test_live_calls_and_the_pool(console: Console) -> None:
    live = LiveCall(
        "live@host", "uuid-1", f"sip:{CALLER}@plivo", "sip:a@w", "inbound", console.clock.now - 7
    )
    console.pool.call_started(1, "live@host", "uuid-1", live)
    state = console.client.get("/console/live.json", headers=BEARER).get_json()
    assert state["calls"] == [
        {
            "worker": 1,
            "from": CALLER,
            "to": "a",
            "direction": "inbound",
            "activity": None,  # nothing reported yet
            "duration_s": 7,
            "key": "uuid-1",
        }
    ]
    assert [w["state"] for w in state["workers"]] == ["up", "up"]
    assert [w["calls"] for w in state["workers"]] == [0, 1]
    page = console.client.get("/console/live", headers=BEARER).get_data(as_text=True)
    assert CALLER in page and 'class="worker up"' in page
    assert 'class="activity' not in page
    # What the agent does, as its worker reports it: a value and a class of the same name.
    assert console.pool.set_activity(1, "live@host", "on-hold")
    state = console.client.get("/console/live.json", headers=BEARER).get_json()
    assert state["calls"][0]["activity"] == "on-hold"
    page = console.client.get("/console/live", headers=BEARER).get_data(as_text=True)
    assert '<span class="activity on-hold">on hold</span>' in page
    console.pool.call_ended(1, "live@host")
    console.pool.worker_down(0)
    state = console.client.get("/console/live.json", headers=BEARER).get_json()
    assert state["calls"] == []
    assert [(w["state"], w["restarts"]) for w in state["workers"]] == [("down", 1), ("up", 0)]


def test_the_waterfall_shares_one_axis_and_skips_empty_parts() -> None:
    axis, groups = waterfall(
        [{"eot_wait_ms": 100.0, "brain_ms": 100.0}, {"stt_ms": 400.0, "playout_ms": None}]
    )
    assert axis == 400.0
    assert [[(b["part"], b["left"], b["width"]) for b in g] for g in groups] == [
        [("eot_wait", 0.0, 25.0), ("brain", 25.0, 25.0)],
        [("stt", 0.0, 100.0)],
    ]
