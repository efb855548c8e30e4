"""Tests for gateway.audio.ring: InboundRing (clock thread -> asyncio) and PlayoutRing."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.audio.pcm import FRAME_BYTES
from gateway.audio.ring import InboundRing, PlayoutRing, waker_for

pytestmark = pytest.mark.timeout(30)


def frame(n: int) -> bytes:
    """A distinct, valid 320-byte frame carrying the number `n`."""
    return n.to_bytes(4, "little") + bytes(FRAME_BYTES - 4)


def consume_from_thread(ring: InboundRing, producer: Callable[[], None], count: int) -> list[int]:
    """Run `producer` on a thread (the media clock) while the loop gets `count` frames."""

    async def consume() -> list[int]:
        ring.bind(asyncio.get_running_loop())
        thread = threading.Thread(target=producer, name="fake-clock", daemon=True)
        got: list[int] = []
        thread.start()
        try:
            for _ in range(count):
                got.append(number(await asyncio.wait_for(ring.get(), 2.0)))
        finally:
            await asyncio.to_thread(thread.join, 5.0)
        return got

    return asyncio.run(consume())


def number(data: bytes) -> int:
    """The number carried by a `frame()`."""
    return int.from_bytes(data[:4], "little")


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads far more often than the default 5 ms, to provoke interleavings."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


# -- InboundRing: plain push / pop ------------------------------------------------------------


def test_inbound_pop_on_empty_returns_none() -> None:
    ring = InboundRing()
    assert ring.pop() is None
    assert ring.pushed == 0
    assert ring.dropped == 0


def test_inbound_is_fifo_and_counts_pushes() -> None:
    ring = InboundRing(capacity=16)
    for n in range(10):
        ring.push(frame(n))
    assert [number(ring.pop() or b"") for _ in range(10)] == list(range(10))
    assert ring.pop() is None
    assert ring.pushed == 10
    assert ring.dropped == 0


def test_inbound_bound_drops_oldest_and_counts_them() -> None:
    ring = InboundRing(capacity=5)
    for n in range(8):
        ring.push(frame(n))
    assert ring.pushed == 8
    assert ring.dropped == 3
    popped = []
    while (item := ring.pop()) is not None:
        popped.append(number(item))
    assert popped == [3, 4, 5, 6, 7]


def test_inbound_exactly_full_drops_nothing() -> None:
    ring = InboundRing(capacity=4)
    for n in range(4):
        ring.push(frame(n))
    assert ring.dropped == 0
    ring.push(frame(4))
    assert ring.dropped == 1
    assert number(ring.pop() or b"") == 1


def test_inbound_capacity_one_keeps_newest() -> None:
    ring = InboundRing(capacity=1)
    for n in range(5):
        ring.push(frame(n))
    assert ring.dropped == 4
    assert ring.pop() == frame(4)
    assert ring.pop() is None


def test_inbound_clear_empties_but_keeps_counters() -> None:
    ring = InboundRing(capacity=8)
    for n in range(3):
        ring.push(frame(n))
    ring.clear()
    assert ring.pop() is None
    assert ring.pushed == 3
    assert ring.dropped == 0
    ring.push(frame(9))
    assert ring.pop() == frame(9)


def test_inbound_default_capacity_is_five_seconds_of_frames() -> None:
    ring = InboundRing()
    assert ring.capacity == 250
    for n in range(300):
        ring.push(frame(n))
    assert ring.dropped == 50
    assert number(ring.pop() or b"") == 50


# -- InboundRing: asyncio consumer ------------------------------------------------------------


def test_inbound_get_without_bind_fails_loudly() -> None:
    ring = InboundRing()
    ring.push(frame(1))

    async def consume() -> bytes:
        return await ring.get()

    with pytest.raises(AssertionError, match="bind"):
        asyncio.run(consume())


def test_inbound_get_returns_queued_frames_in_order() -> None:
    ring = InboundRing(capacity=16)

    async def consume() -> list[int]:
        ring.bind(asyncio.get_running_loop())
        for n in range(5):
            ring.push(frame(n))
        return [number(await asyncio.wait_for(ring.get(), 1.0)) for _ in range(5)]

    assert asyncio.run(consume()) == [0, 1, 2, 3, 4]


def test_inbound_get_waits_until_a_frame_arrives() -> None:
    ring = InboundRing()

    async def consume() -> tuple[bool, bytes]:
        ring.bind(asyncio.get_running_loop())
        task = asyncio.ensure_future(ring.get())
        await asyncio.sleep(0.05)
        waited = not task.done()
        ring.push(frame(42))  # same thread as the loop: must still wake the consumer
        return waited, await asyncio.wait_for(task, 1.0)

    waited, got = asyncio.run(consume())
    assert waited
    assert got == frame(42)


def test_inbound_get_wakes_when_another_thread_pushes() -> None:
    ring = InboundRing()
    count = 25

    def producer() -> None:
        time.sleep(0.03)  # let the consumer reach its wait first
        for n in range(count):
            ring.push(frame(n))
            time.sleep(0.004)

    async def consume() -> tuple[list[int], list[float]]:
        ring.bind(asyncio.get_running_loop())
        thread = threading.Thread(target=producer, name="fake-clock", daemon=True)
        got: list[int] = []
        waits: list[float] = []
        thread.start()
        try:
            for _ in range(count):
                t0 = time.monotonic()
                got.append(number(await asyncio.wait_for(ring.get(), 2.0)))
                waits.append(time.monotonic() - t0)
        finally:
            await asyncio.to_thread(thread.join, 5.0)
        return got, waits

    got, waits = asyncio.run(consume())
    assert got == list(range(count))
    assert ring.dropped == 0
    # The first get() had to wait for the producer's first push (it sleeps 30 ms first).
    assert waits[0] >= 0.02
    # No get() waited anywhere near the 2 s timeout: each push woke the consumer promptly.
    assert max(waits) < 1.0


@pytest.mark.usefixtures("fast_switching")
def test_inbound_no_lost_wakeup_when_a_thread_pushes_flat_out() -> None:
    count = 2000
    ring = InboundRing(capacity=count)  # big enough that nothing may be dropped

    def producer() -> None:
        for n in range(count):
            ring.push(frame(n))

    got = consume_from_thread(ring, producer, count)
    assert got == list(range(count))
    assert ring.pushed == count
    assert ring.dropped == 0
    assert ring.pop() is None


@pytest.mark.usefixtures("fast_switching")
def test_inbound_no_lost_wakeup_when_consumer_keeps_catching_up() -> None:
    """Producer pushes one frame at a time and yields, so the consumer often waits in get()."""
    count = 2000
    ring = InboundRing(capacity=count)

    def producer() -> None:
        for n in range(count):
            ring.push(frame(n))
            if n % 3 == 0:
                time.sleep(0)  # give the GIL away: the consumer reaches its wait
            if n % 200 == 0:
                time.sleep(0.001)

    assert consume_from_thread(ring, producer, count) == list(range(count))
    assert ring.dropped == 0


@pytest.mark.usefixtures("fast_switching")
def test_inbound_no_lost_wakeup_in_lockstep() -> None:
    """Each push is the only one the consumer can get, so a single lost wakeup hangs get().

    The producer pushes frame n only after the consumer announced it is about to call
    get() for it, after a varying short delay, so the push lands at every point of get():
    before its pop(), between pop() and "I am waiting", and after it.
    """
    rounds = 600
    ring = InboundRing(capacity=4)
    ready = threading.Semaphore(0)
    failed = threading.Event()

    def producer() -> None:
        for n in range(rounds):
            if not ready.acquire(timeout=5.0):
                failed.set()
                return
            spin = n % 7  # 0..6: a few different tiny delays
            deadline = time.perf_counter() + spin * 5e-6
            while time.perf_counter() < deadline:
                pass
            ring.push(frame(n))

    async def consume() -> list[int]:
        ring.bind(asyncio.get_running_loop())
        thread = threading.Thread(target=producer, name="fake-clock", daemon=True)
        got: list[int] = []
        thread.start()
        try:
            for _ in range(rounds):
                ready.release()
                got.append(number(await asyncio.wait_for(ring.get(), 2.0)))
        finally:
            await asyncio.to_thread(thread.join, 5.0)
        return got

    assert asyncio.run(consume()) == list(range(rounds))
    assert not failed.is_set()
    assert ring.dropped == 0


def test_frames_of_one_clock_tick_share_one_wakeup() -> None:
    """Four calls' consumers wait; one tick pushes a frame to each from another thread:
    one hand-over to the loop wakes all four (not four `call_soon_threadsafe`)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        rings = [InboundRing() for _ in range(4)]
        for ring in rings:
            ring.bind(loop)
        waker = waker_for(loop)
        getters = [asyncio.ensure_future(ring.get()) for ring in rings]
        await asyncio.sleep(0.01)  # every consumer is waiting now
        before = waker.scheduled

        def tick() -> None:
            for i, ring in enumerate(rings):
                ring.push(bytes([i]) * FRAME_BYTES)

        # The loop is held (a blocking join) while the clock thread pushes, as it is busy
        # while pjmedia's tick runs: otherwise a loop that grabs the GIL between two pushes
        # would fire the first wake-up early and the count would depend on the scheduler.
        clock = threading.Thread(target=tick)
        clock.start()
        clock.join()
        frames = await asyncio.wait_for(asyncio.gather(*getters), 2.0)
        assert [f[0] for f in frames] == [0, 1, 2, 3]
        assert waker.scheduled - before == 1

    asyncio.run(scenario())


def test_inbound_push_after_loop_closed_does_not_raise() -> None:
    ring = InboundRing()

    async def abandon_a_wait() -> None:
        ring.bind(asyncio.get_running_loop())
        waiter = asyncio.ensure_future(ring.get())
        await asyncio.sleep(0.01)  # the consumer now says it is waiting
        waiter.cancel()

    asyncio.run(abandon_a_wait())  # closes the loop
    ring.push(frame(7))  # the clock thread must survive a closed loop
    assert ring.pop() == frame(7)
    assert ring.pushed == 1


# -- PlayoutRing ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, FRAME_BYTES - 1, FRAME_BYTES + 1, 2 * FRAME_BYTES])
def test_playout_rejects_wrong_frame_sizes(size: int) -> None:
    ring = PlayoutRing()
    with pytest.raises(ValueError, match=f"must be {FRAME_BYTES} bytes, got {size}"):
        ring.put(bytes(size))
    assert len(ring) == 0


def test_playout_is_fifo_and_tracks_len_and_free() -> None:
    ring = PlayoutRing(capacity=4)
    assert ring.free == 4
    for n in range(3):
        ring.put(frame(n))
    assert len(ring) == 3
    assert ring.free == 1
    assert [number(ring.pop() or b"") for _ in range(3)] == [0, 1, 2]
    assert ring.frames_played == 3
    assert ring.free == 4


def test_playout_free_never_negative_when_overfilled() -> None:
    ring = PlayoutRing(capacity=2)
    for n in range(5):
        ring.put(frame(n))
    assert len(ring) == 5
    assert ring.free == 0


def test_playout_pop_on_empty_returns_none_and_stops_playing() -> None:
    ring = PlayoutRing()
    assert ring.pop() is None
    assert ring.playing is False
    ring.put(frame(1))
    assert ring.pop() == frame(1)
    assert ring.playing is True
    assert ring.pop() is None
    assert ring.playing is False
    assert ring.frames_played == 1


def test_playout_started_at_is_first_frame_after_running_empty() -> None:
    ring = PlayoutRing()
    assert ring.started_at == 0.0
    ring.put(frame(0))
    ring.put(frame(1))
    before = time.monotonic()
    ring.pop()
    first = ring.started_at
    assert before <= first <= time.monotonic()
    time.sleep(0.01)
    ring.pop()
    assert ring.started_at == first  # still the same burst
    assert ring.last_frame_at > first
    assert ring.pop() is None
    time.sleep(0.01)
    ring.put(frame(2))
    ring.pop()
    assert ring.started_at > first  # a new burst after silence


def test_playout_mark_then_pop_sets_marked_at() -> None:
    ring = PlayoutRing()
    ring.put(frame(0))
    ring.put(frame(1))
    ring.mark()
    assert ring.marked_at == 0.0
    before = time.monotonic()
    ring.pop()
    after = time.monotonic()
    marked = ring.marked_at
    assert before <= marked <= after
    time.sleep(0.005)
    ring.pop()
    assert ring.marked_at == marked  # only the first frame after mark() is noted


def test_playout_mark_on_empty_waits_for_the_next_real_frame() -> None:
    ring = PlayoutRing()
    ring.mark()
    assert ring.pop() is None
    assert ring.pop() is None
    assert ring.marked_at == 0.0
    ring.put(frame(0))
    before = time.monotonic()
    ring.pop()
    assert ring.marked_at >= before


def test_playout_mark_resets_previous_mark() -> None:
    ring = PlayoutRing()
    ring.put(frame(0))
    ring.mark()
    ring.pop()
    assert ring.marked_at > 0.0
    ring.mark()
    assert ring.marked_at == 0.0


def test_playout_clear_returns_count() -> None:
    ring = PlayoutRing()
    assert ring.clear() == 0
    for n in range(7):
        ring.put(frame(n))
    assert ring.clear() == 7
    assert len(ring) == 0
    assert ring.pop() is None
    assert ring.clear() == 0


def test_playout_max_gap_measures_pauses_within_a_burst_only() -> None:
    ring = PlayoutRing()
    for n in range(3):
        ring.put(frame(n))
    ring.pop()
    ring.pop()
    assert ring.max_gap < 0.02
    time.sleep(0.03)
    ring.pop()
    assert ring.max_gap >= 0.03
    gap = ring.max_gap
    # Silence between bursts is not a gap: the ring ran empty.
    assert ring.pop() is None
    time.sleep(0.05)
    ring.put(frame(3))
    ring.pop()
    assert ring.max_gap == gap


def test_playout_capture_waits_for_room_that_another_thread_makes() -> None:
    # The clock thread pops at its pace; capture queues as it makes room, played_out
    # returns once the last frame went out, each woken by a pop, not by polling.
    async def body() -> None:
        ring = PlayoutRing(capacity=4)
        done = threading.Event()

        def clock() -> None:
            while not done.is_set():
                ring.pop()
                time.sleep(0.002)

        thread = threading.Thread(target=clock)
        thread.start()
        try:
            assert await ring.capture(bytes(FRAME_BYTES * 10)) is True
            await asyncio.wait_for(ring.played_out(), 2.0)
            assert len(ring) == 0 and ring.frames_played == 10
        finally:
            done.set()
            thread.join()

    asyncio.run(body())


def test_playout_close_releases_a_waiting_capture() -> None:
    # The call ended: nobody will pop again, so a full ring must not wait for ever.
    async def body() -> None:
        ring = PlayoutRing(capacity=2)
        waiting = asyncio.ensure_future(ring.capture(bytes(FRAME_BYTES * 5)))
        await asyncio.sleep(0.01)
        assert not waiting.done() and len(ring) == 2
        threading.Thread(target=ring.close).start()
        assert await asyncio.wait_for(waiting, 1.0) is False
        await asyncio.wait_for(ring.played_out(), 1.0)  # closed: nothing will play

    asyncio.run(body())


def test_playout_clear_releases_played_out() -> None:
    async def body() -> None:
        ring = PlayoutRing()
        await ring.capture(bytes(FRAME_BYTES * 3))
        waiting = asyncio.ensure_future(ring.played_out())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert ring.clear() == 3
        await asyncio.wait_for(waiting, 1.0)

    asyncio.run(body())
