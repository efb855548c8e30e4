"""Helpers of the in-process session tests: a media clock that plays pjmedia's clock
thread, a quick fake brain, and a running call with its reports.

The sessions run on a virtual clock (`run`, tests/helpers/vclock.py): the media clock ticks
every 20 ms of loop time like pjmedia's, and loop time moves only when the session, its
fakes and the test have nothing left to do, so timings are exact and a loaded machine
changes nothing. A test that needs real time (a real socket) runs on asyncio's own loop
and ticks faster than real time (`WALL_TICK_S`) to stay short.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.audio.pcm import FRAME_BYTES, FRAME_MS, SILENCE_FRAME, rms_dbfs, split_frames
from gateway.audio.ring import PlayoutRing
from gateway.pipeline.activity import Activity
from gateway.pipeline.session import CallSession, ConversationOptions, Prompts, TurnRecord
from gateway.pipeline.turns import TurnEvent
from gateway.providers.base import BrainReply, CallContext
from gateway.providers.fake import FakeBrain, FakeStt, FakeTts
from gateway.sip.calls import CallHandle, SipCall
from tests.helpers.vclock import VirtualClockLoop, run_virtual

Speak = Callable[[str], bytes]
TICK_S = FRAME_MS / 1000.0  # one 20 ms frame per tick of loop time (virtual: no wall time)
WALL_TICK_S = 0.005  # on the wall clock: one 20 ms frame per 5 ms, 4x real time
TONE_FRAMES_PER_CHAR = 3  # FakeTts: 60 ms of tone per character = 3 frames


def loud(frame: bytes | None) -> bool:
    """Audible audio (speech or the agent's tone), as opposed to silence or nothing."""
    return frame is not None and rms_dbfs(frame) > -50.0


def speech(speak: Speak, text: str) -> list[bytes]:
    """Caller frames for `text`, starting at the first audible frame."""
    frames = split_frames(speak(text))
    first = next(i for i, f in enumerate(frames) if loud(f))
    return frames[first:]


class MediaClock:
    """Stands in for the media clock thread: one caller frame in, one agent frame out per
    tick, a tick every `tick_s` of loop time (by default `TICK_S` on the virtual clock,
    `WALL_TICK_S` on the wall clock). Make it on the loop that runs it."""

    def __init__(self, handle: CallHandle, tick_s: float | None = None) -> None:
        self.handle = handle
        if tick_s is None:
            virtual = isinstance(asyncio.get_running_loop(), VirtualClockLoop)
            tick_s = TICK_S if virtual else WALL_TICK_S
        self.tick_s = tick_s
        self.script: deque[bytes] = deque()
        self.caller: list[bytes] = []  # what was pushed, one per tick
        self.agent: list[bytes | None] = []  # what was popped (None = silence), one per tick
        self.agent_loud: list[bool] = []  # loud(agent frame), one per tick
        self.times: list[float] = []  # loop time of each tick

    @property
    def ticks(self) -> int:
        return len(self.caller)

    def say(self, frames: Sequence[bytes]) -> int:
        """Queue caller frames after whatever is queued; returns the tick of the first one."""
        start = self.ticks + len(self.script)
        self.script.extend(frames)
        return start

    def idle(self) -> bool:
        return not self.script

    async def run(self) -> None:
        # A plain sleep per tick: after a stall the clock never fires a burst of ticks, so
        # a count of ticks always leaves the session the same chances to react.
        loop = asyncio.get_running_loop()
        while True:
            frame = self.script.popleft() if self.script else SILENCE_FRAME
            self.times.append(loop.time())
            self.handle.inbound.push(frame)
            self.caller.append(frame)
            out = self.handle.playout.pop()
            self.agent.append(out)
            self.agent_loud.append(loud(out))
            await asyncio.sleep(self.tick_s)

    def agent_loud_ticks(self, start: int = 0) -> list[int]:
        return [i for i in range(start, len(self.agent_loud)) if self.agent_loud[i]]


class QuickBrain(FakeBrain):
    """FakeBrain with short prompts (keeps the tests short) that records what it heard.

    `replies` are used in turn; the last one repeats. `fail` is a set of 1-based respond()
    call numbers that raise instead of answering.
    """

    def __init__(self, replies: Sequence[str] = ("Okay.",), fail: frozenset[int] = frozenset()):
        super().__init__()
        self.replies = list(replies)
        self.fail = fail
        self.heard: list[str] = []

    async def greeting(self, ctx: CallContext) -> BrainReply:
        return BrainReply("Hi.", intent="greeting")

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        self.heard.append(text)
        if len(self.heard) in self.fail:
            raise RuntimeError("brain exploded")
        reply = self.replies[min(len(self.heard), len(self.replies)) - 1]
        return BrainReply(reply, intent="quick")

    async def no_input(self, ctx: CallContext, attempt: int) -> BrainReply:
        if attempt >= 2:
            return BrainReply("Bye.", ("hangup",), "no_input")
        return BrainReply("Hello?", intent="no_input")


@dataclass
class Call:
    """A running session plus its fake clock and what it reported."""

    session: CallSession
    transport: SipCall
    clock: MediaClock
    task: asyncio.Task[None]
    clock_task: asyncio.Task[None]
    turns: list[TurnRecord] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)
    # What the session reported the agent doing (`on_activity`), with the loop time of each.
    activities: list[tuple[float, Activity]] = field(default_factory=list)

    def activity_seq(self) -> list[Activity]:
        """The activities reported so far, in order."""
        return [a for _, a in self.activities]

    def activity_at(self, activity: Activity, nth: int = 0) -> float:
        """The loop time of the `nth` report of `activity`."""
        return [t for t, a in self.activities if a == activity][nth]

    async def until(self, what: str, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `cond()` holds; fail (naming `what`) on timeout or a crashed session."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            if self.task.done():
                exc = None if self.task.cancelled() else self.task.exception()
                pytest.fail(f"session ended while waiting for {what}: {exc!r}")
            if loop.time() > deadline:
                pytest.fail(f"timed out waiting for {what}; turns: {self.turns}")
            await asyncio.sleep(0.005)

    async def turn(self, index: int, timeout: float = 5.0) -> TurnRecord:
        await self.until(f"turn record #{index}", lambda: len(self.turns) > index, timeout)
        return self.turns[index]

    async def stop(self) -> bool:
        """Cancel run() as the worker does when the call ends; True if it ended within 1 s."""
        self.task.cancel()
        done, _ = await asyncio.wait({self.task}, timeout=1.0)
        self.clock_task.cancel()
        await asyncio.gather(self.clock_task, return_exceptions=True)
        return self.task in done and self.task.cancelled()

    async def hang_up(self) -> None:
        """End the call and check the session went away cleanly and promptly."""
        assert await self.stop(), "session did not finish within 1 s of being cancelled"
        assert len(self.session.call.playout) == 0
        # Nothing of the session outlives it (reply task, TaskGroup children, TTS stream).
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == []


def make_handle() -> CallHandle:
    """A caller's call whose playout ring reads the running loop's clock (call on the loop)."""
    return CallHandle(
        playout=loop_ring(),
        call_id=1,
        sip_call_id="test-call@127.0.0.1",
        remote_uri="sip:caller@127.0.0.1",
        local_uri="sip:agent@127.0.0.1",
        headers={
            # As Plivo delivers the answer_url app's sipHeaders (gateway.plivo.callcontext).
            "X-PH-Calluuid": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "X-PH-From": "p14155550123",
            "X-PH-To": "14155550100",
            "X-PH-Campaign": "spring",
            "To": "<sip:agent@127.0.0.1>",
        },
    )


def loop_ring() -> PlayoutRing:
    """A playout ring timed by the running loop's clock, as the session is (the media clock
    pops it on the loop here, not on a thread)."""
    return PlayoutRing(clock=asyncio.get_running_loop().time)


def start_call(
    brain: FakeBrain,
    options: ConversationOptions,
    stt: FakeStt | None = None,
    prompts: Prompts | None = None,
    tts: FakeTts | None = None,
    **transport: Any,
) -> Call:
    """A session on a fresh handle, with its clock running; `transport` are more of
    `SipCall`'s arguments (``transfer``, ``warm``, ...)."""
    handle = make_handle()
    turns: list[TurnRecord] = []
    hangups: list[str] = []
    activities: list[tuple[float, Activity]] = []
    loop = asyncio.get_running_loop()
    call = SipCall(handle, hangup=hangups.append, **transport)
    call_session = CallSession(
        call,
        stt=stt or FakeStt(),
        tts=tts or FakeTts(),
        brain=brain,
        options=options,
        on_turn=turns.append,
        prompts=prompts,
        on_activity=lambda a: activities.append((loop.time(), a)),
    )
    clock = MediaClock(handle)
    task = asyncio.ensure_future(call_session.run())
    clock_task = asyncio.ensure_future(clock.run())
    return Call(call_session, call, clock, task, clock_task, turns, hangups, activities)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a session test on the virtual clock."""
    run_virtual(test())


def expected_turn(
    caller: Sequence[bytes], options: ConversationOptions, min_speech_ms: int | None = None
) -> tuple[TurnEvent, TurnEvent]:
    """Replay the caller audio through a fresh detector: the first turn's START and END."""
    det = options.turn_detector(min_speech_ms)
    events = [e for e in (det.push(f) for f in caller) if e is not None]
    assert [e.kind for e in events[:2]] == ["start", "end"], events
    return events[0], events[1]


def fake_stt_text(start: TurnEvent, end: TurnEvent) -> str:
    """What FakeStt hears: the START audio plus every frame up to (not including) the END."""
    fed = len(start.audio) + FRAME_BYTES * (end.frame_index - start.frame_index - 1)
    return f"utterance of {fed * 1000 // (8000 * 2)} milliseconds"
