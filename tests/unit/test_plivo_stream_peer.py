"""The Plivo stream emulator (`gateway.devtools.plivo_stream`) against a minimal bot: a
websockets server on 127.0.0.1 (port 0) in the test that keeps what Plivo sends and sends
what the test says. Every wait is on an event and bounded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.audio.g711 import ulaw_decode, ulaw_encode
from gateway.audio.pcm import rms_dbfs, split_frames, write_wav
from gateway.devtools.plivo_stream import (
    PlivoStreamPeer,
    StreamAnswerError,
    StreamDialer,
    StreamDialerError,
    fetch_stream_answer,
    parse_stream_answer,
)
from gateway.devtools.softphone import CallScript, run_softphone
from gateway.plivo.signature import SignatureVerifier, expected_signature
from gateway.stream import events as stream_events
from tests.fakes.http import Exchange, HttpFake
from tests.fakes.plivo_stream import heard, open_raw, plivo_stream, voiced

pytestmark = pytest.mark.timeout(30)

TOKEN = "plivo-auth-token"


def tone(ms: int, level: float = 0.3) -> bytes:
    """A 440 Hz tone, 16-bit PCM at 8 kHz."""
    t = np.arange(8 * ms) / 8000.0
    return (np.sin(2 * math.pi * 440 * t) * level * 32767).astype("<i2").tobytes()


def play_audio(pcm: bytes, **media: Any) -> str:
    body = {
        "contentType": "audio/x-mulaw",
        "sampleRate": 8000,
        "payload": base64.b64encode(ulaw_encode(pcm)).decode(),
    }
    body.update(media)
    return json.dumps({"event": "playAudio", "media": body})


class Bot:
    """The bot's side of one stream, minimally."""

    def __init__(self, on_message: Callable[[Bot, dict[str, Any]], Any] | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.request: Request | None = None
        self.conn: ServerConnection | None = None
        self.closed = asyncio.Event()
        self.on_message = on_message
        self._changed = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.conn, self.request = ws, ws.request
        try:
            async for message in ws:
                self.messages.append(json.loads(message))
                self.arrivals.append(time.monotonic())
                if self.on_message is not None:
                    await self.on_message(self, self.messages[-1])
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("event") == name]

    def at(self, event: str, **fields: Any) -> float:
        """Arrival time of the first `event` with these fields."""
        for m, t in zip(self.messages, self.arrivals, strict=True):
            if m.get("event") == event and all(m.get(k) == v for k, v in fields.items()):
                return t
        raise AssertionError(f"no {event} {fields}")

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    async def send(self, message: str | bytes) -> float:
        assert self.conn is not None
        await self.conn.send(message)
        return time.monotonic()


@contextlib.asynccontextmanager
async def bot_server(
    bot: Bot,
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
) -> AsyncIterator[str]:
    async with serve(
        bot.handler, "127.0.0.1", 0, compression=None, process_request=process_request
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


def _run(coro: Any) -> None:
    asyncio.run(coro)


# -- what Plivo sends ------------------------------------------------------------------------


def test_start_then_media_every_20_ms_as_plivo_documents() -> None:
    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot) as base:
            url = f"{base}/stream?call=3f1c7a52-call&token=abc"
            async with plivo_stream(url, extra_headers="a=1,b=2") as peer:
                voice = split_frames(tone(60))
                for frame in voice:
                    peer.call.playout.put(frame)
                await bot.until(lambda: len(bot.events("media")) >= 51)
            media = bot.events("media")[:51]
            start = bot.messages[0]
            # PROTOREF's start: callId (the URL's call), streamId, tracks, mediaFormat,
            # extra_headers at the top level; numbers rise by one from 1 (EVPROTO).
            assert start["event"] == "start"
            assert start["start"]["callId"] == "3f1c7a52-call"
            assert start["start"]["tracks"] == ["inbound"]
            assert start["start"]["mediaFormat"] == {
                "encoding": "audio/x-mulaw",
                "sampleRate": 8000,
            }
            assert start["extra_headers"] == "a=1,b=2"
            assert [m["sequenceNumber"] for m in bot.messages] == list(
                range(1, len(bot.messages) + 1)
            )
            stream_id = start["start"]["streamId"]
            parsed = stream_events.parse_event(json.dumps(start))
            assert isinstance(parsed, stream_events.Start)
            assert parsed.extra_headers == {"a": "1", "b": "2"}
            for i, m in enumerate(media, start=1):
                assert m["streamId"] == stream_id and m["extra_headers"] == "a=1,b=2"
                assert m["media"]["track"] == "inbound" and m["media"]["chunk"] == i
                assert isinstance(m["media"]["timestamp"], str)
                assert len(base64.b64decode(m["media"]["payload"])) == 160
                assert isinstance(stream_events.parse_event(json.dumps(m)), stream_events.Media)
            stamps = [int(m["media"]["timestamp"]) for m in media]
            assert [b - a for a, b in itertools.pairwise(stamps)] == [20] * 50
            # Paced on absolute times: chunk k never before k * 20 ms after the stream
            # opened (never ahead of real time), and about 50 a second.
            opened = peer.stats.connected_at
            for m in media:
                arrived = bot.at("media", sequenceNumber=m["sequenceNumber"])
                assert arrived >= opened + m["media"]["chunk"] * 0.02
            assert arrived - opened < 2.5
            # The caller's audio goes out in order, one frame a chunk, silence around it.
            sent = [base64.b64decode(m["media"]["payload"]) for m in media]
            loud = [i for i, p in enumerate(sent) if rms_dbfs(ulaw_decode(p)) > -45]
            assert len(loud) == 3 and loud == list(range(loud[0], loud[0] + 3))
            assert sent[loud[0] : loud[0] + 3] == [ulaw_encode(f) for f in voice]
            assert peer.call.playout.frames_played == 3

    _run(scenario())


def test_upgrade_signed_with_the_v3_signature_or_not_at_all() -> None:
    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot) as base:
            url = f"{base}/stream?call=c1&token=t"
            async with plivo_stream(url, auth_token=TOKEN):
                await bot.until(lambda: bool(bot.messages))
            assert bot.request is not None
            headers = bot.request.headers
            nonce, signature = (
                headers["X-Plivo-Signature-V3-Nonce"],
                headers["X-Plivo-Signature-V3"],
            )
            assert nonce.isdigit()
            assert signature.encode() == expected_signature(TOKEN, "GET", url, {}, nonce)
            verifier = SignatureVerifier(TOKEN, nonce_ttl_s=60)
            assert verifier.check("GET", url, {}, signature, nonce) == "ok"
            first = bot.request
            async with plivo_stream(url):
                await bot.until(lambda: bot.request is not first)
            assert "X-Plivo-Signature-V3" not in bot.request.headers
            raw = await open_raw(url, auth_token=TOKEN, signed_url="https://x/y")
            await raw.close()
            signed = bot.request.headers
            assert signed["X-Plivo-Signature-V3"].encode() == expected_signature(
                TOKEN, "GET", "https://x/y", {}, signed["X-Plivo-Signature-V3-Nonce"]
            )

    _run(scenario())


# -- what the bot sends ----------------------------------------------------------------------


def test_checkpoint_answered_once_the_audio_before_it_has_played() -> None:
    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot) as base, plivo_stream(base + "/s") as peer:
            await bot.until(lambda: bot.conn is not None and bool(bot.messages))
            stream_id = bot.messages[0]["start"]["streamId"]
            pcm = tone(300)
            # Two pieces: a string sampleRate (XMLNEW) and an extra streamId (pipecat) are taken.
            sent_at = await bot.send(play_audio(pcm[:2400], sampleRate="8000"))
            await bot.send(play_audio(pcm[2400:], streamId=stream_id))
            await bot.send(stream_events.checkpoint(stream_id, "greeting done"))
            await bot.until(lambda: bool(bot.events("playedStream")))
            played = bot.events("playedStream")[0]
            assert played["name"] == "greeting done" and played["streamId"] == stream_id
            assert isinstance(played["sequenceNumber"], int)
            # 15 frames of 20 ms played before it (on the clock's times: a tick the loop ran
            # late plays at once), and all of them were heard.
            assert bot.at("playedStream") - sent_at >= 0.3 - peer.stats.max_lateness_s
            assert voiced(heard(peer.call)) == 15
            assert peer.stats.checkpoints[0].played_at > 0
            assert [a.audio_ms for a in peer.stats.play_audio] == [150.0, 150.0]
            # On an empty queue: answered on the next tick.
            asked = await bot.send(stream_events.checkpoint(stream_id, "empty"))
            await bot.until(lambda: len(bot.events("playedStream")) == 2)
            assert bot.at("playedStream", name="empty") - asked < 1.0
            assert peer.stats.error_count == 0

    _run(scenario())


def test_clear_audio_drops_the_queue_and_its_checkpoints() -> None:
    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot) as base, plivo_stream(base + "/s") as peer:
            await bot.until(lambda: bot.conn is not None and bool(bot.messages))
            stream_id = bot.messages[0]["start"]["streamId"]
            await bot.send(play_audio(tone(2000)))
            await bot.send(stream_events.checkpoint(stream_id, "lost"))
            await peer.until(lambda: peer.stats.frames_heard >= 5, 5)
            await bot.send(stream_events.clear_audio(stream_id))
            await bot.until(lambda: bool(bot.events("clearedAudio")))
            cleared = bot.events("clearedAudio")[0]
            assert cleared["streamId"] == stream_id and isinstance(cleared["sequenceNumber"], int)
            assert peer.queued_ms == 0.0 and len(peer.stats.clears) == 1
            assert peer.stats.checkpoints[0].cleared
            await bot.send(stream_events.checkpoint(stream_id, "after"))
            await bot.until(lambda: bool(bot.events("playedStream")))
            assert [m["name"] for m in bot.events("playedStream")] == ["after"]
            assert peer.stats.frames_heard < 100  # of the 2 s queued
            # What was heard after the clear is silence.
            frames = heard(peer.call)
            assert voiced(frames) == peer.stats.frames_heard

    _run(scenario())


def test_gaps_in_the_playback_are_timed_and_told_apart() -> None:
    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot) as base, plivo_stream(base + "/s") as peer:
            await bot.until(lambda: bot.conn is not None and bool(bot.messages))
            stream_id = bot.messages[0]["start"]["streamId"]
            frames: list[bytes] = []

            def silent_ticks_after_audio(n: int) -> Callable[[], bool]:
                def cond() -> bool:
                    frames.extend(heard(peer.call))
                    loud = [i for i, f in enumerate(frames) if rms_dbfs(f) > -45]
                    return bool(loud) and len(frames) - 1 - loud[-1] >= n

                return cond

            await bot.send(play_audio(tone(100)))
            await peer.until(silent_ticks_after_audio(3), 5)
            await bot.send(play_audio(tone(100)))  # the same turn, late: an underrun
            await peer.until(lambda: len(peer.stats.gaps) == 1, 5)
            frames.clear()
            await peer.until(silent_ticks_after_audio(2), 5)
            await bot.send(stream_events.clear_audio(stream_id))
            await bot.send(play_audio(tone(100)))  # after a clear: not an underrun
            await peer.until(lambda: len(peer.stats.gaps) == 2, 5)
            underrun, cleared = peer.stats.gaps
            assert not underrun.after_clear and cleared.after_clear
            assert 0.05 <= underrun.duration < 0.8
            assert peer.stats.underruns() == [underrun]
            assert peer.stats.max_underrun_s() == underrun.duration
            assert peer.stats.underruns(turn_gap_s=0.01) == []

    _run(scenario())


def test_keys_the_caller_presses_and_the_bot_sends() -> None:
    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot) as base, plivo_stream(base + "/s", extra_headers="k=v") as peer:
            await bot.until(lambda: bot.conn is not None and bool(bot.messages))
            with pytest.raises(ValueError):
                await peer.send_dtmf("1x")
            await peer.send_dtmf("12#")
            await bot.until(lambda: len(bot.events("dtmf")) == 3)
            keys = bot.events("dtmf")
            for m, digit in zip(keys, "12#", strict=True):
                assert m["dtmf"]["track"] == "inbound" and m["dtmf"]["digit"] == digit
                assert isinstance(m["dtmf"]["timestamp"], str) and m["extra_headers"] == "k=v"
                assert m["streamId"] == bot.messages[0]["start"]["streamId"]
                assert stream_events.parse_event(json.dumps(m)) == stream_events.Dtmf(digit)
            stamps = [int(m["dtmf"]["timestamp"]) for m in keys]  # ms, taken as each went out
            assert all(b - a >= 159 for a, b in itertools.pairwise(stamps))
            await bot.send(stream_events.send_dtmf("5#"))
            await peer.until(lambda: len(peer.call.dtmf_received) == 2, 5)
            assert [(k, how) for k, how, _ in peer.call.dtmf_received] == [
                ("5", "stream"),
                ("#", "stream"),
            ]

    _run(scenario())


def test_what_plivo_would_not_take_is_noted_and_dropped() -> None:
    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot) as base, plivo_stream(base + "/s") as peer:
            await bot.until(lambda: bot.conn is not None and bool(bot.messages))
            stream_id = bot.messages[0]["start"]["streamId"]
            bad: list[str | bytes] = [
                play_audio(tone(7000)),  # 75 KB in base64: over 64 KB
                play_audio(tone(100), contentType="audio/x-l16"),  # not the stream's format
                play_audio(tone(100), contentType="audio/x-mulaw;rate=8000"),
                play_audio(tone(100), sampleRate=16000),
                play_audio(b"", payload="not base64!"),
                "{not json",
                b"\x00\x01",
                json.dumps({"media": {}}),
                stream_events.checkpoint("another-stream", "x"),
                json.dumps({"event": "sendDTMF", "dtmf": "5x"}),
            ]
            for message in bad:
                await bot.send(message)
            await bot.send(json.dumps({"event": "muteStream", "streamId": stream_id}))
            await bot.send(stream_events.checkpoint(stream_id, "sync"))
            await bot.until(lambda: bool(bot.events("playedStream")))
            assert peer.stats.error_count == len(bad), peer.stats.errors
            assert peer.stats.unknown_events == {"muteStream": 1}
            assert peer.stats.frames_heard == 0 and not peer.call.ended.is_set()
            assert peer.stats.events_in["<binary>"] == 1
            assert peer.stats.events_in["<too big>"] == 1

    _run(scenario())


# -- how it ends -----------------------------------------------------------------------------


def test_hang_up_with_and_without_a_stop_event() -> None:
    async def hang_up(send_stop: bool) -> None:
        bot = Bot()
        async with bot_server(bot) as base, plivo_stream(base + "/s") as peer:
            await bot.until(lambda: bot.conn is not None and bool(bot.messages))
            await peer.hangup(send_stop=send_stop)
            await bot.until(bot.closed.is_set)
            await peer.until(peer.call.ended.is_set, 5)
        assert len(bot.events("stop")) == int(send_stop)
        if send_stop:
            stop = bot.events("stop")[0]
            assert stop == bot.messages[-1] and stop["reason"]
            assert isinstance(stream_events.parse_event(json.dumps(stop)), stream_events.Stop)
        assert bot.conn is not None and bot.conn.close_code == 1000
        assert peer.call.hung_up_locally and "hung up" in peer.call.reason

    _run(hang_up(True))
    _run(hang_up(False))


def test_a_dropped_connection_ends_the_call_without_a_close() -> None:
    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot) as base, plivo_stream(base + "/s") as peer:
            await bot.until(lambda: bot.conn is not None and bool(bot.messages))
            peer.drop()
            await bot.until(bot.closed.is_set)
            await peer.until(peer.call.ended.is_set, 5)
            assert bot.conn is not None and bot.conn.close_code == 1006  # no close frame
            assert peer.call.hung_up_locally and not bot.events("stop")

    _run(scenario())


def test_an_l16_stream() -> None:
    """XMLREF's default format, 8 kHz L16 (little-endian, as plivo-labs decodes it)."""

    async def scenario() -> None:
        bot = Bot()
        async with (
            bot_server(bot) as base,
            plivo_stream(base + "/s", encoding="audio/x-l16") as peer,
        ):
            await bot.until(lambda: len(bot.events("media")) >= 1)
            start = bot.messages[0]["start"]
            assert start["mediaFormat"] == {"encoding": "audio/x-l16", "sampleRate": 8000}
            assert len(base64.b64decode(bot.events("media")[0]["media"]["payload"])) == 320
            pcm = tone(100)
            body = {"contentType": "audio/x-l16", "sampleRate": 8000}
            body["payload"] = base64.b64encode(pcm).decode()
            await bot.send(json.dumps({"event": "playAudio", "media": body}))
            await bot.send(stream_events.checkpoint(start["streamId"], "done"))
            await bot.until(lambda: bool(bot.events("playedStream")))
            assert b"".join(f for f in heard(peer.call) if rms_dbfs(f) > -45) == pcm
            assert peer.stats.error_count == 0 and peer.call.codecs == ["L16/8000"]

    _run(scenario())


def test_the_bot_closing_ends_the_call() -> None:
    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot) as base, plivo_stream(base + "/s") as peer:
            await bot.until(lambda: bot.conn is not None and bool(bot.messages))
            assert bot.conn is not None
            await bot.conn.close(1000, "bye")
            await peer.until(peer.call.ended.is_set, 5)
            assert not peer.call.hung_up_locally
            assert peer.call.reason == "the bot closed the stream (close 1000 bye)"
            assert not bot.events("stop")

    _run(scenario())


def test_a_refused_or_failed_connection_ends_the_call() -> None:
    def refuse(_conn: ServerConnection, _request: Request) -> Response:
        return Response(403, "Forbidden", Headers(), b"no")

    async def scenario() -> None:
        bot = Bot()
        async with bot_server(bot, refuse) as base, plivo_stream(base + "/s") as peer:
            assert peer.call.ended.is_set() and not peer.call.confirmed.is_set()
            assert peer.call.status_code == 403 and "403" in peer.call.reason
        async with bot_server(Bot()) as base:
            gone = base  # nothing listens there once the server is closed
        peer = PlivoStreamPeer(gone + "/s", connect_retries=1, retry_delay_s=0.01)
        await asyncio.wait_for(peer.run(), 10)
        assert peer.call.ended.is_set() and peer.call.status_code == 0
        assert peer.call.reason.startswith("cannot connect")

    _run(scenario())


# -- the softphone's dialer, the answer_url --------------------------------------------------


class ThreadedBot:
    """A bot server on a loop of its own thread (the softphone blocks the test's thread)."""

    def __init__(self, on_message: Callable[[Bot, dict[str, Any]], Any] | None = None) -> None:
        self.bot: Bot | None = None
        self.url = ""
        self._on_message = on_message
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="bot")

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.bot = Bot(self._on_message)
        async with bot_server(self.bot) as base:
            self.url = base + "/stream"
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedBot:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class AnswerApp(HttpFake):
    """An answer_url app that answers with a <Stream>."""

    def __init__(self, xml: str) -> None:
        super().__init__()
        self.xml = xml
        self.route("POST", "/answer", lambda ex: self._answer(ex))

    def _answer(self, ex: Exchange) -> None:
        ex.send(200, self.xml.encode(), "application/xml")


def test_stream_dialer_plays_the_answer_url_and_the_stream() -> None:
    pressed = threading.Event()

    async def on_message(_bot: Bot, message: dict[str, Any]) -> None:
        if message["event"] == "dtmf":
            pressed.set()

    with ThreadedBot(on_message) as server:
        stream_url = server.url + "?call=app-call-1&amp;token=x"
        xml = (
            '<Response><Stream bidirectional="true" keepCallAlive="true"'
            ' contentType="audio/x-mulaw;rate=8000" extraHeaders="tenant=t1">'
            f"{stream_url}</Stream></Response>"
        )
        with AnswerApp(xml) as app:
            answer_url = app.origin + "/answer"
            params = {"CallUUID": "u1", "From": "+1", "To": "+2"}
            target = fetch_stream_answer(answer_url, params, TOKEN)
            assert target.call_id == "app-call-1" and target.extra_headers == "tenant=t1"
            assert target.bidirectional and target.keep_call_alive
            posted = app.requests[-1]
            assert posted.headers["x-plivo-signature-v3"].encode() == expected_signature(
                TOKEN, "POST", answer_url, params, posted.headers["x-plivo-signature-v3-nonce"]
            )
            dialer = StreamDialer(auth_token=TOKEN)
            dialer.start()
            try:
                call = dialer.dial(answer_url, {"X-Test": "1"})
                assert call.confirmed.wait(5)
                assert call.status_code == 101 and call.codecs == ["PCMU/8000"]
                with pytest.raises(StreamDialerError, match="not on a Plivo stream"):
                    dialer.hold()
                with pytest.raises(StreamDialerError, match="not on a Plivo stream"):
                    dialer.send_dtmf("1", "info")
                dialer.send_dtmf("7")
                assert pressed.wait(5)
                dialer.hangup()
                assert call.ended.wait(5) and call.hung_up_locally
            finally:
                dialer.stop()
            assert not dialer.alive
        bot = server.bot
        assert bot is not None
        form = app.requests[-1].body
        assert b"Direction=inbound" in form and b"CallStatus=ringing" in form
        start = bot.messages[0]
        assert start["start"]["callId"] == "app-call-1" and start["extra_headers"] == "tenant=t1"
        assert [m["dtmf"]["digit"] for m in bot.events("dtmf")] == ["7"]
        assert bot.request is not None and bot.request.headers["X-Test"] == "1"
        assert "X-Plivo-Signature-V3" in bot.request.headers
        assert dialer.notes == []


def test_answers_plivo_would_not_stream() -> None:
    with pytest.raises(StreamAnswerError, match="no <Stream>"):
        parse_stream_answer("<Response><Hangup/></Response>")
    with pytest.raises(StreamAnswerError, match="8 kHz"):
        parse_stream_answer(
            '<Response><Stream contentType="audio/x-l16;rate=16000">ws://h/s</Stream></Response>'
        )
    with pytest.raises(StreamAnswerError, match="inbound only"):
        parse_stream_answer(
            '<Response><Stream bidirectional="true" audioTrack="both">ws://h/s</Stream></Response>'
        )
    default = parse_stream_answer("<Response><Stream>wss://h/s</Stream></Response>", "u9")
    # XMLREF's defaults: one-way, L16 at 8 kHz; the callId is the answer's CallUUID.
    assert (default.bidirectional, default.encoding, default.call_id) == (
        False,
        "audio/x-l16",
        "u9",
    )


def test_softphone_script_runs_unchanged_over_a_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Greeting, one `play` step answered, hang-up: the SIP softphone's logic, on a stream."""
    state = {"loud": 0, "quiet": 0, "replied": False}

    async def on_message(bot: Bot, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            await bot.send(play_audio(tone(400)))
        elif message["event"] == "media" and not state["replied"]:
            pcm = ulaw_decode(base64.b64decode(message["media"]["payload"]))
            if rms_dbfs(pcm) > -45:
                state["loud"] += 1
                state["quiet"] = 0
            elif state["loud"] >= 5:
                state["quiet"] += 1
                if state["quiet"] >= 10:  # the caller spoke, then 200 ms of quiet: reply
                    state["replied"] = True
                    await bot.send(play_audio(tone(400)))

    wav = tmp_path / "hello.wav"
    write_wav(wav, tone(500))
    with ThreadedBot(on_message) as server:
        script = CallScript(steps=[("play", str(wav))], json=True, turn_timeout_s=5, gap_s=0.4)
        rc = run_softphone(server.url, script)
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert rc == 0, out
    assert report["greeting_ms"] is not None and report["ended_by"] == "caller"
    assert report["steps"][0]["ok"] and report["steps"][0]["reply_latency_ms"] is not None
    assert report["codecs"] == ["PCMU/8000"] and report["notes"] == ["answered (101)"]
