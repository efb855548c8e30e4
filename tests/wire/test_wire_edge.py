"""The Kamailio edge on the wire: `sipagent serve --edge` gives the pool one SIP address.

Calls to the edge are spread over workers with a free slot (486 only when every worker is
full), a dead worker gets no new call, in-dialog requests pass the edge both ways, floods
and the RFC 4475 torture messages stop there, TLS is served, and serve instances on other
hosts take calls behind it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

from gateway.audio.pcm import write_wav
from gateway.devtools.demo import AgentProcess, free_udp_port, rtp_base_for
from tests.fakes.plivo_api import signed_request
from tests.helpers.edge import edge_pool, fake_env
from tests.helpers.kamailio import kamailio_binary, sipp_available
from tests.helpers.sipp import KEY as OUTBOUND_KEY
from tests.helpers.sipp import answer_scenario, sipp_uas
from tests.helpers.sipraw import Dialog, RawSip, SipStream, call, sdp_offer
from tests.helpers.wire import (
    POOL_TOKEN,
    clean_env,
    finish_call,
    place_call,
    post_json,
    start_call,
    wait_for,
)

pytestmark = [
    pytest.mark.wire,
    pytest.mark.timeout(300),
    pytest.mark.skipif(kamailio_binary() is None, reason="kamailio (Debian package) missing"),
]

DATA = Path(__file__).parents[1] / "data" / "rfc4475"
# What a scanner must not read in any answer.
SIGNATURE = re.compile(rb"kamailio|pjsip|pjsua|pjmedia|sipagent|x-nat", re.IGNORECASE)
_INCOMING = re.compile(r" w(\d+) gateway\.sip\.agent: incoming call (\S+)")


def edge_args(pool: AgentProcess) -> tuple[str, int]:
    return ("127.0.0.1", pool.port)


def worker_of(pool: AgentProcess, dialog: Dialog, timeout: float = 10.0) -> int:
    """Index of the worker that logged the call's arrival (the line may reach us after
    the call's 200 OK does: waits for it)."""
    call_id = dialog.answer.header("call-id")
    found: list[int] = []

    def logged() -> bool:
        for line in list(pool.lines):
            m = _INCOMING.search(line)
            if m and m.group(2) == call_id:
                found.append(int(m.group(1)))
                return True
        return False

    wait_for(logged, timeout, f"a worker's line about call {call_id}")
    return found[0]


def deaths(pool: AgentProcess) -> list[str]:
    return [line for line in pool.lines if ") died (" in line]


def test_calls_to_the_edge_fill_every_worker_then_486_and_dialogs_pass_it(tmp_path: Path) -> None:
    with edge_pool(tmp_path, 3) as pool, RawSip() as sip:
        edge = edge_args(pool)
        dialogs = [call(sip, edge, sdp_offer(port=42000 + 2 * i)) for i in range(12)]
        wait_for(lambda: sum(" incoming call " in ln for ln in pool.lines) >= 12, 10, "12 calls")
        spread = [worker_of(pool, d) for d in dialogs]
        assert sorted(spread.count(w) for w in range(3)) == [4, 4, 4], spread
        full = sip.final(sip.request("INVITE", edge, body=sdp_offer()), edge)
        assert full.code == 486, full
        # In-dialog requests follow the edge's Record-Route both ways.
        assert all(d.routes and str(pool.port) in d.routes[0] for d in dialogs)
        reinvite = sip.final(dialogs[0].request(sip, "INVITE", body=sdp_offer(port=43000)), edge)
        assert reinvite.code == 200, reinvite
        sip.send(dialogs[0].request(sip, "ACK"), edge)
        for d in dialogs:
            bye = sip.final(d.request(sip, "BYE"), edge)
            assert bye.code == 200, bye
        wait_for(lambda: sum(" ended: 200" in ln for ln in pool.lines) >= 12, 10, "12 ends")


def test_the_agents_own_bye_reaches_the_caller_through_the_edge(tmp_path: Path) -> None:
    with edge_pool(tmp_path, 1, conversation__no_input_timeout_s="2") as pool:
        report = place_call(f"sip:agent@127.0.0.1:{pool.port}", "--no-hangup", "--timeout", "20")
    assert report["answered"] and report["ended_by"] == "agent", report


def test_a_killed_worker_gets_no_new_call_and_its_replacement_does(tmp_path: Path) -> None:
    with edge_pool(tmp_path, 2, pool__spare="false") as pool, RawSip() as sip:
        edge = edge_args(pool)
        doomed, _ = pool.workers[0]
        os.kill(doomed, signal.SIGKILL)
        wait_for(lambda: any(f"(pid {doomed}) died" in ln for ln in pool.lines), 5, "the death")
        # The supervisor told the edge at once: no call waits for the dead worker. (One
        # relayed to it would fail over after the edge's 1 s answer timeout, which the
        # edge logs as "did not answer": checked below, once every line is in.)
        held = []
        for i in range(4):
            held.append(call(sip, edge, sdp_offer(port=42000 + 2 * i)))
            assert worker_of(pool, held[-1]) == 1
        wait_for(lambda: pool.workers[0][0] != doomed, 30, "worker 0 replaced")
        # Worker 1 is full now: the next calls can only go to the replacement.
        time.sleep(0.5)
        for i in range(4):
            held.append(call(sip, edge, sdp_offer(port=42100 + 2 * i), timeout=5.0))
            assert worker_of(pool, held[-1]) == 0
        for d in held:
            sip.final(d.request(sip, "BYE"), edge)
        unanswered = [ln for ln in pool.lines if "did not answer" in ln]
        assert not unanswered, unanswered


@pytest.mark.skipif(not sipp_available(), reason="sipp (Debian sip-tester) missing")
def test_an_invite_flood_through_the_edge_kills_no_worker(tmp_path: Path, speech_wav: Path) -> None:
    with edge_pool(tmp_path, 2, sip__allow_networks="127.0.0.0/8") as pool:
        target = f"127.0.0.1:{pool.port}"
        talking = start_call(
            f"sip:agent@{target}", *["--play", str(speech_wav)] * 3, "--timeout", "60"
        )
        wait_for(lambda: any(" incoming call " in ln for ln in pool.lines), 20, "the call")
        flood = subprocess.run(
            [
                *("sipp", "-sn", "uac", target, "-s", "agent", "-i", "127.0.0.2", "-p", "0"),
                *("-mp", str(free_udp_port()), "-r", "300", "-m", "1500", "-d", "100"),
                *("-nostdin", "-timeout", "15s", "-recv_timeout", "2000"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        report = finish_call(talking, timeout=120)
        assert not deaths(pool), deaths(pool)
        after = place_call(f"sip:agent@{target}", "--play", str(speech_wav))
    assert flood.returncode in (0, 1), flood.stderr[-1500:]  # 1: calls failed, as they should
    assert report["returncode"] == 0, report["stderr"][-2000:]
    assert all(s["reply_latency_ms"] is not None for s in report["steps"]), report["steps"]
    assert after["answered"] and after["steps"][0]["reply_latency_ms"] is not None, after


def test_the_rfc4475_torture_messages_through_the_edge_kill_no_worker(
    tmp_path: Path, speech_wav: Path
) -> None:
    messages = sorted(DATA.glob("*.dat"))
    assert len(messages) == 49
    with edge_pool(tmp_path, 2) as pool:
        edge = edge_args(pool)
        with RawSip() as sip:
            for path in messages:
                sip.send(path.read_bytes(), edge)
                sip.receive(0.05)
        time.sleep(1.0)
        assert not deaths(pool), deaths(pool)
        report = place_call(f"sip:agent@127.0.0.1:{pool.port}", "--play", str(speech_wav))
    assert report["answered"] and report["steps"][0]["reply_latency_ms"] is not None, report


def test_a_call_over_tls_is_answered(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    tls_port = free_udp_port()
    with edge_pool(
        tmp_path, 1, edge__tls_cert=str(cert), edge__tls_key=str(key), edge__tls_port=str(tls_port)
    ) as pool:
        target = ("127.0.0.1", tls_port)
        with SipStream(target, tls=True) as sip:
            dialog = call(sip, target, sdp_offer())
            assert dialog.answer.code == 200
            wait_for(lambda: any(" incoming call " in ln for ln in pool.lines), 5, "the call")
            bye = sip.final(dialog.request(sip, "BYE"), target)
        assert bye.code == 200, bye
        assert any("(udp, tcp, tls" in ln for ln in pool.lines)


def test_serve_hosts_behind_one_edge_both_take_calls(tmp_path: Path) -> None:
    hosts = {}
    with ExitStack() as stack:
        for i, host in enumerate(("127.0.0.2", "127.0.0.3")):
            port = free_udp_port(host)
            env = fake_env(
                tmp_path / host,
                sip__allow_networks="127.0.0.1/32",  # the edge's address only
                sip__rtp_port_start=str(rtp_base_for(port, 40 * 8) + 100 * i),
                pool__spare="false",
            )
            (tmp_path / host).mkdir()
            proc = AgentProcess(
                port, env=clean_env(**env), cwd=tmp_path / host, workers=1, host=host
            )
            stack.callback(proc.stop, 30)
            hosts[host] = (proc, port)
        for proc, _ in hosts.values():
            assert proc.wait_ready(120), "\n".join(proc.lines[-20:])
        remote = ",".join(f"{h}:{p}" for h, (_, p) in hosts.items())
        (tmp_path / "edge").mkdir()
        pool = stack.enter_context(edge_pool(tmp_path / "edge", 1, edge__workers=remote))
        edge = edge_args(pool)
        with RawSip() as sip:
            dialogs = [call(sip, edge, sdp_offer(port=44000 + 2 * i)) for i in range(6)]
            for host, (proc, _) in hosts.items():

                def took_a_call(p: AgentProcess = proc) -> bool:
                    return any(" incoming call " in ln for ln in p.lines)

                wait_for(took_a_call, 10, f"a call on {host}")
            for d in dialogs:
                assert sip.final(d.request(sip, "BYE"), edge).code == 200


def test_a_dead_kamailio_is_restarted(tmp_path: Path, speech_wav: Path) -> None:
    with edge_pool(tmp_path, 1) as pool:
        line = next(ln for ln in pool.lines if "Kamailio pid" in ln)
        kamailio = int(line.rsplit(" ", 1)[1])
        os.kill(kamailio, signal.SIGKILL)
        wait_for(
            lambda: any("kamailio (pid" in ln and "back up" in ln for ln in pool.lines),
            20,
            "restart",
        )
        report = place_call(f"sip:agent@127.0.0.1:{pool.port}", "--play", str(speech_wav))
    assert report["answered"] and report["steps"][0]["reply_latency_ms"] is not None, report


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory, speech_8k: Callable[[str], bytes]) -> Path:
    path = tmp_path_factory.mktemp("speech") / "hours.wav"
    write_wav(path, speech_8k("What are your opening hours?"))
    return path


def test_the_answer_url_app_dials_the_edge(tmp_path: Path) -> None:
    with edge_pool(
        tmp_path, 2, app__enabled="true", app__listen_port="0", app__auth_token=POOL_TOKEN
    ) as pool:
        assert pool.app_url is not None
        params = {"CallUUID": str(uuid.uuid4()), "From": "+14155550100", "To": "+14155550199"}
        status, body = signed_request(pool.app_url + "/answer", params, POOL_TOKEN)
    assert status == 200, body
    user = ET.fromstring(body).find("Dial/User")
    assert user is not None and user.text == f"sip:agent@127.0.0.1:{pool.port}", body


@pytest.mark.skipif(not sipp_available(), reason="sipp (Debian sip-tester) missing")
def test_a_call_the_agent_places_leaves_through_the_edge(tmp_path: Path) -> None:
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    with (
        closing(rtp),
        edge_pool(
            tmp_path,
            1,
            app__enabled="true",
            app__listen_port="0",
            app__auth_token=POOL_TOKEN,
            sip__rtp_timeout_s="3",
            outbound__api_key=OUTBOUND_KEY,
            outbound__window_start="00:00",
            outbound__window_end="23:59",
        ) as pool,
    ):
        assert pool.app_url is not None
        # A callee that keeps the route set (RFC 3261 12.1.1): Record-Route in its answers.
        scenario = answer_scenario(rtp.getsockname()[1]).replace(
            "[last_CSeq:]", "[last_CSeq:]\n[last_Record-Route:]", 2
        )
        with sipp_uas(tmp_path, scenario, "callee") as (
            port,
            log,
            wait,
        ):
            status, body = post_json(
                f"{pool.app_url}/calls", {"to": f"sip:callee@127.0.0.1:{port}"}, token=OUTBOUND_KEY
            )
            assert status == 201, body
            # The agent hangs up when the callee's RTP stops: its BYE comes through the edge.
            assert wait() == 0, "sipp did not see the call through"
            messages = log.read_text(errors="replace")
    invite = messages[messages.index("INVITE sip:callee") :]
    # The edge relayed it (its Via on top, its Record-Route), not the worker directly.
    assert f"Via: SIP/2.0/UDP 127.0.0.1:{pool.port}" in invite.split("\n\n")[0], invite[:800]
    assert "Record-Route: <sip:127.0.0.1:" in invite.split("\n\n")[0], invite[:800]
    bye = messages[messages.index("BYE sip:") :]
    assert f"Via: SIP/2.0/UDP 127.0.0.1:{pool.port}" in bye.split("\n\n")[0], bye[:800]


def test_a_draining_pool_answers_503_at_the_edge_and_names_no_software(tmp_path: Path) -> None:
    with edge_pool(tmp_path, 1, pool__drain_timeout_s="30") as pool:
        edge = edge_args(pool)
        answers = []
        with RawSip() as sip:
            talking = call(sip, edge, sdp_offer())
            answers.append(talking.answer)
            answers.append(sip.final(sip.request("OPTIONS", edge), edge))
            answers.append(sip.final(sip.request("REGISTER", edge), edge))
            with RawSip("127.0.0.2") as stranger:
                answers.append(stranger.final(stranger.request("OPTIONS", edge), edge))
            os.killpg(pool.proc.pid, signal.SIGTERM)
            wait_for(lambda: any("sipagent: draining" in ln for ln in pool.lines), 10, "drain")
            refused = sip.final(sip.request("INVITE", edge, body=sdp_offer()), edge)
            ping = sip.final(sip.request("OPTIONS", edge), edge)
            answers += [refused, ping]
            # The call in progress goes on and ends normally through the edge.
            assert sip.final(talking.request(sip, "BYE"), edge).code == 200
        try:
            code = pool.proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, "\n".join(pool.lines[-60:])
    assert [a.code for a in answers] == [200, 200, 405, 403, 503, 503], answers
    assert (refused.header("retry-after") or "").isdigit(), refused.raw
    for answer in answers:
        assert not SIGNATURE.search(answer.raw), answer.raw.decode(errors="replace")


def test_workers_behind_the_edge_take_media_on_the_edges_address(
    tmp_path: Path, speech_wav: Path
) -> None:
    # Signalling goes through the edge to workers on loopback; RTP goes straight to the
    # worker, so it must be bound and advertised on the address callers reach.
    host = "127.0.0.5"
    with edge_pool(tmp_path, 1, host=host) as pool:
        edge = (host, pool.port)
        with RawSip() as sip:
            dialog = call(sip, edge, sdp_offer())
            sdp = dialog.answer.raw.partition(b"\r\n\r\n")[2].decode()
            assert sip.final(dialog.request(sip, "BYE"), edge).code == 200
        report = place_call(f"sip:agent@{host}:{pool.port}", "--play", str(speech_wav))
    assert f"c=IN IP4 {host}" in sdp, sdp
    assert "127.0.0.1" not in sdp, sdp
    assert report["answered"] and report["steps"][0]["reply_latency_ms"] is not None, report


def test_an_invite_without_sdp_passes_the_edge_as_a_late_offer(tmp_path: Path) -> None:
    # The edge refuses only SDP a worker cannot take; a worker takes a late offer (RFC 3261
    # 13.2.1: the offer in its 200, the answer in the ACK), so no SDP is let through.
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.settimeout(10)
    with closing(rtp), edge_pool(tmp_path, 1) as pool, RawSip() as sip:
        edge = edge_args(pool)
        answer = sdp_offer(port=rtp.getsockname()[1], codecs="0 101")
        dialog = call(sip, edge, b"", ack_body=answer)
        offer = dialog.answer.raw.partition(b"\r\n\r\n")[2]
        packet = rtp.recv(2048)  # the agent's audio, sent where the ACK's answer said
        assert sip.final(dialog.request(sip, "BYE"), edge).code == 200
    assert b"m=audio" in offer and b"PCMU" in offer, offer
    assert len(packet) >= 12 and packet[0] >> 6 == 2, packet[:12]  # RTP version 2
