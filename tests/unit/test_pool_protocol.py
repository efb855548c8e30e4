"""The pool's control protocol: every message survives encode → decode, a line that is
not a message is a `ProtocolError` naming what is wrong, and neither side's reader stops
at one."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import typing
from types import SimpleNamespace

import pytest

from gateway.pool import protocol
from gateway.pool.child import _IDLE, _next_command, _Reporter
from gateway.pool.conversations import activity_reporter
from gateway.pool.outcomes import DialOutcome, DialStatus, PushOutcome, PushStatus
from gateway.pool.protocol import (
    BehindEdge,
    CallActivity,
    CallEnded,
    CallStarted,
    Configure,
    DialResult,
    Drain,
    Failed,
    LegChanged,
    Loaded,
    PlaceCall,
    ProtocolError,
    PushReply,
    PushResult,
    RegistrationChanged,
    Start,
    Stop,
    Tallied,
    TurnRecorded,
    Up,
    VendorErrors,
)
from gateway.pool.supervisor import Supervisor
from gateway.records.model import CallTurn, SipCallEnd, SipCallStart
from sip_config import load_settings

MESSAGES: list[protocol.Message] = [
    Configure({"sip": {"listen_port": 5070}, "log_level": "INFO"}),
    Start(2, 5072, 20200, 100),
    Start(3, 8090, 0, 0, kind="stream"),
    Start(
        0,
        5071,
        20000,
        100,
        edge=BehindEdge(
            "127.0.0.1", ("127.0.0.1/32", "10.0.0.5/32"), "sip:127.0.0.1:5060;lr", "10.0.0.5", None
        ),
    ),
    Drain(),
    Stop(),
    PushReply(7, "abc/1@host", {"text": "Ten.", "actions": ["hangup"], "n": 1.5}),
    PlaceCall(8, "call-1", "sip:bob@127.0.0.1:5099", {"X-Lead": "42"}),
    Loaded(),
    Up("sip:agent@127.0.0.1:5071", 5071),
    Failed("cannot listen on udp 127.0.0.1:5071"),
    CallStarted(
        SipCallStart(
            "c1@host",
            "uuid-1",
            "sip:+1555@plivo",
            "sip:agent@w0",
            101.25,
            direction="outbound",
            recording="/rec/c1.wav",
            headers={"X-PH-Calluuid": "uuid-1"},
        )
    ),
    CallStarted(SipCallStart("c2@host", None, None, None, 5.0)),
    CallEnded(SipCallEnd("c1@host", "uuid-1", "remote hung up (BYE)", 130.0, "answered")),
    TurnRecorded(
        CallTurn("c1@host", None, {"turn": 1, "kind": "greeting", "total_ms": 640.0}, 9.0)
    ),
    CallActivity("c1@host", "on-hold"),
    LegChanged("human-leg", True),
    RegistrationChanged(False, "403 Forbidden"),
    Tallied(
        vendor_errors=(VendorErrors("deepgram", "timeout", 2),),
        failovers={"tts": 1},
        streams_refused={"no-start": 3},
    ),
    Tallied(),
    PushResult(7, PushOutcome(PushStatus.REFUSED, "this brain takes no pushed replies")),
    DialResult(8, DialOutcome(DialStatus.PLACED, sip_call_id="xyz@127.0.0.1")),
    DialResult(9, DialOutcome(DialStatus.BAD_TARGET, "not a SIP URI: 'bob'")),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.TYPE)
def test_every_message_survives_the_round_trip(message: protocol.Message) -> None:
    line = protocol.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode(line) == message


def test_every_message_class_is_covered() -> None:
    assert {type(m) for m in MESSAGES} == {
        *typing.get_args(protocol.Command),
        *typing.get_args(protocol.Report),
    }


def test_fields_travel_as_plain_json() -> None:
    line = protocol.encode(DialResult(8, DialOutcome(DialStatus.PLACED, sip_call_id="x@h")))
    assert line == (
        b'{"type":"dial_result","request_id":8,'
        b'"outcome":{"status":"placed","reason":"","sip_call_id":"x@h"}}\n'
    )
    # An int where a float is declared is a float (JSON has one number type).
    ended = protocol.decode(
        b'{"type":"call_end","record":{"sip_call_id":"c","call_uuid":null,"reason":"bye","at":2}}'
    )
    assert isinstance(ended, CallEnded) and ended.record.at == 2.0
    assert isinstance(ended.record.at, float) and ended.record.outcome is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json\n", "not JSON"),
        (b"\xff\xfe\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"cmd": "stop"}\n', "unknown message type None"),
        (b'{"type": "reboot"}\n', "unknown message type 'reboot'"),
        (b'{"type": 5}\n', "unknown message type 5"),
        (b'{"type": "up", "uri": "sip:a@b"}\n', "up: 'port' is missing"),
        (b'{"type": "up", "uri": "sip:a@b", "port": "5060"}\n', "up.port: '5060' is not a int"),
        (b'{"type": "up", "uri": "sip:a@b", "port": true}\n', "up.port: True is not a int"),
        (b'{"type": "up", "uri": "sip:a@b", "port": 1, "pid": 2}\n', "unknown field 'pid'"),
        (b'{"type": "leg", "sip_call_id": "x", "up": 1}\n', "leg.up: 1 is not a bool"),
        (
            b'{"type": "push_result", "request_id": 1,'
            b' "outcome": {"status": "maybe", "reason": ""}}\n',
            "push_result.outcome.status: 'maybe' is not a PushStatus",
        ),
        (
            b'{"type": "call_start", "record": {"sip_call_id": "c", "call_uuid": null,'
            b' "from_uri": null, "to_uri": null, "at": 1.0, "direction": "sideways"}}\n',
            "call_start.record.direction: 'sideways' is not one of",
        ),
        (
            b'{"type": "dial", "request_id": 1, "call_id": "c", "uri": "sip:a@b",'
            b' "headers": {"X-A": 5}}\n',
            "dial.headers.X-A: 5 is not a str",
        ),
        (
            b'{"type": "start", "index": 0, "sip_port": 1, "rtp_port_start": 2,'
            b' "rtp_port_range": 3, "edge": 7}\n',
            "start.edge: not an object",
        ),
        (b'{"type": "config", "settings": []}\n', "config.settings: not an object"),
        (
            b'{"type": "activity", "sip_call_id": "c", "activity": "dancing"}\n',
            "activity.activity: 'dancing' is not one of",
        ),
    ],
)
def test_a_line_that_is_not_a_message_says_what_is_wrong(line: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        protocol.decode(line)
    assert problem in str(exc.value)


async def _pipe() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter]:
    """A reader, the writer of its other end, and the reader's own writer (to close)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, own = await asyncio.open_unix_connection(sock=ours)
    _, writer = await asyncio.open_unix_connection(sock=theirs)
    return reader, writer, own


@pytest.mark.timeout(20)
def test_the_supervisor_logs_a_bad_line_and_reads_on(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        reader, writer, own = await _pipe()
        sup = Supervisor(load_settings(None, env_file=None), 1)
        loaded = asyncio.Event()
        child = SimpleNamespace(pid=4242, reader=reader, index=None, loaded=loaded)
        writer.write(b"garbage\n" + b'{"type": "reboot"}\n' + protocol.encode(Drain()))
        writer.write(protocol.encode(Loaded()))
        writer.close()  # end of file after the lines: the reader returns
        await asyncio.wait_for(sup.workers.read(child), 5)  # type: ignore[arg-type]
        assert loaded.is_set()  # the good message after the bad ones was handled
        own.close()

    with caplog.at_level(logging.ERROR, logger="sipagent.pool"):
        asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "worker pid 4242: bad control message: not JSON"
        " (Expecting value: line 1 column 1 (char 0)): b'garbage\\n'",
        "worker pid 4242: bad control message: unknown message type 'reboot'",
        "worker pid 4242: unexpected control message drain",
    ]


@pytest.mark.timeout(20)
def test_a_worker_logs_a_bad_line_and_reads_on(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        reader, writer, own = await _pipe()
        writer.write(b'{"type": "start"}\n' + protocol.encode(Loaded()))
        writer.write(protocol.encode(Stop()))
        await writer.drain()
        assert await asyncio.wait_for(_next_command(reader), 5) == Stop()
        assert await _next_command(reader, poll_s=0.05) is _IDLE  # nothing more yet
        writer.close()
        assert await asyncio.wait_for(_next_command(reader), 5) is None
        own.close()

    with caplog.at_level(logging.ERROR, logger="sipagent.worker"):
        asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "bad control message: start: 'index' is missing",
        "unexpected control message loaded: ignored",
    ]


def test_the_supervisor_keeps_what_the_agent_does_on_its_live_call() -> None:
    sup = Supervisor(load_settings(None, env_file=None), 1, out=io.StringIO())
    sup.state.worker_up(0, 4242, "sip:agent@127.0.0.1:5070", registers=False)
    worker = SimpleNamespace(index=0, pid=4242)
    spare = SimpleNamespace(index=None, pid=4243)

    def activities() -> list[tuple[str, str | None]]:
        return [(c["sip_call_id"], c["activity"]) for c in sup.state.live_calls()]

    sup.handle(worker, CallStarted(SipCallStart("c1@host", "uuid-1", None, None, 1.0)))  # type: ignore[arg-type]
    assert activities() == [("c1@host", None)]
    for msg, child in (
        (CallActivity("c1@host", "thinking"), worker),
        (CallActivity("c1@host", "speaking"), worker),
        (CallActivity("c1@host", "listening"), spare),  # from a process without an index
        (CallActivity("other@host", "listening"), worker),  # no such call
    ):
        sup.handle(child, msg)  # type: ignore[arg-type]
    assert activities() == [("c1@host", "speaking")]
    sup.handle(worker, CallEnded(SipCallEnd("c1@host", "uuid-1", "bye", 2.0)))  # type: ignore[arg-type]
    sup.handle(worker, CallActivity("c1@host", "listening"))  # type: ignore[arg-type]
    assert activities() == []


@pytest.mark.timeout(20)
def test_a_workers_sessions_activity_reaches_the_supervisor_as_call_activity() -> None:
    async def scenario() -> None:
        reader, writer, own = await _pipe()
        reporter = _Reporter(writer)
        # What both worker kinds hand their conversations as `on_activity`.
        report = activity_reporter(reporter, "c1@host")
        assert report is not None
        report("thinking")
        report("speaking")
        got = [await asyncio.wait_for(protocol.receive(reader), 5) for _ in range(2)]
        assert got == [CallActivity("c1@host", "thinking"), CallActivity("c1@host", "speaking")]
        writer.close()
        own.close()
        await asyncio.gather(*reporter.tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert activity_reporter(None, "c1@host") is None  # no supervisor: nothing to tell
