"""Tests for the virtual-clock event loop of the in-process session tests
(tests/helpers/vclock.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers.vclock import VirtualClockLoop, run_virtual


def test_sleeps_take_exactly_their_time_and_no_wall_time() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        t0 = loop.time()
        seen: list[float] = []

        async def sleeper(delay: float) -> None:
            await asyncio.sleep(delay)
            seen.append(loop.time() - t0)

        await asyncio.gather(sleeper(3600.0), sleeper(0.02), sleeper(1.5))
        return seen

    wall = time.monotonic()
    assert run_virtual(scenario()) == pytest.approx([0.02, 1.5, 3600.0], abs=1e-9)
    assert time.monotonic() - wall < 5.0  # an hour of virtual time


def test_time_stands_still_while_anything_is_ready() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(1000):
            await asyncio.sleep(0)  # ready at once: no timer fires, no time passes
        time.sleep(0.01)  # wall time is not the loop's
        assert loop.time() == t0

    run_virtual(scenario())


def test_timeouts_and_cancelled_timers() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.6):
                await asyncio.Event().wait()
        assert loop.time() - t0 == pytest.approx(0.6, abs=1e-9)
        # A timer cancelled before it is due does not move the clock to its time.
        loop.call_later(100.0, lambda: None).cancel()
        await asyncio.sleep(0.1)
        assert loop.time() - t0 == pytest.approx(0.7, abs=1e-9)

    run_virtual(scenario())
