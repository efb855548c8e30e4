"""Real calls over SIP/RTP on 127.0.0.1: an agent process and softphone processes."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.audio.pcm import write_wav
from gateway.devtools.demo import AgentProcess
from gateway.providers.scripted import DEMO_PLAYBOOK, Playbook, load_playbook
from tests.helpers.wire import (
    count_lines,
    finish_call,
    place_call,
    running_agent,
    start_call,
    uri,
    wait_for,
    word_overlap,
)

pytestmark = [pytest.mark.wire, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def playbook() -> Playbook:
    return load_playbook(DEMO_PLAYBOOK)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with running_agent(tmp_path_factory.mktemp("agent")) as a:
        yield a


def reply_of(playbook: Playbook, intent: str) -> str:
    return next(i.reply for i in playbook.intents if i.name == intent)


def best_intent(playbook: Playbook, heard: str) -> str:
    """Which playbook reply the transcript of the agent's audio is closest to."""
    return max(playbook.intents, key=lambda i: word_overlap(i.reply, heard)).name


def test_call_greets_and_answers_a_question(agent: AgentProcess, playbook: Playbook) -> None:
    r = place_call(uri(agent), "--say", "What are your opening hours?", "--transcribe")
    assert r["returncode"] == 0, r
    assert r["answered"] and r["status_code"] == 200
    assert r["greeting_ms"] is not None and r["greeting_ms"] < 1000
    greeting = r["segments"][0]["text"]
    assert word_overlap(playbook.greeting, greeting) >= 0.5, greeting
    step = r["steps"][0]
    assert step["ok"]
    assert step["reply_latency_ms"] < 1500, step
    heard = step["reply_text"]
    # The softphone's offline recogniser on 8 kHz Piper speech varies from run to run (0.45
    # was seen once in CI for a clean reply); the intent check below is the sharp one.
    assert word_overlap(reply_of(playbook, "hours"), heard) >= 0.35, heard
    assert best_intent(playbook, heard) == "hours"
    assert r["ended_by"] == "caller"
    wait_for(lambda: count_lines(agent, "ended: 200") >= 1, 5, "the agent to log the end")


def test_barge_in_stops_the_agent_and_answers_the_interruption(
    agent: AgentProcess, playbook: Playbook
) -> None:
    # The menu reply is ~20 s long; we talk over it 1.5 s in.
    r = place_call(
        uri(agent),
        "--say",
        "What is on the menu?",
        "--barge",
        "What are your opening hours?",
        "--barge-after",
        "1.5",
        "--transcribe",
    )
    assert r["returncode"] == 0, r
    menu, barge = r["steps"]
    assert menu["ok"] and barge["ok"]
    assert barge["barge_stop_ms"] is not None
    assert 0 < barge["barge_stop_ms"] <= 300, barge
    # The interrupted menu reply is far shorter than the full reply.
    menu_seg = next(s for s in r["segments"] if s["start_ms"] >= menu["end_of_speech_ms"])
    assert menu_seg["duration_ms"] < 6000, menu_seg
    assert best_intent(playbook, barge["reply_text"]) == "hours", barge["reply_text"]
    assert count_lines(agent, "barge-in") >= 1


def test_agent_hangs_up_after_goodbye(agent: AgentProcess) -> None:
    before = len(agent.turns())
    # The offline recogniser rarely gets a bare "goodbye" on 8 kHz audio ("the body"), but
    # always "nothing else", one of the goodbye intent's phrases.
    r = place_call(uri(agent), "--say", "I have nothing else to ask, goodbye.", "--no-hangup")
    assert r["returncode"] == 0, r
    assert r["ended_by"] == "agent"
    wait_for(lambda: count_lines(agent, "agent hangup") >= 1, 5, "agent hangup log line")
    # It was the caller's goodbye that ended the call, not the no-input timeout.
    turns = agent.turns()[before:]
    assert [(t["kind"], t["intent"]) for t in turns] == [
        ("greeting", "greeting"),
        ("reply", "goodbye"),
    ], turns
    assert turns[-1]["actions"] == ["hangup"]


def test_non_g711_offer_is_refused_with_488(agent: AgentProcess) -> None:
    r = place_call(uri(agent), "--codecs", "GSM,speex")
    assert r["returncode"] == 1
    assert r["status_code"] == 488, r
    assert not r["answered"]
    # Still healthy: the next call converses.
    ok = place_call(uri(agent), "--say", "Where are you located?")
    assert ok["returncode"] == 0, ok


def test_pcma_only_offer_with_a_played_wav_is_answered(
    agent: AgentProcess,
    playbook: Playbook,
    tmp_path: Path,
    speech_8k: Callable[[str], bytes],
) -> None:
    wav = tmp_path / "question.wav"
    write_wav(wav, speech_8k("Where are you located?"))
    r = place_call(uri(agent), "--codecs", "PCMA", "--play", str(wav), "--transcribe")
    assert r["returncode"] == 0, r
    assert best_intent(playbook, r["steps"][0]["reply_text"]) == "address"


def test_malformed_sip_is_survived(agent: AgentProcess) -> None:
    junk = [
        b"\x00\xff" * 200,
        b"INVITE\r\n\r\n",
        b"INVITE sip:agent@127.0.0.1 SIP/2.0\r\nVia: nonsense\r\nContent-Length: 99999\r\n\r\nv=0",
        b"SIP/2.0 200 OK\r\nCSeq: x\r\n\r\n",
        (
            b"INVITE sip:agent@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKjunk\r\n"
            b"From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:agent@127.0.0.1>\r\n"
            b"Call-ID: junk-1\r\nCSeq: 1 INVITE\r\nContact: <sip:x@127.0.0.1:9>\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: 20\r\n\r\n"
            b"v=0\r\nm=audio x RTP\r\n"
        ),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for datagram in junk:
            s.sendto(datagram, ("127.0.0.1", agent.port))
    time.sleep(0.5)
    assert agent.proc.poll() is None
    r = place_call(uri(agent), "--say", "Where are you located?")
    assert r["returncode"] == 0, r


def test_four_calls_then_busy_then_a_slot_frees(agent: AgentProcess, tmp_path: Path) -> None:
    # Three callers stay on the line; the first leaves after its question.
    ended_before = count_lines(agent, " ended: ")
    incoming_before = count_lines(agent, "incoming call")
    procs = [start_call(uri(agent), "--say", "Where are you located?")]
    procs += [
        start_call(uri(agent), "--say", "What are your opening hours?", "--hold", "60")
        for _ in range(3)
    ]
    wait_for(
        lambda: count_lines(agent, "incoming call") >= incoming_before + 4,
        60,
        "four calls to be answered",
    )
    busy = place_call(uri(agent))
    assert busy["status_code"] == 486, busy
    first = finish_call(procs[0])
    assert first["returncode"] == 0, first
    wait_for(
        lambda: count_lines(agent, " ended: ") >= ended_before + 1, 10, "the first call to end"
    )
    sixth = place_call(uri(agent), "--say", "Where are you located?")
    assert sixth["returncode"] == 0, sixth
    # The three holders were on the line all along; SIGUSR1 ends their wait (they hang up).
    assert all(p.poll() is None for p in procs[1:])
    for p in procs[1:]:
        p.send_signal(signal.SIGUSR1)
    for p in procs[1:]:
        r = finish_call(p)
        assert r["returncode"] == 0, r
        assert r["steps"][0]["ok"]


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing")
def test_sipp_uac_pcap_is_answered_greeted_and_ended(agent: AgentProcess, tmp_path: Path) -> None:
    pcaps = Path("/usr/share/sip-tester")
    (tmp_path / "pcap").mkdir()
    for pcap in pcaps.glob("*.pcap"):
        (tmp_path / "pcap" / pcap.name).symlink_to(pcap)
    turns_before = len(agent.turns())
    proc = subprocess.run(
        [
            "sipp",
            "-sn",
            "uac_pcap",
            f"127.0.0.1:{agent.port}",
            "-s",
            "agent",
            "-m",
            "1",
            "-l",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-mp",
            "26000",
            "-nostdin",
            "-timeout",
            "60s",
            "-trace_err",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wait_for(lambda: count_lines(agent, "sipp") >= 1, 5, "sipp's call in the log")
    sipp_line = next(line for line in agent.lines if "incoming call" in line and "sipp" in line)
    call_id = sipp_line.split("incoming call ")[1].split(" ")[0]
    wait_for(
        lambda: count_lines(agent, f"call {call_id} ended: 200") == 1,
        10,
        "the sipp call to end with 200",
    )
    greeting = [
        t
        for t in agent.turns()[turns_before:]
        if t["call_id"] == call_id and t["kind"] == "greeting"
    ]
    assert greeting and greeting[0]["first_audio_at"], "agent did not greet sipp"


def test_agent_still_takes_calls_after_all_of_the_above(agent: AgentProcess) -> None:
    r = place_call(uri(agent), "--say", "What are your opening hours?")
    assert r["returncode"] == 0, r
    time.sleep(0.2)
    assert agent.proc.poll() is None
