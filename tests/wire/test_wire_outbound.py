"""On the wire: ``POST /calls`` via=sip makes a real `sipagent serve` worker call out.

The callee is sipp as a UAS (scenarios written by the test).  Answering, its SDP points
the agent's RTP at a UDP socket of the test, so the test hears what the agent sends: the
agent must speak first (a non-silent packet soon after the first one).  The INVITE must
carry the configured and the request's headers (sipp's message log), and the call record
must say how the call went: answered, busy when sipp answers 486, no-answer when it only
rings past ``outbound.ring_timeout_s`` (the agent CANCELs).  The answered call
ends by the agent's RTP timeout (the test never sends audio back), set to 3 s.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from tests.fakes.http import get_json
from tests.helpers.kamailio import kamailio_binary, running_kamailio
from tests.helpers.sipp import _REPLY_HEAD, KEY, answer_scenario, sipp_uas, wait_for_record
from tests.helpers.wire import post_json, running_pool, wait_for

pytestmark = [
    pytest.mark.wire,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) is not installed"),
]


BUSY_SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="busy">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 486 Busy Here
{_REPLY_HEAD}
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"""


NO_ANSWER_SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="no-answer">
  <recv request="INVITE">
    <action>
      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="cseq"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 180 Ringing
{_REPLY_HEAD}
Content-Length: 0

]]></send>
  <recv request="CANCEL"/>
  <send><![CDATA[
SIP/2.0 200 OK
{_REPLY_HEAD}
Content-Length: 0

]]></send>
  <send><![CDATA[
SIP/2.0 487 Request Terminated
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: [$cseq] INVITE
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"""


def assert_agent_speaks_first(rtp: socket.socket) -> None:
    """The agent's RTP (sent to `rtp`) turns from silence to speech within 3 s of the
    first packet: it greets the callee without waiting for them."""
    first: float | None = None
    voiced: float | None = None
    deadline = time.monotonic() + 20
    while voiced is None and time.monotonic() < deadline:
        try:
            packet = rtp.recv(2048)
        except TimeoutError:
            continue
        now = time.monotonic()
        first = first if first is not None else now
        payload = packet[12:]
        if any(b not in (0xFF, 0x7F) for b in payload):
            voiced = now
    assert first is not None, "no RTP from the agent after answering"
    assert voiced is not None, "the agent sent only silence"
    assert voiced - first < 3.0, f"greeting {voiced - first:.2f} s after answer"


def turn_kinds(tmp: Path, record_id: int, timeout: float = 30.0) -> list[str]:
    """The kinds of a call's recorded turns, once there is one. The call's end can be
    recorded before its last turn (here the greeting, cut off when the callee went quiet)
    reaches the store: a loaded full run queried in between and found none."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(tmp / "records.db") as db:
            query = "SELECT kind FROM turns WHERE call_id = ? ORDER BY id"
            kinds = [k for (k,) in db.execute(query, (record_id,))]
        if kinds or time.monotonic() > deadline:
            return kinds
        time.sleep(0.1)


def test_outbound_sip_calls_answered_busy_and_unanswered(tmp_path: Path) -> None:
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.settimeout(0.2)
    settings = {
        "providers__stt": "fake",
        "providers__tts": "fake",
        "pool__spare": "false",
        "sip__rtp_timeout_s": "3",
        "outbound__ring_timeout_s": "2",
        "outbound__api_key": KEY,
        "outbound__headers": '{"X-Campaign": "spring"}',
        # Every hour of the day is inside the calling window.
        "outbound__window_start": "00:00",
        "outbound__window_end": "23:59",
    }
    try:
        with running_pool(tmp_path, 1, None, **settings) as pool:
            assert pool.app_url is not None
            calls = f"{pool.app_url}/calls"

            # 1. Answered: the agent speaks first, the record says answered.
            with sipp_uas(tmp_path, answer_scenario(rtp.getsockname()[1]), "answer") as (
                port,
                log,
                wait,
            ):
                status, body = post_json(
                    calls,
                    {"to": f"sip:callee@127.0.0.1:{port}", "headers": {"X-Lead": "42"}},
                    token=KEY,
                )
                assert status == 201, body
                call_id = body["call_id"]
                assert_agent_speaks_first(rtp)
                assert wait() == 0, "sipp did not see the call through (BYE from the agent)"
                invite = log.read_text(errors="replace")
                assert "INVITE sip:callee@127.0.0.1" in invite
                assert "X-Campaign: spring" in invite and "X-Lead: 42" in invite

            rec = wait_for_record(tmp_path, call_id, "sip_end_at")
            assert rec["direction"] == "outbound" and rec["via"] == "sip"
            assert rec["outcome"] == "answered", rec
            assert rec["start_at"] and rec["answer_at"], rec
            assert rec["end_reason"] == "rtp timeout", rec
            assert turn_kinds(tmp_path, rec["id"])[:1] == ["greeting"]

            # 2. Busy: 486 from the callee is recorded as busy.
            with sipp_uas(tmp_path, BUSY_SCENARIO, "busy") as (port, _log, wait):
                status, body = post_json(calls, {"to": f"sip:callee@127.0.0.1:{port}"}, token=KEY)
                assert status == 201, body
                assert wait() == 0
            rec = wait_for_record(tmp_path, body["call_id"], "outcome")
            assert rec["outcome"] == "busy", rec
            assert rec["end_reason"].startswith("486"), rec
            assert not rec["start_at"], rec  # never answered: no conversation

            # 3. No answer: ringing past outbound.ring_timeout_s is cancelled, no-answer.
            with sipp_uas(tmp_path, NO_ANSWER_SCENARIO, "no-answer") as (port, _log, wait):
                started = time.monotonic()
                status, body = post_json(calls, {"to": f"sip:callee@127.0.0.1:{port}"}, token=KEY)
                assert status == 201, body
                assert wait() == 0
                assert 1.5 < time.monotonic() - started < 6.0
            rec = wait_for_record(tmp_path, body["call_id"], "outcome")
            assert rec["outcome"] == "no-answer", rec
            assert rec["end_reason"] == "no answer in 2 s", rec
    finally:
        rtp.close()


@pytest.mark.skipif(kamailio_binary() is None, reason="kamailio (Debian package) missing")
def test_a_number_dialled_in_register_mode_goes_through_the_registrar_with_digest(
    tmp_path: Path,
) -> None:
    """Register mode, no trunk: the worker sends the INVITE for a number to its registrar,
    answers the registrar's 407 challenge with its account, and the registrar relays the
    call to the "PSTN" (sipp), where the agent speaks first."""
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.settimeout(0.2)
    number = "+14155550123"
    try:
        with (
            sipp_uas(tmp_path, answer_scenario(rtp.getsockname()[1]), "pstn") as (
                pstn_port,
                log,
                wait,
            ),
            running_kamailio(
                {"agent1": "secret1"}, max_expires=60, pstn=f"127.0.0.1:{pstn_port}"
            ) as kam,
        ):
            config = tmp_path / "register.toml"
            config.write_text(
                f"""
[sip]
mode = "register"
rtp_timeout_s = 3

[registration]
registrar = "{kam.address}"
accounts = [{{ username = "agent1", password = "secret1" }}]

[providers]
stt = "fake"
tts = "fake"

[outbound]
api_key = "{KEY}"
window_start = "00:00"
window_end = "23:59"
"""
            )
            with running_pool(tmp_path, 1, config, pool__spare="false") as pool:
                app = pool.app_url
                assert app is not None
                wait_for(
                    lambda: get_json(app + "/readyz")[1]["workers"][0]["registered"],
                    20,
                    "agent1 to register",
                )
                status, body = post_json(f"{app}/calls", {"to": number}, token=KEY)
                assert status == 201, body
                assert body["uri"] == f"sip:{number}@{kam.address}", body
                assert_agent_speaks_first(rtp)
                assert wait() == 0, "sipp did not see the call through (BYE from the agent)"
                rec = wait_for_record(tmp_path, body["call_id"], "sip_end_at")
        assert rec["outcome"] == "answered", rec
        # The registrar challenged the INVITE, then relayed the authenticated retry.
        sip_call_id = body["sip_call_id"]
        challenged = [e for e in kam.events("CHALLENGED") if e.fields.get("callid") == sip_call_id]
        relayed = [e for e in kam.events("PSTN") if e.fields.get("callid") == sip_call_id]
        assert challenged and challenged[0].fields["user"] == "agent1", challenged
        assert len(relayed) == 1 and relayed[0].fields["from"] == "agent1", relayed
        assert relayed[0].user == number
        assert f"INVITE sip:{number}@{kam.address}" in log.read_text(errors="replace")
    finally:
        rtp.close()
