"""Plivo audio-stream messages (gateway.stream.events), μ-law (gateway.audio.g711) and the
stream tokens (gateway.stream.auth): pure code.

The event shapes are Plivo's own examples from the protocol reference
(https://plivo.com/docs/voice-agents/audio-streaming/concepts/audio-streaming-reference),
with the variants its other pages show (docs/plivo-audio-streams.md)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from gateway.audio.g711 import ulaw_decode, ulaw_encode
from gateway.stream import auth, events

pytestmark = pytest.mark.timeout(30)

START = {
    "event": "start",
    "sequenceNumber": 1,
    "start": {
        "callId": "12345678-1234-1234-1234-123456789abc",
        "streamId": "87654321-4321-4321-4321-cba987654321",
        "accountId": "MAXXXXXXXXXXXXXXXXXX",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    },
    "extra_headers": "userId=12345;sessionId=abc-xyz",
}


def test_start_as_the_protocol_reference_shows_it() -> None:
    start = events.parse_event(json.dumps(START))
    assert isinstance(start, events.Start)
    assert start.call_id == "12345678-1234-1234-1234-123456789abc"
    assert start.stream_id == "87654321-4321-4321-4321-cba987654321"
    assert (start.encoding, start.sample_rate) == ("audio/x-mulaw", 8000)
    assert start.tracks == ("inbound",)
    assert dict(start.extra_headers) == {"userId": "12345", "sessionId": "abc-xyz"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Calluuid=abc,From=p1415", {"Calluuid": "abc", "From": "p1415"}),  # XML reference
        ("a=1;b=2", {"a": "1", "b": "2"}),  # the newer guide
        ('{"a": "1"}', {"a": "1"}),  # Plivo's Python stream SDK: "a JSON string"
        ("", {}),
        ("{}", {}),
        ("no pairs here", {}),
        ("bad key!=1,ok=2", {"ok": "2"}),
    ],
)
def test_extra_headers_in_every_documented_form(value: str, expected: dict[str, str]) -> None:
    assert events.parse_extra_headers(value) == expected


def test_start_variants_of_the_older_page_are_taken() -> None:
    # The older concept page: sequenceNumber 0, a numeric-looking accountId, both tracks,
    # and a contentType-style encoding; a sample rate as a string.
    old = json.loads(json.dumps(START))
    old["sequenceNumber"] = 0
    old["start"]["accountId"] = "155747"
    old["start"]["tracks"] = ["inbound", "outbound"]
    old["start"]["mediaFormat"] = {"encoding": "audio/x-mulaw;rate=8000", "sampleRate": "8000"}
    del old["extra_headers"]
    start = events.parse_event(json.dumps(old))
    assert isinstance(start, events.Start)
    assert (start.encoding, start.sample_rate, start.extra_headers) == ("audio/x-mulaw", 8000, {})


def test_media_dtmf_played_cleared_stop_and_unknown_events() -> None:
    audio = bytes(range(160))
    media = events.parse_event(
        json.dumps(
            {
                "event": "media",
                "sequenceNumber": 42,
                "streamId": "s",
                "media": {
                    "track": "inbound",
                    "timestamp": "1705312200000",
                    "chunk": 41,
                    "payload": base64.b64encode(audio).decode(),
                },
                "extra_headers": "",
            }
        )
    )
    assert media == events.Media(audio, "inbound", 41)
    dtmf = {"event": "dtmf", "dtmf": {"track": "inbound", "digit": "5", "timestamp": "1"}}
    assert events.parse_event(json.dumps(dtmf)) == events.Dtmf("5")
    played = {"event": "playedStream", "sequenceNumber": 75, "streamId": "s", "name": "turn-1"}
    assert events.parse_event(json.dumps(played)) == events.PlayedStream("turn-1")
    # The support article's spelling of the same answer.
    assert events.parse_event('{"event":"played","name":"x"}') == events.PlayedStream("x")
    assert events.parse_event('{"event":"clearedAudio","streamId":"s"}') == events.ClearedAudio()
    assert events.parse_event('{"event":"stop","reason":"hangup"}') == events.Stop("hangup")
    assert events.parse_event('{"event":"playFailed","reason":"x"}') == events.Other("playFailed")


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"sequenceNumber": 1}', "no event name"),
        ('{"event": "media"}', "media must be a JSON object"),
        ('{"event": "media", "media": {"payload": "***"}}', "not base64"),
        ('{"event": "media", "media": {"payload": 5}}', "base64 string"),
        ('{"event": "dtmf", "dtmf": {"digit": "55"}}', "dtmf.digit"),
        ('{"event": "start", "start": {"callId": "a b", "streamId": "s"}}', "start.callId"),
        ('{"event": "start", "start": {"callId": "a", "streamId": "s", "tracks": 1}}', "tracks"),
        ('{"event": "playedStream", "name": 7}', "name"),
        ("x" * (events.MAX_MESSAGE_BYTES + 1), "limit"),
    ],
)
def test_malformed_messages_are_named_never_crash(message: str | bytes, problem: str) -> None:
    with pytest.raises(events.StreamProtocolError, match=problem):
        events.parse_event(message)


def test_messages_to_plivo_as_documented() -> None:
    play = json.loads(events.play_audio(b"\x01\x02"))
    assert play == {
        "event": "playAudio",
        "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": "AQI="},
    }
    assert json.loads(events.checkpoint("s", "turn-1")) == {
        "event": "checkpoint",
        "streamId": "s",
        "name": "turn-1",
    }
    assert json.loads(events.clear_audio("s")) == {"event": "clearAudio", "streamId": "s"}
    assert json.loads(events.send_dtmf("12#")) == {"event": "sendDTMF", "dtmf": "12#"}


def test_ulaw_round_trip_is_g711_quantisation() -> None:
    # Every code decodes and re-encodes to itself (0x7F and 0xFF both mean zero: 0xFF is
    # the one an encoder gives for 0).
    codes = bytes(c for c in range(256) if c != 0x7F)
    assert ulaw_encode(ulaw_decode(codes)) == codes
    # A tone keeps its shape: G.711's error is under 1/32 of the sample.
    t = np.arange(800) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")
    back = np.frombuffer(ulaw_decode(ulaw_encode(tone.tobytes())), "<i2")
    assert np.max(np.abs(back.astype(int) - tone)) <= np.max(np.abs(tone)) / 32
    assert len(ulaw_encode(bytes(320))) == 160


def test_token_is_bound_to_its_call_and_expires() -> None:
    secret = "s" * 32
    token = auth.mint_token(secret, "call-1", now=1000.0, ttl_s=60)
    assert auth.verify_token(secret, "call-1", token, now=1059.0)
    assert not auth.verify_token(secret, "call-1", token, now=1061.0)  # expired
    assert not auth.verify_token(secret, "call-2", token, now=1001.0)  # another call
    assert not auth.verify_token("t" * 32, "call-1", token, now=1001.0)  # another key
    assert not auth.verify_token("", "call-1", token, now=1001.0)  # no key: nothing passes
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert not auth.verify_token(secret, "call-1", forged, now=1001.0)
    assert not auth.verify_token(secret, "call-1", "garbage", now=1001.0)


def test_stream_url_carries_call_and_token() -> None:
    url = auth.stream_url_for_call("wss://bot.example.com/stream?x=1", "k" * 32, "c-1", 5.0, 60)
    query = url.split("?", 1)[1]
    call, token = auth.query_call_token(query)
    assert url.startswith("wss://bot.example.com/stream?x=1&call=c-1&token=")
    assert call == "c-1" and auth.verify_token("k" * 32, "c-1", token, now=6.0)
    # A repeated parameter is no parameter (which one would a proxy keep?).
    assert auth.query_call_token(f"{query}&token=x") == ("c-1", "")


def test_signed_url_forms_cover_every_scheme_under_the_public_host() -> None:
    forms = auth.signed_url_forms("wss://bot.example.com/stream", "10.0.0.5:8090", "/stream?a=1")
    assert forms == [
        "wss://bot.example.com/stream?a=1",
        "https://bot.example.com/stream?a=1",
        "ws://bot.example.com/stream?a=1",
        "http://bot.example.com/stream?a=1",
    ]
    assert auth.signed_url_forms("", "h:1", "/s")[0] == "wss://h:1/s"
