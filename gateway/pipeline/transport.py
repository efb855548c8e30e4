"""A call as the conversation sees it: the one interface between `gateway.pipeline` and a
transport.

The conversation knows nothing of how a call reaches it. A transport gives it the caller's
audio (20 ms frames of 8 kHz 16-bit mono PCM), a sink for the agent's audio, the caller's
keys, whether the caller holds the call, and the call's context, and it does the hang-up,
the DTMF the agent sends and the transfer to a human. The SIP bridge
(`gateway.sip.calls.SipCall`, over pjsua2) is one implementation; a Plivo audio-stream
WebSocket is another. Nothing in `gateway.pipeline` imports a transport's package.

`KeyQueue` is a `Keypad` any transport can use (keys pushed on any thread).

Threads: frames and keys may be pushed from any thread (the SIP media clock's, the pj
thread); everything the conversation calls here runs on its asyncio loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from typing import Protocol

from gateway.policy.transfer import Transferrer
from gateway.providers.base import CallContext


class CallerAudio(Protocol):
    """The caller's audio: one 20 ms PCM frame (320 bytes) per 20 ms, silence included."""

    # When set, every frame received is also appended here (the call recorder's tap).
    tap: collections.deque[bytes] | None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the loop whose task consumes the frames (call on that loop, first)."""

    async def get(self) -> bytes:
        """The next frame; waits for one."""
        ...


class AudioSink(Protocol):
    """Where the agent's audio goes: queued, played out at the call's pace, clearable.

    One coroutine at a time waits on a sink (`capture` or `played_out`). Both are woken by
    the sink itself when it plays out, never by polling.
    """

    # When set, every frame sent (silence included) is also appended here.
    tap: collections.deque[bytes] | None
    # Longest pause between two frames sent since it was last reset to 0.0 (seconds).
    max_gap: float

    def __len__(self) -> int:
        """Frames queued and not yet played (the playout position: 0 = all played)."""
        ...

    @property
    def marked_at(self) -> float:
        """Monotonic time the frame queued after `mark()` went out (0.0 until then)."""
        ...

    async def capture(self, pcm: bytes) -> bool:
        """Queue PCM audio, waiting while the sink is full; False (the rest not queued)
        once the call is gone."""
        ...

    async def played_out(self) -> None:
        """Return once everything queued has been played (or the call is gone)."""

    def clear(self) -> int:
        """Drop the audio not yet played (barge-in); returns how many frames it was."""
        ...

    def mark(self) -> None:
        """Note when the next frame queued goes out, in `marked_at`."""


class Keypad(Protocol):
    """The caller's keys (DTMF), with how each was sent (e.g. "rfc4733", "info")."""

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the loop whose task consumes the keys (call on that loop, first)."""

    async def get(self) -> tuple[str, str]:
        """The next key and its method; waits for one."""
        ...


class KeyQueue:
    """The caller's keys (DTMF) as a `Keypad`: pushed by the transport on any thread (the SIP
    pj thread, a stream's reader), awaited on the loop.

    Keys pushed before `bind` are kept (at most `capacity`, the oldest dropped) and
    delivered once the conversation starts.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._early: collections.deque[tuple[str, str]] = collections.deque(maxlen=capacity)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, str]] | None = None
        self.pushed = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the loop whose task consumes the keys (call on that loop)."""
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=self.capacity)
        with self._lock:
            while self._early:
                queue.put_nowait(self._early.popleft())
            self._queue = queue
            self._loop = loop

    def push(self, key: str, method: str) -> None:
        """Any thread: the caller pressed `key` (sent by `method`, e.g. "rfc4733" or "info")."""
        self.pushed += 1
        with self._lock:
            loop, queue = self._loop, self._queue
            if loop is None or queue is None:
                self._early.append((key, method))
                return
        with contextlib.suppress(RuntimeError):  # a closed loop: the call is over
            loop.call_soon_threadsafe(_put_bounded, queue, (key, method))

    async def get(self) -> tuple[str, str]:
        """The next key and its method; waits for one."""
        assert self._queue is not None, "bind() first"
        return await self._queue.get()


def _put_bounded(queue: asyncio.Queue[tuple[str, str]], item: tuple[str, str]) -> None:
    if queue.full():
        queue.get_nowait()  # a stuck consumer must not grow memory: keep the newest keys
    queue.put_nowait(item)


class CallLeg(Protocol):
    """A call the agent placed itself: the human's leg of a warm transfer."""

    @property
    def answered_at(self) -> float:
        """Monotonic time it was answered (0.0 until then)."""
        ...

    @property
    def ended_at(self) -> float:
        """Monotonic time it ended (0.0 while it goes on)."""
        ...

    @property
    def end_reason(self) -> str:
        """Why it ended, e.g. "486 Busy Here"."""
        ...

    @property
    def playout(self) -> AudioSink:
        """What the human hears (the agent's summary)."""
        ...

    async def settled(self) -> None:
        """Return once the call was answered or ended (woken by that change, not a poll)."""


class WarmLegs(Protocol):
    """What a warm transfer needs from the transport: call the human, bridge, hang up."""

    def resolve(self, target: str) -> str:
        """The URI for a target as the action gave it (raises `TransferError`)."""
        ...

    async def dial(self, uri: str) -> CallLeg:
        """Call the human; returns once the call is placed (the leg then shows the answer
        or the end). Raises on a call that cannot be placed."""
        ...

    async def bridge(self, human: CallLeg, reason: str) -> bool:
        """Connect the caller's audio with the human's; False if either call is gone."""
        ...

    def hangup(self, leg: CallLeg, reason: str) -> None:
        """End the human's leg (a failed warm transfer)."""


class CallMedia(Protocol):
    """A call's id and its two audio streams: what a recorder needs."""

    @property
    def call_id(self) -> str:
        """The call's id in logs and records (a SIP Call-ID, a stream's call id)."""
        ...

    @property
    def inbound(self) -> CallerAudio:
        """The caller's audio."""
        ...

    @property
    def playout(self) -> AudioSink:
        """The agent's audio."""
        ...


class CallTransport(CallMedia, Protocol):
    """One call's media and control, as the conversation sees it."""

    @property
    def context(self) -> CallContext:
        """What the brain may know about the call (its `call_id` is `call_id`)."""
        ...

    @property
    def keys(self) -> Keypad:
        """The caller's keys."""
        ...

    @property
    def answered_at(self) -> float:
        """Monotonic time the call was answered (0.0 if unknown)."""
        ...

    @property
    def on_hold(self) -> bool:
        """The caller holds the call: the agent's audio waits, what comes in is not
        listened to."""
        ...

    def hangup(self, reason: str) -> None:
        """End the call (asked once by the conversation)."""

    def send_dtmf(self, keys: str) -> None:
        """Send keys to the caller's side (after the reply that asked for it played)."""

    @property
    def cold_transfer(self) -> Transferrer | None:
        """Hand the caller to a target, the agent leaving the call (None: not possible)."""
        ...

    @property
    def warm_legs(self) -> WarmLegs | None:
        """Call the human first and bridge the caller to them (None: cold only)."""
        ...
