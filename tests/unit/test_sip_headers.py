"""Tests for gateway.sip.calls: SIP header parsing and the call handle's context headers."""

from __future__ import annotations

from gateway.audio.ring import InboundRing, PlayoutRing
from gateway.sip.calls import CallHandle, parse_sip_headers

CRLF = "\r\n"


def sip(*lines: str) -> str:
    """Join lines with CRLF as on the wire."""
    return CRLF.join(lines)


SDP = sip(
    "v=0",
    "o=- 3899 3899 IN IP4 10.0.0.5",
    "s=-",
    "c=IN IP4 10.0.0.5",
    "t=0 0",
    "m=audio 40000 RTP/AVP 0 8 101",
    "a=rtpmap:0 PCMU/8000",
    "X-Not-A-Header: from the body",
    "",
)

# An INVITE as Plivo would send it to the agent, SDP body included.
PLIVO_INVITE = sip(
    "INVITE sip:agent@127.0.0.1:5060 SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bK-524287-1",
    "Via: SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bK-abc",
    "Max-Forwards: 69",
    'From: "Alice" <sip:+15551234567@phone.plivo.com>;tag=1928301774',
    "To: <sip:agent@127.0.0.1:5060>",
    "Call-ID: a84b4c76e66710@pc33.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:+15551234567@10.0.0.5:5060;transport=udp>",
    "X-PH-CallUUID: 0d5a3c3e-7b1d-4a59-9c1e-2f0c4f6b8a11",
    "x-ph-from: +15551234567",
    "X-PH-Account: MAXXXXXXXXXXXXXXXXXX",
    "X-Custom-Campaign: spring-sale",
    "User-Agent: PlivoSBC",
    "Content-Type: application/sdp",
    "Content-Length: 142",
    "",
    SDP,
)


def test_realistic_invite_headers() -> None:
    headers = parse_sip_headers(PLIVO_INVITE)
    assert headers["Via"] == (
        "SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bK-524287-1, "
        "SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bK-abc"
    )
    assert headers["Max-Forwards"] == "69"
    assert headers["From"] == '"Alice" <sip:+15551234567@phone.plivo.com>;tag=1928301774'
    assert headers["To"] == "<sip:agent@127.0.0.1:5060>"
    # Values keep their own colons (URIs, ports): only the first colon separates the name.
    assert headers["Contact"] == "<sip:+15551234567@10.0.0.5:5060;transport=udp>"
    assert headers["User-Agent"] == "PlivoSBC"
    assert headers["Content-Type"] == "application/sdp"
    assert headers["Content-Length"] == "142"
    assert headers["X-PH-Account"] == "MAXXXXXXXXXXXXXXXXXX"
    assert headers["X-Custom-Campaign"] == "spring-sale"
    # Call-ID and CSeq by value here; their spelling has its own test below.
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["call-id"] == "a84b4c76e66710@pc33.example.com"
    assert lowered["cseq"] == "314159 INVITE"
    assert sorted(lowered) == sorted(
        [
            "via",
            "max-forwards",
            "from",
            "to",
            "call-id",
            "cseq",
            "contact",
            "x-ph-calluuid",
            "x-ph-from",
            "x-ph-account",
            "x-custom-campaign",
            "user-agent",
            "content-type",
            "content-length",
        ]
    )


def test_request_line_is_not_a_header() -> None:
    headers = parse_sip_headers(sip("INVITE sip:agent@127.0.0.1 SIP/2.0", "To: <sip:a@b>"))
    assert headers == {"To": "<sip:a@b>"}


def test_body_after_blank_line_is_ignored() -> None:
    headers = parse_sip_headers(PLIVO_INVITE)
    for name in ("V", "O", "S", "C", "T", "M", "A", "X-Not-A-Header"):
        assert name not in headers
    assert all("from the body" not in v for v in headers.values())


def test_message_without_body_or_headers() -> None:
    assert parse_sip_headers("") == {}
    assert parse_sip_headers("INVITE sip:agent@127.0.0.1 SIP/2.0") == {}
    assert parse_sip_headers("INVITE sip:agent@127.0.0.1 SIP/2.0\r\n\r\nTo: body") == {}


def test_plain_lf_line_endings_work_too() -> None:
    text = "INVITE sip:a@b SIP/2.0\nTo: <sip:a@b>\nFrom: <sip:c@d>;tag=1\n\nv=0\n"
    assert parse_sip_headers(text) == {"To": "<sip:a@b>", "From": "<sip:c@d>;tag=1"}


def test_compact_forms_map_to_full_names() -> None:
    compact = parse_sip_headers(
        sip(
            "INVITE sip:agent@127.0.0.1 SIP/2.0",
            "f: <sip:+15551234567@phone.plivo.com>;tag=77",
            "t: <sip:agent@127.0.0.1>",
            "i: compact-call-id@10.0.0.5",
            "m: <sip:caller@10.0.0.5:5060>",
            "",
        )
    )
    full = parse_sip_headers(
        sip(
            "INVITE sip:agent@127.0.0.1 SIP/2.0",
            "From: <sip:+15551234567@phone.plivo.com>;tag=77",
            "To: <sip:agent@127.0.0.1>",
            "Call-ID: compact-call-id@10.0.0.5",
            "Contact: <sip:caller@10.0.0.5:5060>",
            "",
        )
    )
    assert compact == full
    assert compact["From"] == "<sip:+15551234567@phone.plivo.com>;tag=77"
    assert compact["To"] == "<sip:agent@127.0.0.1>"
    assert compact["Contact"] == "<sip:caller@10.0.0.5:5060>"
    assert "compact-call-id@10.0.0.5" in compact.values()
    assert not {"f", "t", "i", "m", "F", "T", "I", "M"} & compact.keys()


def test_uppercase_compact_forms() -> None:
    headers = parse_sip_headers(sip("INVITE x SIP/2.0", "F: <sip:a@b>", "T: <sip:c@d>"))
    assert headers == {"From": "<sip:a@b>", "To": "<sip:c@d>"}


def test_compact_and_full_repeats_are_merged() -> None:
    headers = parse_sip_headers(
        sip("INVITE x SIP/2.0", "m: <sip:a@1.1.1.1>", "Contact: <sip:b@2.2.2.2>")
    )
    assert headers == {"Contact": "<sip:a@1.1.1.1>, <sip:b@2.2.2.2>"}


def test_call_id_keeps_its_canonical_spelling() -> None:
    assert parse_sip_headers(sip("INVITE x SIP/2.0", "i: abc@host"))["Call-ID"] == "abc@host"
    assert parse_sip_headers(sip("INVITE x SIP/2.0", "Call-ID: abc@host"))["Call-ID"] == "abc@host"
    assert parse_sip_headers(PLIVO_INVITE)["CSeq"] == "314159 INVITE"


def test_header_names_are_case_normalised() -> None:
    headers = parse_sip_headers(
        sip(
            "INVITE x SIP/2.0",
            "content-type: application/sdp",
            "MAX-FORWARDS: 70",
            "user-AGENT: softphone",
        )
    )
    assert headers == {
        "Content-Type": "application/sdp",
        "Max-Forwards": "70",
        "User-Agent": "softphone",
    }


def test_plivo_x_ph_headers_get_the_x_ph_prefix() -> None:
    headers = parse_sip_headers(PLIVO_INVITE)
    # "X-PH-CallUUID" -> prefix kept upper case, the rest capitalised like any header.
    assert headers["X-PH-Calluuid"] == "0d5a3c3e-7b1d-4a59-9c1e-2f0c4f6b8a11"
    assert headers["X-PH-From"] == "+15551234567"
    assert not any(k.startswith(("X-Ph-", "x-ph-", "x-PH-")) for k in headers)


def test_x_ph_spellings_collapse_to_one_name() -> None:
    spellings = ["X-PH-CallUUID", "x-ph-calluuid", "X-Ph-Calluuid", "X-PH-CALLUUID"]
    for spelling in spellings:
        headers = parse_sip_headers(sip("INVITE x SIP/2.0", f"{spelling}: u-1"))
        assert headers == {"X-PH-Calluuid": "u-1"}, spelling
    both = parse_sip_headers(sip("INVITE x SIP/2.0", "X-PH-CallUUID: a", "x-ph-calluuid: b"))
    assert both == {"X-PH-Calluuid": "a, b"}


def test_multi_part_x_ph_name() -> None:
    headers = parse_sip_headers(sip("INVITE x SIP/2.0", "x-ph-original-caller-id: 1234"))
    assert headers == {"X-PH-Original-Caller-Id": "1234"}


def test_other_x_headers_are_not_given_the_ph_treatment() -> None:
    headers = parse_sip_headers(sip("INVITE x SIP/2.0", "x-phone: 1", "X-PHX-Thing: 2"))
    assert headers == {"X-Phone": "1", "X-Phx-Thing": "2"}


def test_folded_lines_are_joined_with_one_space() -> None:
    headers = parse_sip_headers(
        sip(
            "INVITE x SIP/2.0",
            "Subject: I know you're there,",
            "   pick up the phone",
            "\tand talk to me!",
            "To: <sip:a@b>",
            "",
        )
    )
    assert headers == {
        "Subject": "I know you're there, pick up the phone and talk to me!",
        "To": "<sip:a@b>",
    }


def test_folded_line_continues_a_repeated_header() -> None:
    headers = parse_sip_headers(
        sip("INVITE x SIP/2.0", "Via: SIP/2.0/UDP a", "Via: SIP/2.0/UDP b", " ;branch=z9")
    )
    assert headers == {"Via": "SIP/2.0/UDP a, SIP/2.0/UDP b ;branch=z9"}


def test_continuation_before_any_header_is_skipped() -> None:
    headers = parse_sip_headers(sip("INVITE x SIP/2.0", "  stray continuation", "To: <sip:a@b>"))
    assert headers == {"To": "<sip:a@b>"}


def test_repeated_headers_are_joined_in_order() -> None:
    headers = parse_sip_headers(
        sip(
            "INVITE x SIP/2.0",
            "Record-Route: <sip:p1.example.com;lr>",
            "To: <sip:a@b>",
            "Record-Route: <sip:p2.example.com;lr>",
            "record-route: <sip:p3.example.com;lr>",
        )
    )
    assert headers["Record-Route"] == (
        "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>, <sip:p3.example.com;lr>"
    )


def test_malformed_lines_are_skipped_not_raised() -> None:
    headers = parse_sip_headers(
        sip(
            "INVITE x SIP/2.0",
            "this line has no colon",
            ": no name",
            "Bad Name: spaces are not allowed in names",
            "(weird): parentheses neither",
            "To: <sip:a@b>",
            "Subject:",
            "From :  <sip:c@d>;tag=9  ",
        )
    )
    assert headers == {"To": "<sip:a@b>", "Subject": "", "From": "<sip:c@d>;tag=9"}


def test_continuation_of_a_malformed_line_is_skipped_too() -> None:
    headers = parse_sip_headers(
        sip("INVITE x SIP/2.0", "Subject: hello", "not a header line", "  its continuation")
    )
    assert headers == {"Subject": "hello"}


# -- CallHandle -------------------------------------------------------------------------------


def make_handle(headers: dict[str, str]) -> CallHandle:
    return CallHandle(
        call_id=0,
        sip_call_id="a84b4c76e66710@pc33.example.com",
        remote_uri="sip:+15551234567@phone.plivo.com",
        local_uri="sip:agent@127.0.0.1:5060",
        headers=headers,
    )


def test_context_headers_are_the_x_headers_of_the_invite() -> None:
    handle = make_handle(parse_sip_headers(PLIVO_INVITE))
    assert handle.context_headers() == {
        "X-PH-Calluuid": "0d5a3c3e-7b1d-4a59-9c1e-2f0c4f6b8a11",
        "X-PH-From": "+15551234567",
        "X-PH-Account": "MAXXXXXXXXXXXXXXXXXX",
        "X-Custom-Campaign": "spring-sale",
    }


def test_context_headers_match_x_case_insensitively_and_copy() -> None:
    handle = make_handle({"x-raw": "1", "X-Ok": "2", "Xylophone": "3", "To": "4"})
    context = handle.context_headers()
    assert context == {"x-raw": "1", "X-Ok": "2"}
    context["X-Ok"] = "changed"
    assert handle.headers["X-Ok"] == "2"


def test_call_handle_defaults() -> None:
    handle = make_handle({})
    other = make_handle({})
    assert isinstance(handle.inbound, InboundRing)
    assert isinstance(handle.playout, PlayoutRing)
    assert handle.inbound is not other.inbound  # each call gets its own rings
    assert handle.playout is not other.playout
    assert handle.headers == {}
    assert handle.context_headers() == {}
    assert (handle.answered_at, handle.ended_at, handle.end_reason) == (0.0, 0.0, "")
