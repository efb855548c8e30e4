"""On the wire: an unmodified OCS drives sipagent as its DCS (``providers.brain =
"external"``).

A real `sipagent serve` (one worker, the answer_url app on a free port) sends the call's
events to the loopback `FakeOcs` (``external.ocs_url``), which acknowledges them with a
plain ``OK`` and answers later, the way OCS does: it POSTs ``text`` + ``audio_url`` (speech
its AI TTS made) to the app's ``/dcs/response`` (OCS's DCS_RESPONSE_URL).

* Inbound: Plivo's Dial (the app's /answer) reaches the worker; the softphone hears
  OCS's welcome and its answer to the question (transcribed), then OCS hangs up.
* Outbound: OCS starts a call through ``/dcs/calls`` (its DCS_URL); sipp answers as the
  callee, its RTP goes to a socket of the test, which hears OCS's welcome (a tone) after
  the silence of the pending greeting; the start event names the call by the ``call_id``
  that ``/dcs/calls`` answered.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.audio.pcm import write_wav
from tests.fakes.ocs import FakeOcs
from tests.helpers.sipp import answer_scenario, sipp_uas, wait_for_record
from tests.helpers.wire import answer as plivo_answer
from tests.helpers.wire import place_call, running_pool, word_overlap

pytestmark = [pytest.mark.wire, pytest.mark.timeout(240)]

OCS_TOKEN = "wire-ocs-token"
API_KEY = "wire-dcs-key"
WELCOME = "Welcome to the bank. How can I help you today?"
BALANCE = "Your account balance is one hundred dollars."


def wav_file(tmp: Path, name: str, pcm: bytes) -> bytes:
    path = tmp / name
    write_wav(path, pcm)
    return path.read_bytes()


def ocs_settings(ocs: FakeOcs, **extra: str) -> dict[str, str]:
    return {
        "providers__stt": "fake",
        "providers__tts": "fake",
        "providers__brain": "external",
        "external__ocs_url": ocs.url,
        "external__push_token": OCS_TOKEN,
        "pool__spare": "false",
        **extra,
    }


def test_an_inbound_caller_hears_the_replies_ocs_delivers_to_dcs_response(
    tmp_path: Path, speech_8k: Callable[[str], bytes]
) -> None:
    def answer(event: dict[str, Any]) -> dict[str, Any] | None:
        if event["event"] == "start":
            return {"type": "text", "text": WELCOME, "audio_url": ocs.audio_url("welcome.wav")}
        if event["event"] == "message" and event["turn"] == 1:
            return {"type": "text", "text": BALANCE, "audio_url": ocs.audio_url("balance.wav")}
        if event["event"] == "message":
            return {"text": "Goodbye.", "actions": ["hangup"]}
        return None

    with FakeOcs(answer, answer_delay_s=0.3) as ocs:
        ocs.files["welcome.wav"] = (wav_file(tmp_path, "w.wav", speech_8k(WELCOME)), "audio/wav")
        ocs.files["balance.wav"] = (wav_file(tmp_path, "b.wav", speech_8k(BALANCE)), "audio/wav")
        with running_pool(tmp_path, 1, None, **ocs_settings(ocs)) as pool:
            assert pool.app_url is not None
            ocs.response_url = f"{pool.app_url}/dcs/response"
            ocs.token = OCS_TOKEN
            call_uuid, target, headers = plivo_answer(pool, "+14155550123")
            report = place_call(
                target,
                *headers,
                "--say",
                "What is my balance?",
                "--say",
                "Thank you.",
                "--no-hangup",
                "--transcribe",
                "--timeout",
                "20",
            )
            ocs.wait_events("end", 1)
            deliveries = ocs.wait_deliveries(3)

    assert report["returncode"] == 0, report["stderr"][-2000:]
    (start,) = ocs.of_kind("start")
    assert start["call_id"] == call_uuid and start["call_uuid"] == call_uuid, start
    assert start["from"] == "+14155550123" and start["to"] == "+14155550100", start
    messages = ocs.of_kind("message")
    assert [m["turn"] for m in messages] == [1, 2], messages
    assert all(m["call_id"] == call_uuid and m["text"] for m in messages), messages
    assert ocs.of_kind("end")[0]["call_id"] == call_uuid
    assert deliveries == [(202, {"status": "accepted"})] * 3, deliveries
    # What the caller heard: OCS's welcome, then its answer to the question.
    assert report["greeting_ms"] is not None
    welcome = report["segments"][0]["text"]
    heard = report["steps"][0]["reply_text"]
    assert word_overlap(WELCOME, welcome) >= 0.35, welcome
    assert word_overlap(BALANCE, heard) >= 0.35, heard
    assert word_overlap(BALANCE, heard) > word_overlap(WELCOME, heard), heard
    assert report["ended_by"] == "agent"  # OCS's hangup action
    with sqlite3.connect(tmp_path / "records.db") as db:
        kinds = [
            (kind, text)
            for kind, text in db.execute("SELECT kind, agent_text FROM turns ORDER BY id")
        ]
    assert ("pushed", WELCOME) in kinds and ("pushed", BALANCE) in kinds, kinds
    assert ("pushed", "Goodbye.") in kinds, kinds
    assert not [k for k, _ in kinds if k == "apology"], kinds


def _tone_wav(tmp: Path) -> bytes:
    t = np.arange(8000) / 8000  # 1 s
    pcm = (np.sin(2 * np.pi * 1000 * t) * 12000).astype("<i2").tobytes()
    return wav_file(tmp, "tone.wav", pcm)


def _first_voice(rtp: socket.socket, within_s: float) -> tuple[float | None, float | None]:
    """(first RTP packet, first voiced packet) monotonic times."""
    first: float | None = None
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            packet = rtp.recv(2048)
        except TimeoutError:
            continue
        now = time.monotonic()
        first = first if first is not None else now
        if any(b not in (0xFF, 0x7F) for b in packet[12:]):
            return first, now
    return first, None


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) is not installed")
def test_ocs_starts_a_call_through_dcs_calls_and_the_callee_hears_its_reply(
    tmp_path: Path,
) -> None:
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.settimeout(0.2)
    delivered_at: list[float] = []

    def answer(event: dict[str, Any]) -> dict[str, Any] | None:
        if event["event"] == "start":
            delivered_at.append(time.monotonic() + 1.0)
            return {"type": "text", "text": "Hello from OCS.", "audio_url": ocs.audio_url("t.wav")}
        return None

    try:
        with FakeOcs(answer, answer_delay_s=1.0) as ocs:
            ocs.files["t.wav"] = (_tone_wav(tmp_path), "audio/wav")
            settings = ocs_settings(
                ocs,
                sip__rtp_timeout_s="3",
                outbound__api_key=API_KEY,
                outbound__window_start="00:00",
                outbound__window_end="23:59",
            )
            with running_pool(tmp_path, 1, None, **settings) as pool:
                assert pool.app_url is not None
                ocs.response_url = f"{pool.app_url}/dcs/response"
                ocs.token = OCS_TOKEN
                with sipp_uas(tmp_path, answer_scenario(rtp.getsockname()[1]), "callee") as (
                    port,
                    _log,
                    wait,
                ):
                    status, body = ocs.start_call(
                        f"{pool.app_url}/dcs/calls",
                        API_KEY,
                        {"to": f"sip:callee@127.0.0.1:{port}", "headers": {"X-Lead": "42"}},
                    )
                    assert status == 201, body
                    first, voiced = _first_voice(rtp, 30)
                    assert wait() == 0, "sipp did not see the call through (BYE from the agent)"
                (start,) = ocs.wait_events("start", 1)
                ocs.wait_events("end", 1)
                rec = wait_for_record(tmp_path, body["call_id"], "sip_end_at")
                deliveries = ocs.wait_deliveries(1)
    finally:
        rtp.close()
    # OCS knows the call by the id its DCS_URL request got back.
    assert start["call_id"] == body["call_id"] and start["sip_call_id"] == body["sip_call_id"]
    assert deliveries == [(202, {"status": "accepted"})], deliveries
    # Silence while OCS's welcome was pending, then the welcome itself.
    assert first is not None, "no RTP from the agent after answering"
    assert voiced is not None, "the callee never heard OCS's reply"
    assert voiced >= delivered_at[0] - 0.1, (voiced, delivered_at)
    assert rec["outcome"] == "answered" and rec["direction"] == "outbound", rec
    with sqlite3.connect(tmp_path / "records.db") as db:
        kinds = [
            (k, t)
            for k, t in db.execute(
                "SELECT kind, agent_text FROM turns WHERE call_id = ?", (rec["id"],)
            )
        ]
    assert ("pushed", "Hello from OCS.") in kinds, kinds
