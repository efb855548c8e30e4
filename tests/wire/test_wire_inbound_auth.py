"""Inbound digest authentication on the wire (``sip.inbound_auth``, no edge).

A worker with credentials challenges every new INVITE in its SIP guard, before pjsua2
opens media or the conversation starts. The caller is the pjsua2 softphone
(``sipagent call --auth``), which answers the 401 the way Plivo's Dial does when
``<User sipAuthUsername=... sipAuthPassword=...>`` is set (Plivo answers a 401/407 of the
dialled URI with them: https://plivo.com/docs/voice/concepts/sip-authentication). A
replayed INVITE is sent raw, with the exact ``Authorization`` a good call used.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtools.demo import free_udp_port
from gateway.sip.digest import digest_response
from tests.fakes.plivo import PlivoEmulator, inbound_params
from tests.helpers.edge import edge_pool
from tests.helpers.kamailio import WorkerProcess, kamailio_binary, running_worker, worker_settings
from tests.helpers.wire import POOL_TOKEN, place_call, running_pool, wait_for

pytestmark = [pytest.mark.wire, pytest.mark.timeout(180)]

USER, PASSWORD, REALM = "plivo", "s3cret-pass-42", "sipagent"


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerProcess]:
    port = free_udp_port()
    auth = {"username": USER, "password": PASSWORD, "realm": REALM}
    settings = worker_settings(port, sip={"inbound_auth": auth})
    with running_worker(tmp_path, settings) as w:
        yield w


def _uri(worker: WorkerProcess) -> str:
    return f"sip:agent@{worker.target}"


def test_a_caller_with_the_credentials_is_answered_and_others_never_reach_the_agent(
    worker: WorkerProcess,
) -> None:
    missing = place_call(_uri(worker), "--timeout", "5")
    assert missing["status_code"] == 401, missing
    wrong = place_call(_uri(worker), "--auth", f"{USER}:not-the-password", "--timeout", "5")
    assert wrong["status_code"] == 401, wrong
    worker.wait_line("refused with 401: wrong credentials", timeout=5)
    # Neither call got as far as pjsua2, let alone the conversation.
    assert worker.count("incoming call") == 0, worker.tail()
    assert worker.count(" TURN ") == 0

    good = place_call(_uri(worker), "--auth", f"{USER}:{PASSWORD}")
    assert good["returncode"] == 0 and good["status_code"] == 200, good
    assert good["answered"] and good["segments"], good
    assert worker.count("incoming call") == 1, worker.tail()


def _invite(target_port: int, src_port: int, call_id: str, auth: str | None) -> bytes:
    uri = f"sip:agent@127.0.0.1:{target_port}"
    lines = [
        f"INVITE {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{src_port};branch=z9hG4bK{uuid.uuid4().hex};rport",
        "Max-Forwards: 70",
        f"From: <sip:replay@127.0.0.1>;tag={uuid.uuid4().hex[:8]}",
        f"To: <{uri}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:replay@127.0.0.1:{src_port}>",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _final(sock: socket.socket, timeout: float = 5.0) -> str:
    """The first final response on `sock` (provisional ones skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        data = sock.recv(65535).decode("utf-8", "replace")
        if not re.match(r"SIP/2\.0 1\d\d ", data):
            return data
    raise AssertionError("no final response")


def test_a_replayed_authorization_is_challenged_again(worker: WorkerProcess) -> None:
    """Credentials computed for one nonce open one call: the same Authorization on a new
    INVITE gets a fresh challenge (stale), never a call."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        src = sock.getsockname()[1]
        call_id = f"replay-{uuid.uuid4().hex}"
        sock.sendto(_invite(worker.port, src, call_id, None), ("127.0.0.1", worker.port))
        challenge = _final(sock)
        assert challenge.startswith("SIP/2.0 401 "), challenge
        nonce = re.search(r'nonce="([^"]+)"', challenge)
        assert nonce, challenge
        uri = f"sip:agent@127.0.0.1:{worker.port}"
        response = digest_response(
            USER, REALM, PASSWORD, "INVITE", uri, nonce[1], qop="auth", nc="00000001", cnonce="c1"
        )
        auth = (
            f'Digest username="{USER}", realm="{REALM}", nonce="{nonce[1]}", uri="{uri}",'
            f' response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c1"'
        )
        sock.sendto(_invite(worker.port, src, call_id, auth), ("127.0.0.1", worker.port))
        worker.wait_line("incoming call", timeout=10)
        first = _final(sock, timeout=10)
        assert not first.startswith("SIP/2.0 401 "), first

        replay_id = f"replay-{uuid.uuid4().hex}"
        sock.sendto(_invite(worker.port, src, replay_id, auth), ("127.0.0.1", worker.port))
        replayed = ""
        deadline = time.monotonic() + 5
        while replay_id not in replayed and time.monotonic() < deadline:
            replayed = _final(sock)
        assert replayed.startswith("SIP/2.0 401 ") and "stale=true" in replayed, replayed
    assert worker.count("incoming call") == 1, worker.tail()


@pytest.mark.skipif(kamailio_binary() is None, reason="kamailio (Debian package) missing")
def test_the_edge_challenges_calls_and_only_authenticated_ones_reach_a_worker(
    tmp_path: Path,
) -> None:
    with edge_pool(
        tmp_path,
        1,
        sip__inbound_auth__username=USER,
        sip__inbound_auth__password=PASSWORD,
    ) as pool:
        target = f"sip:agent@127.0.0.1:{pool.port}"
        missing = place_call(target, "--timeout", "5")
        assert missing["status_code"] == 407, missing
        wrong = place_call(target, "--auth", f"{USER}:not-the-password", "--timeout", "5")
        assert wrong["status_code"] == 407, wrong
        wait_for(
            lambda: any("wrong credentials for plivo" in line for line in list(pool.lines)),
            5,
            "the edge's warning",
        )
        assert not any("incoming call" in line for line in list(pool.lines))

        good = place_call(target, "--auth", f"{USER}:{PASSWORD}")
        assert good["returncode"] == 0 and good["answered"] and good["segments"], good
        calls = [line for line in list(pool.lines) if "incoming call" in line]
        assert len(calls) == 1, calls


def test_plivos_dial_leg_authenticates_with_the_credentials_in_the_xml(tmp_path: Path) -> None:
    """Through the app: /answer's Dial gives Plivo the credentials, Plivo's leg answers the
    worker's challenge with them and reaches the agent; the same leg without them does
    not (the Dial would fail with Plivo's sip_auth_failed)."""
    with running_pool(
        tmp_path,
        1,
        pool__spare="false",
        providers__stt="fake",
        providers__tts="fake",
        providers__brain="fake",
        sip__inbound_auth__username=USER,
        sip__inbound_auth__password=PASSWORD,
    ) as pool:
        assert pool.app_url is not None
        plivo = PlivoEmulator(pool.app_url, POOL_TOKEN)
        stripped = plivo.dial(inbound_params("+14155550123", "+14155550100"))
        assert stripped.auth == (USER, PASSWORD), stripped
        refused = place_call(stripped.uri, *stripped.softphone(with_auth=False), "--timeout", "5")
        assert refused["status_code"] == 401, refused
        assert not any("incoming call" in line for line in list(pool.lines))

        leg = plivo.dial(inbound_params("+14155550123", "+14155550100"))
        report = place_call(leg.uri, *leg.softphone(), "--timeout", "20")
        assert report["answered"] and report["segments"], report
