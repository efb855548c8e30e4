"""Helpers of the Deepgram tests: the provider pointed at the loopback fake, and a wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gateway.providers.deepgram_stt import DeepgramStt
from tests.fakes.deepgram import FakeDeepgram

KEY = "dg-test-key-0123456789"


def provider(fake: FakeDeepgram, **kwargs: Any) -> DeepgramStt:
    options: dict[str, Any] = {"warm_sockets": 0, "connect_timeout_s": 2.0}
    options.update(kwargs)
    api_key = options.pop("api_key", KEY)
    return DeepgramStt(api_key, fake.url, **options)


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
