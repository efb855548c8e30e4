"""The conversation's clock: the running asyncio loop's time.

Every time the conversation reads (a turn's timings, the no-input timer, a keypad entry's
timeout, a promised pushed reply) comes from here, so it is the same clock its sleeps and
timeouts run on. On asyncio's own loops that is `time.monotonic()` (CLOCK_MONOTONIC, what
`TurnRecord` keeps); a test may run the conversation on a loop with a virtual clock
(tests/helpers/vclock.py). Call it on the loop. A transport's times (`answered_at`, the
sink's `marked_at`) are compared with it, so they are read from the same clock.
"""

from __future__ import annotations

import asyncio


def now() -> float:
    """The running loop's time, in seconds."""
    return asyncio.get_running_loop().time()
