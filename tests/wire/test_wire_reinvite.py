"""Mid-call re-negotiation over SIP: the caller holds the agent (mid-reply and while it is
quiet), switches the call from PCMU to PCMA, refreshes the session by UPDATE, all with
RFC 4028 session timers on, and the conversation carries on.

The agent runs the fake providers: its speech is a tone of 60 ms per character, so how
much of a reply the caller heard can be checked against the reply's text."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.devtools.demo import AgentProcess, free_udp_port
from gateway.providers.fake import TONE_MS_PER_CHAR
from tests.helpers.wire import count_lines, place_call, running_agent, uri, wait_for

pytestmark = [pytest.mark.wire, pytest.mark.timeout(180)]

NO_INPUT_S = 2.5
HOLD_S = 4.0  # longer than the no-input timeout: a held call is not "no input"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with running_agent(
        tmp_path_factory.mktemp("reinvite"),
        providers__stt="fake",
        providers__tts="fake",
        providers__brain="fake",
        conversation__no_input_timeout_s=str(NO_INPUT_S),
    ) as a:
        yield a


def segments_between(r: dict[str, Any], start_ms: float, end_ms: float) -> list[dict[str, Any]]:
    return [s for s in r["segments"] if start_ms <= s["start_ms"] < end_ms]


def test_hold_codec_switch_and_session_refresh_keep_the_conversation(
    agent: AgentProcess,
) -> None:
    turns_before = len(agent.turns())
    r = place_call(
        uri(agent),
        "--session-expires",
        "90",
        "--barge-after",
        "0.6",
        "--put-on-hold",  # 0.6 s into the greeting
        str(HOLD_S),
        "--switch-codec",
        "PCMA",
        "--put-on-hold",  # the agent is quiet now
        str(HOLD_S),
        "--refresh",
        "--say",
        "What are your opening hours?",
    )
    assert r["returncode"] == 0, r
    mid_reply, switch, quiet, refresh, say = r["steps"]
    assert all(s["ok"] for s in r["steps"]), r["steps"]

    wait_for(lambda: len(agent.turns()) >= turns_before + 2, 5, "the agent's turns")
    turns = agent.turns()[turns_before:]
    # The hold announcement was not taken for speech, and holding was not "no input".
    assert [t["kind"] for t in turns] == ["greeting", "reply"], turns
    greeting, reply = turns
    assert str(reply["user_text"]).startswith("utterance of"), reply

    # Held 0.6 s into the greeting: nothing arrives while held, and what was left of the
    # greeting plays after the caller takes the agent off hold - none of it is lost.
    held_from, held_to = mid_reply["sent_at_ms"], mid_reply["end_of_speech_ms"]
    assert held_to - held_from >= HOLD_S * 1000 - 100
    assert not segments_between(r, held_from + 200, held_to), r["segments"]
    before = segments_between(r, 0, held_from)
    after = segments_between(r, held_to, switch["sent_at_ms"])
    assert before and len(after) == 1, r["segments"]
    assert mid_reply["reply_latency_ms"] < 400, mid_reply
    heard = sum(s["duration_ms"] for s in before + after)
    expected = len(str(greeting["agent_text"])) * TONE_MS_PER_CHAR
    assert abs(heard - expected) <= 200, (heard, expected, r["segments"])

    # Held while quiet for longer than the no-input timeout: no "are you there?".
    assert not segments_between(r, quiet["sent_at_ms"], say["sent_at_ms"]), r["segments"]

    # The call moved to PCMA, and the agent still hears and answers on it.
    assert r["codecs"][0] == "PCMU/8000" and r["codecs"][-1] == "PCMA/8000", r["codecs"]
    assert say["reply_latency_ms"] < 1500, say
    wait_for(lambda: count_lines(agent, "codec PCMU/8000 -> PCMA/8000") == 1, 5, "codec log")
    assert count_lines(agent, ": on hold") == 2
    assert count_lines(agent, ": taken off hold") == 2

    # Session timers: every 2xx to our INVITE, re-INVITEs and UPDATE carried the interval.
    # (INVITE, hold, unhold, PCMA, hold, unhold, UPDATE.)
    assert len(r["session_expires"]) == 7, r["session_expires"]
    assert all(v.startswith("90") for v in r["session_expires"]), r["session_expires"]
    assert refresh["ok"]


def _invite(cseq: int, version: int, direction: str) -> str:
    return f"""  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: {cseq} INVITE
Contact: <sip:sipp@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=sipp 1 {version} IN IP4 [local_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a={direction}
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: {cseq} ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
"""


# Answered, held with a=inactive (no media either way) for longer than the no-input
# timeout, resumed, then hung up.
INACTIVE_HOLD_SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="hold with a=inactive">
{_invite(1, 1, "sendrecv")}
  <pause milliseconds="600"/>
{_invite(2, 2, "inactive")}
  <pause milliseconds="{int(HOLD_S * 1000)}"/>
{_invite(3, 3, "sendrecv")}
  <pause milliseconds="2500"/>
  <send retrans="500"><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 4 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing")
def test_hold_with_inactive_media_pauses_the_agent(agent: AgentProcess, tmp_path: Path) -> None:
    scenario = tmp_path / "inactive.xml"
    scenario.write_text(INACTIVE_HOLD_SCENARIO)
    turns_before = len(agent.turns())
    proc = subprocess.run(
        [
            "sipp",
            "-sf",
            str(scenario),
            f"127.0.0.1:{agent.port}",
            "-s",
            "agent",
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-mp",
            str(free_udp_port() & ~1),
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    call_id = next(
        line.split("incoming call ")[1].split(" ")[0]
        for line in agent.lines
        if "incoming call" in line and "sipp" in line
    )
    wait_for(lambda: count_lines(agent, f"call {call_id} ended") == 1, 5, "the call to end")
    assert count_lines(agent, f"call {call_id}: on hold") == 1
    assert count_lines(agent, f"call {call_id}: taken off hold") == 1
    turns = [t for t in agent.turns()[turns_before:] if t["call_id"] == call_id]
    # The greeting was paused by the hold and finished after it; no "are you there?".
    assert [t["kind"] for t in turns] == ["greeting"], turns
