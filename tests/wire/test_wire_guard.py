"""Hostile and unwanted SIP on the wire, sent byte by byte from loopback addresses to a real
worker (allow-list 127.0.0.1/32; 127.0.0.2 is a stranger): every answer is the RFC's, no
input aborts the worker, and a refused INVITE binds no media socket.

Each of these aborted the worker before the SIP guard (gateway/sip/guard.py): a refused
INVITE without SDP (pjsip_rx_data_free_cloned assertion), an SDP address of 254
characters (pj_sockaddr_in_set_str_addr assertion), INVITEs from a stranger at 100/s (the
select ioqueue out of its 64 slots after ~32 of them).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtools.demo import free_udp_port
from tests.helpers.kamailio import WorkerProcess, running_worker, wait_until, worker_settings
from tests.helpers.sipraw import RawSip, Response, call, sdp_media_ports, sdp_offer

pytestmark = [pytest.mark.wire, pytest.mark.timeout(120)]

STRANGER = "127.0.0.2"
# What a scanner must not read in any answer.
SIGNATURE = re.compile(rb"pjsip|pjsua|pjmedia|pjlib|sipagent|x-nat", re.IGNORECASE)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerProcess]:
    port = free_udp_port()
    with running_worker(
        tmp_path, worker_settings(port, sip={"allow_networks": ["127.0.0.1/32"]})
    ) as w:
        yield w


def target(worker: WorkerProcess) -> tuple[str, int]:
    return ("127.0.0.1", worker.port)


def sockets(worker: WorkerProcess) -> int:
    """Sockets the worker process holds open."""
    fd_dir = f"/proc/{worker.proc.pid}/fd"
    count = 0
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            count += os.readlink(f"{fd_dir}/{name}").startswith("socket:")
    return count


def assert_alive(worker: WorkerProcess, code: int = 200) -> None:
    """The worker runs and answers: an OPTIONS from an allowed source gets `code` (200, or
    503 while draining)."""
    assert worker.proc.poll() is None, "worker died:\n" + worker.tail()
    with RawSip("127.0.0.1") as sip:
        answer = sip.final(sip.request("OPTIONS", target(worker)), target(worker))
    assert answer.code == code, answer


def ask(source: str, worker: WorkerProcess, method: str, **kwargs: object) -> Response:
    with RawSip(source) as sip:
        message = sip.request(method, target(worker), **kwargs)  # type: ignore[arg-type]
        answer = sip.final(message, target(worker))
        if method == "INVITE":
            sip.ack(message, answer, target(worker))
        return answer


@pytest.mark.parametrize("with_sdp", [False, True], ids=["no-sdp", "sdp"])
@pytest.mark.parametrize("why", ["stranger", "draining", "busy"])
def test_refused_invites_never_abort_the_worker_nor_bind_media(
    worker: WorkerProcess, why: str, with_sdp: bool
) -> None:
    held: list[RawSip] = []
    source, code = "127.0.0.1", 0
    if why == "stranger":
        source, code = STRANGER, 403
    elif why == "draining":
        worker.set_accepting(False)
        worker.wait_line("draining: new calls get 503", timeout=10)
        code = 503
    else:
        for _ in range(4):  # the worker's four call slots
            held.append(RawSip("127.0.0.1"))
            call(held[-1], target(worker), sdp_offer(port=40000 + 2 * len(held)))
        code = 486
    before = sockets(worker)
    answer = ask(source, worker, "INVITE", body=sdp_offer() if with_sdp else b"")
    assert answer.code == code, answer
    if code == 503:
        assert (answer.header("retry-after") or "").isdigit(), answer.raw
    assert_alive(worker, 503 if why == "draining" else 200)
    assert sockets(worker) == before, "a refused INVITE bound sockets"
    for sip in held:
        sip.close()


@pytest.mark.parametrize("length", [254, 300])
def test_an_overlong_sdp_address_gets_488(worker: WorkerProcess, length: int) -> None:
    answer = ask("127.0.0.1", worker, "INVITE", body=sdp_offer(connection="a" * length))
    assert answer.code == 488, answer
    worker.wait_line(f"SDP connection address is {length} characters long", timeout=5)
    assert_alive(worker)


def test_offers_with_many_media_lines_get_488(worker: WorkerProcess) -> None:
    for _ in range(3):
        answer = ask("127.0.0.1", worker, "INVITE", body=sdp_offer(audio_lines=16))
        assert answer.code == 488, answer
    assert_alive(worker)


def test_a_reinvite_with_an_unsafe_sdp_is_refused_and_the_call_goes_on(
    worker: WorkerProcess,
) -> None:
    with RawSip("127.0.0.1") as sip:
        dialog = call(sip, target(worker), sdp_offer())
        worker.wait_line("incoming call", timeout=5)
        bad = dialog.request(sip, "INVITE", body=sdp_offer(connection="b" * 260))
        assert sip.final(bad, target(worker)).code == 488
        good = dialog.request(sip, "INVITE", body=sdp_offer())
        assert sip.final(good, target(worker)).code == 200
        sip.send(dialog.request(sip, "ACK"), target(worker))
        bye = sip.final(dialog.request(sip, "BYE"), target(worker))
        assert bye.code == 200, bye
    worker.wait_line(" ended: ", timeout=5)
    assert_alive(worker)


def flood(sip: RawSip, to: tuple[str, int], rate: float, seconds: float) -> dict[int, int]:
    """INVITEs with SDP at `rate` a second; returns how many answers of each status came."""
    codes: dict[int, int] = {}
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        sip.send(sip.request("INVITE", to, body=sdp_offer()), to)
        sent += 1
        for resp in sip.receive(max(0.0, start + sent / rate - time.monotonic())):
            codes[resp.code] = codes.get(resp.code, 0) + 1
    for resp in sip.receive(1.0):
        codes[resp.code] = codes.get(resp.code, 0) + 1
    return codes


def churn(sip: RawSip, to: tuple[str, int], rate: float, seconds: float) -> dict[int, int]:
    """Calls placed and hung up at once (INVITE, 200, ACK, BYE) at `rate` a second;
    returns how many INVITEs got each final status."""
    codes: dict[int, int] = {}
    start = time.monotonic()
    placed = 0
    while time.monotonic() - start < seconds:
        try:
            dialog = call(sip, to, sdp_offer(), timeout=1.0)
        except AssertionError as exc:  # refused: "INVITE answered 503 ..."
            code = int(str(exc).split()[2])
        else:
            code = 200
            sip.send(dialog.request(sip, "BYE"), to)
        codes[code] = codes.get(code, 0) + 1
        placed += 1
        time.sleep(max(0.0, start + placed / rate - time.monotonic()))
    return codes


def test_a_strangers_invite_flood_is_refused_without_media(worker: WorkerProcess) -> None:
    with RawSip(STRANGER) as sip:
        codes = flood(sip, target(worker), rate=100, seconds=2.0)
    assert codes.get(403, 0) >= 150 and set(codes) == {403}, codes
    assert_alive(worker)
    with RawSip("127.0.0.1") as sip:
        dialog = call(sip, target(worker), sdp_offer())
        assert sip.final(dialog.request(sip, "BYE"), target(worker)).code == 200


def test_calls_hung_up_at_once_are_rate_limited(worker: WorkerProcess) -> None:
    # Each call binds media sockets that pjlib frees 0.5 s after it ends: at 100 calls a
    # second that is more than the select ioqueue's 64 slots.
    baseline = sockets(worker)
    with RawSip("127.0.0.1") as sip:
        codes = churn(sip, target(worker), rate=100, seconds=3.0)
    assert codes.get(503, 0) > 100 and codes.get(200, 0) >= 10, codes
    assert_alive(worker)
    wait_until(lambda: sockets(worker) <= baseline, 10, "media sockets freed")


def test_requests_not_for_the_agent_get_the_rfc_answer(worker: WorkerProcess) -> None:
    register = ask("127.0.0.1", worker, "REGISTER")
    assert register.code == 405 and "INVITE" in (register.header("allow") or ""), register
    assert ask(STRANGER, worker, "REGISTER").code == 403
    assert ask("127.0.0.1", worker, "FOO").code == 501
    assert ask("127.0.0.1", worker, "BYE").code == 481  # no dialog
    assert ask("127.0.0.1", worker, "BYE", to_tag="nosuch").code == 481
    assert ask(STRANGER, worker, "OPTIONS").code == 403
    assert ask(STRANGER, worker, "MESSAGE").code == 403
    options = ask("127.0.0.1", worker, "OPTIONS")
    assert options.code == 200 and options.header("user-agent") is None, options.raw
    answers = [register, options]
    with RawSip("127.0.0.1") as sip:
        dialog = call(sip, target(worker), sdp_offer())
        answers.append(dialog.answer)
        answers.append(sip.final(dialog.request(sip, "BYE"), target(worker)))
    for answer in answers:
        assert not SIGNATURE.search(answer.raw), answer.raw.decode()
    assert_alive(worker)


def test_media_ports_stay_inside_the_workers_range(tmp_path: Path) -> None:
    port = free_udp_port()
    settings = worker_settings(port)
    start = settings["sip"]["rtp_port_start"]
    settings["sip"]["rtp_port_range"] = 8  # four RTP/RTCP pairs
    with running_worker(tmp_path, settings) as worker, RawSip("127.0.0.1") as sip:
        used: list[tuple[int, int]] = []
        for i in range(6):  # pjsua moves on by two ports a call, then wraps
            dialog = call(sip, target(worker), sdp_offer(port=41000 + 2 * i))
            used.append(sdp_media_ports(dialog.answer.raw.partition(b"\r\n\r\n")[2]))
            assert sip.final(dialog.request(sip, "BYE"), target(worker)).code == 200
    ports = {p for pair in used for p in pair}
    assert min(ports) >= start and max(ports) <= start + 7, (start, used)
