"""The agent's audio on a Plivo stream (gateway.stream.call): paced `playAudio` with a small
send-ahead, `clearAudio` on barge-in, and the end of a turn taken from Plivo's
`playedStream` answer to a `checkpoint`. The outbox is a list; time is passed in."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from gateway.audio.g711 import ulaw_decode, ulaw_encode
from gateway.audio.pcm import FRAME_BYTES
from gateway.providers.base import CallContext
from gateway.stream import events
from gateway.stream.call import StreamCall, StreamPlayout

pytestmark = pytest.mark.timeout(30)


class Outbox:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.open = True

    def send(self, message: str) -> bool:
        if self.open:
            self.sent.append(json.loads(message))
        return self.open

    def of(self, event: str) -> list[dict[str, object]]:
        return [m for m in self.sent if m["event"] == event]


def frames_in(message: dict[str, object]) -> int:
    media = message["media"]
    assert isinstance(media, dict)
    return len(base64.b64decode(media["payload"])) // 160


def tone_frame(n: int) -> bytes:
    # Loud enough to survive μ-law; distinct per n.
    return (1000 + n).to_bytes(2, "little") * (FRAME_BYTES // 2)


def playout(outbox: Outbox, ahead: int = 3, timeout_s: float = 0.2) -> StreamPlayout:
    return StreamPlayout(outbox, "stream-1", send_ahead=ahead, checkpoint_timeout_s=timeout_s)


def test_audio_goes_out_at_the_call_pace_with_a_small_send_ahead() -> None:
    out = Outbox()
    p = playout(out, ahead=3)
    for n in range(10):
        p.put(tone_frame(n))
    p.tick(100.0)  # the first tick only starts the clock
    assert out.sent == []
    p.tick(100.02)  # one frame due, and two more to be 3 ahead: one message
    assert [frames_in(m) for m in out.of("playAudio")] == [3]
    p.tick(100.04)
    p.tick(100.06)
    assert [frames_in(m) for m in out.of("playAudio")] == [3, 1, 1]
    p.tick(100.12)  # a late tick (60 ms): the three frames due go at once
    assert [frames_in(m) for m in out.of("playAudio")] == [3, 1, 1, 3]
    p.tick(100.14)
    p.tick(100.16)  # the ring ran dry: 10 frames sent, in order, as μ-law
    sent = b"".join(
        base64.b64decode(m["media"]["payload"])  # type: ignore[index]
        for m in out.of("playAudio")
    )
    assert sent == b"".join(ulaw_encode(tone_frame(n)) for n in range(10))
    assert out.of("playAudio")[0]["media"] == {
        "contentType": "audio/x-mulaw",
        "sampleRate": 8000,
        "payload": out.of("playAudio")[0]["media"]["payload"],  # type: ignore[index]
    }
    assert len(p) == 0


def test_clear_tells_plivo_only_when_audio_went_out() -> None:
    out = Outbox()
    p = playout(out)
    assert p.clear() == 0
    assert out.of("clearAudio") == []  # nothing was sent: nothing to clear
    for n in range(5):
        p.put(tone_frame(n))
    p.tick(1.0)
    p.tick(1.02)
    assert p.clear() == 2  # 3 went out, 2 still here
    assert out.of("clearAudio") == [{"event": "clearAudio", "streamId": "stream-1"}]
    assert p.queued_at_plivo == 0


def test_played_out_waits_for_plivos_played_stream() -> None:
    async def run() -> None:
        out = Outbox()
        p = playout(out, timeout_s=5.0)
        for n in range(2):
            p.put(tone_frame(n))
        p.tick(1.0)
        p.tick(1.02)  # both sent: our ring is empty, Plivo plays them
        waiter = asyncio.ensure_future(p.played_out())
        for _ in range(5):
            await asyncio.sleep(0)
        (checkpoint,) = out.of("checkpoint")
        assert checkpoint == {"event": "checkpoint", "streamId": "stream-1", "name": "turn-1"}
        assert not waiter.done()  # the caller has not heard it yet
        p.played("another-name")
        await asyncio.sleep(0)
        assert not waiter.done()
        p.played("turn-1")
        await asyncio.wait_for(waiter, 1.0)
        assert (p.checkpoints_sent, p.checkpoints_answered, p.checkpoints_missed) == (1, 1, 0)
        # Nothing new went out: no second checkpoint.
        await asyncio.wait_for(p.played_out(), 1.0)
        assert len(out.of("checkpoint")) == 1

    asyncio.run(run())


def test_played_out_ends_on_barge_in_close_or_silence_from_plivo() -> None:
    async def run() -> None:
        out = Outbox()
        p = playout(out, timeout_s=0.05)
        p.put(tone_frame(0))
        p.tick(1.0)
        p.tick(1.02)
        # Plivo never answers: taken as heard after the send-ahead plus the timeout.
        await asyncio.wait_for(p.played_out(), 2.0)
        assert p.checkpoints_missed == 1
        # A barge-in while waiting: clear() ends the wait at once.
        p.put(tone_frame(1))
        p.tick(1.04)
        p.checkpoint_timeout_s = 30.0
        waiter = asyncio.ensure_future(p.played_out())
        await asyncio.sleep(0.01)
        p.clear()
        await asyncio.wait_for(waiter, 1.0)
        # The call ends while waiting.
        p.put(tone_frame(2))
        p.tick(1.06)
        waiter = asyncio.ensure_future(p.played_out())
        await asyncio.sleep(0.01)
        p.close()
        await asyncio.wait_for(waiter, 1.0)

    asyncio.run(run())


def test_caller_audio_is_recut_into_20_ms_frames() -> None:
    start = events.Start("c", "s", "MA", events.MULAW, 8000, ("inbound",), {})
    call = StreamCall(
        start, CallContext(call_id="c"), playout(Outbox()), hangup=lambda reason: None
    )
    tone = b"".join(ulaw_encode(tone_frame(n)) for n in range(3))  # 480 bytes of μ-law
    call.media(tone[:100])
    call.media(tone[100:420])  # Plivo's chunks need not be 20 ms each
    assert call.media_frames == 2
    call.media(tone[420:])
    frames = [call.inbound.pop() for _ in range(3)]
    assert frames == [ulaw_decode(tone[i : i + 160]) for i in (0, 160, 320)]
    assert call.inbound.pop() is None


def test_keys_and_dtmf_out() -> None:
    out = Outbox()
    start = events.Start("c", "s", "MA", events.MULAW, 8000, ("inbound",), {})
    hung: list[str] = []
    call = StreamCall(start, CallContext(call_id="c"), playout(out), hangup=hung.append)
    call.send_dtmf("12#")
    assert out.of("sendDTMF") == [{"event": "sendDTMF", "dtmf": "12#"}]
    call.hangup("goodbye")
    call.hangup("again")
    assert hung == ["goodbye"]  # asked once


def test_a_paused_stream_keeps_its_audio_for_the_reconnect() -> None:
    out = Outbox()
    p = playout(out, ahead=1)
    for n in range(4):
        p.put(tone_frame(n))
    p.tick(1.0)
    p.tick(1.02)
    assert len(p) == 3
    p.paused = True  # the connection dropped: Plivo's retry is awaited
    p.tick(1.04)
    p.tick(1.06)
    assert len(p) == 3 and len(out.of("playAudio")) == 1
    fresh = Outbox()
    p.reconnect(fresh, "stream-2")
    p.paused = False
    p.tick(1.08)
    (message,) = fresh.of("playAudio")
    assert base64.b64decode(message["media"]["payload"]) == ulaw_encode(tone_frame(1))  # type: ignore[index]
    p.clear()
    assert fresh.of("clearAudio") == [{"event": "clearAudio", "streamId": "stream-2"}]


def test_nothing_to_clear_once_plivo_said_the_turn_was_heard() -> None:
    async def run() -> None:
        out = Outbox()
        p = playout(out, timeout_s=5.0)
        p.put(tone_frame(0))
        p.tick(1.0)
        p.tick(1.02)
        waiter = asyncio.ensure_future(p.played_out())
        for _ in range(5):
            await asyncio.sleep(0)
        p.played("turn-1")
        # A key arrives before the waiting turn resumes: Plivo has nothing left to clear.
        p.clear()
        assert out.of("clearAudio") == []
        await asyncio.wait_for(waiter, 1.0)

    asyncio.run(run())
