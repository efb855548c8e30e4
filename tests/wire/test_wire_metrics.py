"""`/metrics` after real calls: `sipagent serve` with two workers and the app, one call
routed by the app as Plivo would and one straight to the second worker, both with the
offline pipeline; the metrics are parsed with prometheus-client's parser and their values
checked against the calls and the turns the workers logged."""

from __future__ import annotations

import urllib.parse
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.http import request
from tests.helpers.wire import answer, finish_call, running_pool, start_call, wait_for

pytestmark = [pytest.mark.wire, pytest.mark.timeout(180)]

QUESTION = "What are your opening hours?"
CALLER = "+14155551234"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(app_url: str) -> tuple[str, Samples]:
    status, body = request(app_url + "/metrics")
    assert status == 200, body
    text = body.decode()
    found = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, found


def total(found: Samples, name: str) -> float:
    return sum(v for (n, _), v in found.items() if n == name)


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_metrics_count_real_calls_and_their_turns(tmp_path: Path) -> None:
    with running_pool(tmp_path, 2, pool__spare="false") as pool:
        app = pool.app_url
        assert app is not None
        _, found = scrape(app)
        assert value(found, "sipagent_workers", kind="sip", state="ready") == 2
        assert total(found, "sipagent_calls_total") == 0
        # A callback without Plivo's signature is refused, and counted.
        unsigned = {"CallUUID": str(uuid.uuid4()), "From": CALLER, "To": "+14155550100"}
        status, _ = request(
            app + "/answer",
            urllib.parse.urlencode(unsigned).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
            "POST",
        )
        assert status == 403

        _, uri, headers = answer(pool, CALLER)
        calls = [
            start_call(uri, "--say", QUESTION, *headers),
            start_call(pool.worker_uri(1), "--say", QUESTION),
        ]
        # A call lasts its greeting and its reply: seconds to see it up.
        wait_for(
            lambda: scrape(app)[1][("sipagent_calls_active", frozenset())] >= 1, 60, "a call up"
        )
        reports = [finish_call(c, timeout=120) for c in calls]
        for r in reports:
            assert r["returncode"] == 0 and r["answered"], r["stderr"][-2000:]

        def ended() -> bool:
            # Both calls ended in the metrics, and every turn the workers logged is in.
            return total(scrape(app)[1], "sipagent_calls_total") == 2 and len(pool.turns()) >= 4

        wait_for(ended, 30, "both calls in the metrics")
        text, found = scrape(app)
        turns = pool.turns()

    assert value(found, "sipagent_calls_total", outcome="remote_hangup") == 2, text
    assert value(found, "sipagent_call_duration_seconds_count") == 2
    assert value(found, "sipagent_calls_active") == 0
    assert value(found, "sipagent_workers", kind="sip", state="ready") == 2
    assert total(found, "sipagent_workers") == 2
    assert value(found, "sipagent_worker_restarts_total", kind="sip") == 0
    # One latency observation per part a played turn has: totals for every turn, the
    # end of turn and STT for replies to speech.
    played = [t for t in turns if not t["interrupted"] and t["first_audio_at"]]
    kinds = [str(t["kind"]) for t in turns]
    assert kinds.count("greeting") == 2 and kinds.count("reply") == 2, kinds
    count = "sipagent_turn_latency_seconds_count"
    assert value(found, count, part="total") == len(played)
    replies = sum(1 for t in played if t["kind"] == "reply")
    assert value(found, count, part="end_of_turn") == value(found, count, part="stt") == replies
    total_s = sum(float(str(t["total_ms"])) for t in played) / 1000
    assert value(found, "sipagent_turn_latency_seconds_sum", part="total") == pytest.approx(
        total_s, abs=0.01
    )
    for kind in set(kinds):
        assert value(found, "sipagent_turns_total", kind=kind) == kinds.count(kind)
    assert value(found, "sipagent_webhooks_refused_total", reason="unsigned") == 1
    assert total(found, "sipagent_vendor_errors_total") == 0
    # Nothing personal in it: numbers, URIs, call ids.
    for secret in (CALLER, "4155551234", "sip:", "@127.0.0.1", *(str(t["call_id"]) for t in turns)):
        assert secret not in text
