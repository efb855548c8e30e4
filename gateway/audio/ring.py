"""Bounded frame rings shared between the media clock thread and the asyncio loop.

The media clock thread (pjmedia's) only appends or pops whole frames; `collections.deque`
makes each of those a single atomic operation under the GIL, so no lock is held on the
clock thread. The asyncio side is woken only when it said it is waiting, and through one
`LoopWaker` per event loop: the frames of all calls of a process arrive in the same clock
tick, and they share one `call_soon_threadsafe` (one self-pipe write, one GIL hand-over)
instead of paying one each (the capacity benchmark found those wake-ups to be the clock
thread's main GIL waits).
"""

from __future__ import annotations

import asyncio
import collections
import time
import weakref
from collections.abc import Callable

from gateway.audio.pcm import FRAME_BYTES, SILENCE_FRAME, split_frames


class LoopWaker:
    """Sets asyncio events from the clock thread, batching the hand-overs to the loop.

    `wake()` queues an event and schedules one `_fire` unless one is already pending; the
    loop then sets every queued event.  Ordering makes a lost wake-up impossible: `_fire`
    clears `_pending` before draining, so an event queued after the drain started either is
    drained now or schedules a new `_fire`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready: collections.deque[asyncio.Event] = collections.deque()
        self._pending = False
        self.scheduled = 0  # call_soon_threadsafe calls made (for tests and benchmarks)

    def wake(self, event: asyncio.Event) -> None:
        """Any thread: have the loop set ``event`` soon."""
        self._ready.append(event)
        if not self._pending:
            self._pending = True
            self.scheduled += 1
            try:
                self._loop.call_soon_threadsafe(self._fire)
            except RuntimeError:  # loop closed during shutdown
                self._pending = False

    def _fire(self) -> None:
        self._pending = False
        ready = self._ready
        while ready:
            ready.popleft().set()


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaker] = (
    weakref.WeakKeyDictionary()
)


def waker_for(loop: asyncio.AbstractEventLoop) -> LoopWaker:
    """The `LoopWaker` shared by every ring bound to ``loop`` (call on that loop)."""
    waker = _wakers.get(loop)
    if waker is None:
        waker = _wakers[loop] = LoopWaker(loop)
    return waker


class InboundRing:
    """Caller audio: frames pushed by the clock thread, consumed by the conversation.

    Bounded: when the consumer falls behind by more than `capacity` frames the oldest frames
    are dropped and counted in `dropped` (a stalled conversation must not grow memory).
    """

    def __init__(self, capacity: int = 250) -> None:
        self._frames: collections.deque[bytes] = collections.deque(maxlen=capacity)
        self._waker: LoopWaker | None = None
        self._event: asyncio.Event | None = None
        self._waiting = False
        self.capacity = capacity
        self.pushed = 0
        self.dropped = 0
        # When set, every frame pushed is also appended here (the call recorder drains it).
        self.tap: collections.deque[bytes] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the loop whose tasks consume this ring (call on that loop)."""
        self._waker = waker_for(loop)
        self._event = asyncio.Event()

    def push(self, frame: bytes) -> None:
        """Clock thread: add one frame, wake the consumer if it waits."""
        if len(self._frames) == self.capacity:
            self.dropped += 1
        self._frames.append(frame)
        self.pushed += 1
        if self.tap is not None:
            self.tap.append(frame)
        if self._waiting and self._waker is not None and self._event is not None:
            self._waiting = False
            self._waker.wake(self._event)

    def pop(self) -> bytes | None:
        """Consumer: the oldest frame, or None when empty."""
        try:
            return self._frames.popleft()
        except IndexError:
            return None

    async def get(self) -> bytes:
        """Consumer: wait for the next frame."""
        assert self._event is not None, "bind() first"
        while True:
            frame = self.pop()
            if frame is not None:
                return frame
            self._event.clear()
            self._waiting = True
            # A frame pushed between pop() and _waiting=True would not wake us: re-check.
            if self._frames:
                self._waiting = False
                continue
            await self._event.wait()

    def clear(self) -> None:
        """Drop everything queued."""
        self._frames.clear()


class PlayoutRing:
    """Agent audio: frames queued by the conversation, popped by the clock thread.

    Empty ring means silence. `clear()` is how barge-in stops the agent: the next clock tick
    already plays silence. `started_at` is the monotonic time at which the clock thread took
    the first frame after the ring had run empty, i.e. when agent audio went on the wire.

    The conversation's side is event-driven (`capture`, `played_out`): a waiting coroutine
    names how few frames it waits for (`_wake_at`), and the clock thread wakes it through
    the loop's `LoopWaker` on the pop that gets there, never on the others.  `close()` (the
    call ended, the clock will pop no more) wakes it for good.
    """

    def __init__(self, capacity: int = 150, clock: Callable[[], float] = time.monotonic) -> None:
        self._frames: collections.deque[bytes] = collections.deque()
        self.capacity = capacity
        # What time it is for whoever pops (the clock thread: monotonic; a test's clock
        # task on a virtual loop: the loop's time). The conversation compares it with its
        # own clock (`gateway.pipeline.clock`).
        self.clock = clock
        self.started_at = 0.0
        self.last_frame_at = 0.0
        self.playing = False
        self.frames_played = 0
        self.max_gap = 0.0
        self.marked_at = 0.0
        self._marked = False
        # When set, every frame sent (silence included) is also appended here.
        self.tap: collections.deque[bytes] | None = None
        self.closed = False
        self._waker: LoopWaker | None = None
        self._event: asyncio.Event | None = None
        # A coroutine waits until at most this many frames are queued (-1: none waits).
        self._wake_at = -1

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def free(self) -> int:
        """Frames that can be queued before the ring is full."""
        return max(0, self.capacity - len(self._frames))

    def put(self, frame: bytes) -> None:
        """Conversation: queue one frame of exactly FRAME_BYTES (callers respect `free`)."""
        if len(frame) != FRAME_BYTES:
            raise ValueError(f"playout frame must be {FRAME_BYTES} bytes, got {len(frame)}")
        self._frames.append(frame)

    def pop(self) -> bytes | None:
        """Clock thread: next frame to send, or None for silence."""
        try:
            frame = self._frames.popleft()
        except IndexError:
            self.playing = False
            if self.tap is not None:
                self.tap.append(SILENCE_FRAME)
            if self._wake_at >= 0:
                self._wake()
            return None
        if self.tap is not None:
            self.tap.append(frame)
        now = self.clock()
        if self.playing and now - self.last_frame_at > self.max_gap:
            self.max_gap = now - self.last_frame_at
        if self._marked:
            self._marked = False
            self.marked_at = now
        if not self.playing:
            self.playing = True
            self.started_at = now
        self.last_frame_at = now
        self.frames_played += 1
        # Woken last, so the waiter sees this frame's bookkeeping (marked_at, frames_played).
        if self._wake_at >= 0 and len(self._frames) <= self._wake_at:
            self._wake()
        return frame

    def idle_tick(self) -> None:
        """Clock thread: a tick on which nothing is sent although audio may be queued (the
        call is on hold).  The queue waits; playing resumes as a new start, so the pause is
        not counted as a gap."""
        self.playing = False
        if self.tap is not None:
            self.tap.append(SILENCE_FRAME)

    def mark(self) -> None:
        """Note the time the next queued frame goes out, in `marked_at` (0.0 until then)."""
        self.marked_at = 0.0
        self._marked = True

    def clear(self) -> int:
        """Drop queued audio (barge-in); returns how many frames were dropped."""
        n = len(self._frames)
        self._frames.clear()
        if self._wake_at >= 0:
            self._wake()
        return n

    def close(self) -> None:
        """Any thread: the call ended and nothing more will be sent; waiters return."""
        self.closed = True
        if self._wake_at >= 0:
            self._wake()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the loop whose tasks queue audio (done by the first wait if not before)."""
        self._waker = waker_for(loop)
        self._event = asyncio.Event()

    async def capture(self, pcm: bytes) -> bool:
        """Conversation: queue `pcm` frame by frame as the ring makes room (woken by the
        clock thread's pops); False, with the rest not queued, once the ring is closed."""
        for frame in split_frames(pcm):
            if not self.free:
                await self._until_at_most(self.capacity - 1)
            if self.closed:
                return False
            self.put(frame)
        return True

    async def played_out(self) -> None:
        """Conversation: wait until every queued frame went out (or the ring is closed)."""
        await self._until_at_most(0)

    async def _until_at_most(self, frames: int) -> None:
        if self._event is None:
            self.bind(asyncio.get_running_loop())
        assert self._event is not None
        while len(self._frames) > frames and not self.closed:
            self._event.clear()
            self._wake_at = frames
            # A pop between the test above and `_wake_at` would not wake us: re-check.
            if len(self._frames) <= frames or self.closed:
                self._wake_at = -1
                return
            try:
                await self._event.wait()
            finally:
                self._wake_at = -1

    def _wake(self) -> None:
        self._wake_at = -1
        if self._waker is not None and self._event is not None:
            self._waker.wake(self._event)
