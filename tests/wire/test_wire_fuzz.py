"""Fuzzing on the wire: a few hundred mutated requests (fixed seed) at a `sipagent serve`
pool, from an allowed source and from a stranger; then a legitimate call goes through.
`scripts/sip_fuzz.py` runs the same at scale."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.sipfuzz import fuzz
from tests.helpers.wire import place_call, running_pool

pytestmark = [pytest.mark.wire, pytest.mark.timeout(300)]


def test_fuzzed_requests_kill_no_worker_and_a_call_goes_through(tmp_path: Path) -> None:
    with running_pool(
        tmp_path,
        2,
        app__enabled="false",
        providers__stt="fake",
        providers__tts="fake",
        providers__brain="fake",
        sip__allow_networks="127.0.0.1/32",
    ) as pool:
        codes: dict[int, int] = {}
        for index in (0, 1):
            target = ("127.0.0.1", pool.workers[index][1])
            for code, n in fuzz(target, 150, seed=10 + index, rate=50).items():
                codes[code] = codes.get(code, 0) + n
        time.sleep(1.0)  # a worker aborted by the last messages would be reported by now
        deaths = [line for line in pool.lines if ") died (" in line]
        print(f"fuzz: 300 mutated requests, answers {sorted(codes.items())}, deaths {len(deaths)}")
        report = place_call(pool.worker_uri(0), "--say", "What are your opening hours?")
    assert report["returncode"] == 0 and report["answered"], report
    assert report["steps"][0]["reply_latency_ms"] is not None, report["steps"]
    # Every kind of answer the guard gives came back at least once.
    assert {403, 481, 488, 501}.issubset(codes), codes
    assert not deaths, deaths
