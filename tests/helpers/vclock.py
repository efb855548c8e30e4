"""An asyncio event loop on a virtual clock, for in-process tests of timed code.

`VirtualClockLoop.time()` is a number that moves only when the loop has nothing to run:
then it jumps straight to the earliest timer (a `sleep`, a `timeout`, a `call_later`) and
fires it. Code that reads time through the loop (`loop.time()`, `gateway.pipeline.clock`)
and waits with asyncio's sleeps and timeouts therefore sees exactly the times it asked
for, however loaded the machine is, and a test waits for no wall-clock second at all.

Only for code that runs entirely on the loop: a thread or a socket the loop waits for
would see time jump past it (nothing here waits for them; the loop's own self-pipe, used
by `call_soon_threadsafe` from the loop's thread, is fine). The jump is made in
`_run_once`, the one step of asyncio's loop (a private method, stable since Python 3.4):
before it, when no callback is ready, the clock is set to the first live timer's time, so
the step selects without waiting and runs that timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose time advances only when it is idle (see the module)."""

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__()
        self._now = start  # not 0.0: code may take 0.0 for "not yet"
        self.jumps = 0  # how often the clock moved (for tests of the loop itself)

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        if not self._ready and not self._stopping:  # type: ignore[attr-defined]
            # Idle: move to the first timer that is still wanted (cancelled ones stay in
            # the heap until the step drops them).
            timers = self._scheduled  # type: ignore[attr-defined]
            due = min((h.when() for h in timers if not h.cancelled()), default=None)
            if due is not None and due > self._now:
                self._now = due
                self.jumps += 1
        super()._run_once()  # type: ignore[misc]


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` on a fresh `VirtualClockLoop`."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coro)
