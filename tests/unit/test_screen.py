"""The SIP guard's decisions (gateway.sip.screen), without a SIP stack."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.sip.allowlist import parse_networks, source_allowed
from gateway.sip.pjcall import sdp_without_signature
from gateway.sip.ports import pjsua_media_ports, pjsua_port_range
from gateway.sip.screen import (
    ALLOW,
    Refusal,
    Screen,
    ScreenState,
    TokenBucket,
    parse_request,
    sdp_parts,
    sdp_problem,
    to_tag,
)
from tests.helpers.sipraw import RawSip, sdp_offer

TARGET = ("127.0.0.1", 5060)
NETS = parse_networks(["127.0.0.1/32"])


def screen(rate: float = 10.0) -> Screen:
    return Screen(lambda src: source_allowed(src, NETS), new_calls_per_s=rate)


@pytest.fixture
def phone() -> Iterator[RawSip]:
    raw = RawSip("127.0.0.1")
    yield raw
    raw.close()


def decide(raw: bytes, source: str = "127.0.0.1:5070", **state: object) -> Refusal | None:
    return screen().request(raw, source, ScreenState(**state), 0.0)  # type: ignore[arg-type]


def test_to_tag_reads_header_parameters_only() -> None:
    assert to_tag("<sip:a@b>;tag=x1") == "x1"
    assert to_tag("<sip:a@b;tag=uri-param>") is None
    assert to_tag('"Bob; <evil> tag=no" <sip:a@b>;foo=1;TAG=t2') == "t2"
    assert to_tag("sip:a@b;tag=bare") == "bare"
    assert to_tag("sip:a@b") is None
    assert to_tag("<sip:a@b>;tag=") is None


def test_parse_request_takes_compact_headers_and_content_length(phone: RawSip) -> None:
    raw = phone.request("INVITE", TARGET, body="v=0\r\n", to_tag="abc") + b"trailing junk"
    req = parse_request(raw.replace(b"\r\nTo:", b"\r\nt:").replace(b"\r\nContent-Type:", b"\r\nc:"))
    assert req.method == "INVITE" and req.in_dialog
    assert req.headers["Content-Type"] == "application/sdp"
    assert req.body == b"v=0\r\n"
    with pytest.raises(ValueError):
        parse_request(b"SIP/2.0 200 OK\r\n\r\n")


@pytest.mark.parametrize(
    ("offer", "problem"),
    [
        (sdp_offer(), None),
        (sdp_offer(audio_lines=2), None),
        (sdp_offer(audio_lines=3), "more than 2 media lines"),
        (sdp_offer(audio_lines=16), "more than 2 media lines"),
        (sdp_offer(connection="a" * 253), "253 characters"),
        (sdp_offer(connection="a" * 254), "254 characters"),
        (sdp_offer(connection="example.com"), "not an IPv4 address"),
        (sdp_offer(connection="224.2.1.1/127"), "not an IPv4 address"),
        (sdp_offer(connection="0.0.0.0"), None),
        (sdp_offer().replace("IN IP4 127.0.0.1\r\nt=", "IN IP6 ::1\r\nt="), "IPv6"),
        (sdp_offer().replace("c=IN IP4 127.0.0.1", "c=IN IP4"), "not 'IN IP4"),
        (sdp_offer() + "a=rtcp:40001 IN IP4 " + "b" * 300 + "\r\n", "300 characters"),
        (sdp_offer() + "a=rtcp:99999\r\n", "not a port"),
        (sdp_offer().replace("m=audio 40000", "m=audio 4x"), "not a port"),
    ],
)
def test_sdp_shape(offer: str, problem: str | None) -> None:
    found = sdp_problem(offer.encode())
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_sdp_that_is_not_utf8_is_refused() -> None:
    assert sdp_problem(b"v=0\r\ns=\xff\xfe\r\n") == "SDP is not UTF-8"


def test_multipart_bodies_are_searched_for_sdp() -> None:
    bad = sdp_offer(connection="a" * 300)
    body = (
        "--b1\r\nContent-Type: application/isup\r\n\r\nxyz\r\n"
        f"--b1\r\nContent-Type: application/sdp\r\n\r\n{bad}\r\n--b1--\r\n"
    ).encode()
    parts = sdp_parts('multipart/mixed;boundary="b1"', body)
    assert parts and b"aaaa" in parts[0]
    assert sdp_parts("application/isup", b"xyz") == []
    assert sdp_parts("Application/SDP; charset=utf-8", b"v=0") == [b"v=0"]


@pytest.mark.parametrize(
    ("method", "in_dialog", "source", "code"),
    [
        ("INVITE", False, "127.0.0.2:5060", 403),
        ("OPTIONS", False, "127.0.0.2:5060", 403),
        ("MESSAGE", False, "127.0.0.2:5060", 403),
        ("REGISTER", False, "127.0.0.2:5060", 403),
        ("REGISTER", False, "127.0.0.1:5060", 405),
        ("MESSAGE", False, "127.0.0.1:5060", 405),
        ("SUBSCRIBE", False, "127.0.0.1:5060", 405),
        ("FOO", False, "127.0.0.1:5060", 501),
        ("FOO", True, "127.0.0.1:5060", 501),
        ("BYE", False, "127.0.0.1:5060", 481),
        ("INFO", False, "127.0.0.1:5060", 481),
        ("BYE", True, "127.0.0.1:5060", None),
        ("NOTIFY", True, "127.0.0.1:5060", None),
        ("OPTIONS", False, "127.0.0.1:5060", None),
        ("INVITE", False, "127.0.0.1:5060", None),
        ("CANCEL", False, "127.0.0.1:5060", None),
        ("ACK", False, "127.0.0.2:5060", None),  # never answered
    ],
)
def test_methods_and_sources(
    phone: RawSip, method: str, in_dialog: bool, source: str, code: int | None
) -> None:
    raw = phone.request(method, TARGET, to_tag="t1" if in_dialog else None)
    refusal = decide(raw, source)
    if code is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.code == code, refusal
        if code == 405:
            assert ("Allow", ALLOW) in refusal.headers


def test_invite_refusals_in_order(phone: RawSip) -> None:
    fresh = phone.request("INVITE", TARGET)
    bad_sdp = phone.request("INVITE", TARGET, body=sdp_offer(connection="a" * 300))
    draining = decide(fresh, accepting=False, drain_retry_after_s=7)
    assert draining is not None and draining.code == 503
    assert ("Retry-After", "7") in draining.headers
    full = decide(fresh, calls=4, max_calls=4)
    assert full is not None and full.code == 486
    # The SDP is judged before the state: a bad offer is 488 even while draining.
    bad = decide(bad_sdp, accepting=False)
    assert bad is not None and bad.code == 488
    # An in-dialog re-INVITE is neither busy nor draining, but its SDP is checked.
    reinvite = phone.request("INVITE", TARGET, to_tag="x", body=sdp_offer())
    assert decide(reinvite, accepting=False, calls=4) is None
    bad_re = phone.request("INVITE", TARGET, to_tag="x", body=sdp_offer(audio_lines=16))
    refusal = decide(bad_re)
    assert refusal is not None and refusal.code == 488
    # A trunk's OPTIONS ping sees the drain.
    ping = decide(phone.request("OPTIONS", TARGET), accepting=False)
    assert ping is not None and ping.code == 503


def test_an_ack_with_unsafe_sdp_is_dropped_unanswered(phone: RawSip) -> None:
    ack = phone.request("ACK", TARGET, to_tag="x", body=sdp_offer(connection="c" * 260))
    refusal = decide(ack)
    assert refusal is not None and refusal.drop


def test_a_response_with_unsafe_sdp_is_dropped() -> None:
    body = sdp_offer(connection="d" * 260).encode()
    raw = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4\r\nContent-Type: application/sdp\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    refusal = screen().response(raw)
    assert refusal is not None and refusal.drop
    assert screen().response(raw.replace(b"d" * 260, b"127.0.0.1")) is None


def test_new_calls_are_rate_limited() -> None:
    s = screen(rate=10)
    phone = RawSip("127.0.0.1")
    phone.close()  # only its request builder is used
    codes = []
    for i in range(30):
        refusal = s.request(phone.request("INVITE", TARGET), "127.0.0.1:1", ScreenState(), i * 0.01)
        codes.append(refusal.code if refusal else 200)
    # A second's worth at once, then one per 100 ms.
    assert codes[:10] == [200] * 10
    assert codes[10:].count(200) == 2 and codes.count(503) == 18
    phone.close()


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0)
    assert bucket.take(100.0) and bucket.take(100.0) and not bucket.take(100.0)
    assert bucket.take(100.5) and not bucket.take(100.6)


def test_garbage_is_400_and_never_raises() -> None:
    refusal = decide(b"\x00\xff garbage")
    assert refusal is not None and refusal.code == 400


def test_rtp_ranges_of_neighbouring_workers_do_not_overlap() -> None:
    # pjsua's rule, for a worker given `per` ports: RTP at start, start+2, ... while the
    # port is <= start + portRange, RTCP one above.
    per = 40
    ports = [pjsua_media_ports(20000 + i * per, pjsua_port_range(per)) for i in range(3)]
    for i, used in enumerate(ports):
        assert min(used) == 20000 + i * per and max(used) == 20000 + (i + 1) * per - 1
    assert not ports[0] & ports[1] and not ports[1] & ports[2]
    # What the old setting (portRange = per) let pjsua use: the next worker's first pair.
    assert pjsua_media_ports(20000, per) & ports[1] == {20040, 20041}


def test_sdp_signature_is_removed() -> None:
    sdp = (
        "v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=pjmedia\r\nt=0 0\r\n"
        "a=X-nat:0\r\nm=audio 4 RTP/AVP 0\r\n"
    )
    out = sdp_without_signature(sdp)
    assert "pjmedia" not in out and "X-nat" not in out and "\r\ns=-\r\n" in out
    assert out.endswith("m=audio 4 RTP/AVP 0\r\n")
