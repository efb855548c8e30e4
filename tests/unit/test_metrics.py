"""The pool's Prometheus metrics: fed the workers' reports as the supervisor gets them,
rendered in the text format, parsed back with prometheus-client's parser, values checked.
Also the app's ``/metrics`` and its refused callbacks, and what a worker counts and sends."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.pool import protocol
from gateway.pool.child import _Reporter, tallied
from gateway.pool.metrics import CALL_OUTCOMES, PoolMetrics, call_outcome, turn_latencies
from gateway.pool.protocol import (
    CallEnded,
    CallStarted,
    Tallied,
    TurnRecorded,
    VendorErrors,
)
from gateway.pool.state import PoolState
from gateway.pool.supervisor import Supervisor
from gateway.providers.base import ProviderError
from gateway.records.model import CallTurn, SipCallEnd, SipCallStart
from gateway.records.store import CallRecords
from gateway.tally import TALLY, Tally, count_vendor_error, counted
from sip_config import load_settings
from tests.helpers.app import CALLED, CALLER, Env, FakeClock, make_pool, make_settings
from xml_app import create_app

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: bytes | str) -> Samples:
    """Every sample of a scrape, by name and labels (parsed as Prometheus would)."""
    body = text.decode() if isinstance(text, bytes) else text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(scrape: Samples, name: str, **labels: str) -> float:
    return scrape[(name, frozenset(labels.items()))]


def start(call: str, at: float) -> SipCallStart:
    return SipCallStart(call, None, f"sip:{CALLER}@plivo", "sip:agent@w0", at)


def turn(kind: str, **fields: Any) -> CallTurn:
    record: dict[str, Any] = {
        "kind": kind,
        "eot_wait_ms": 300.0,
        "stt_ms": 120.0,
        "brain_ms": 400.0,
        "tts_first_ms": 150.0,
        "playout_ms": 30.0,
        "total_ms": 1000.0,
        "first_audio_at": 5.0,
        "interrupted": False,
        "barge_in": False,
    }
    record.update(fields)
    return CallTurn("c1@host", None, record, 10.0)


# -- calls -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "outcome", "expected"),
    [
        ("200 Normal call clearing", None, "remote_hangup"),
        ("caller hung up", None, "remote_hangup"),  # a Plivo stream
        ("agent hangup", None, "agent_hangup"),
        ("agent hung up", None, "agent_hangup"),
        ("transferred to sip:alice@pbx", None, "transferred"),
        ("vendor failures", None, "vendor_failures"),
        ("max duration", None, "max_duration"),
        ("rtp timeout", "answered", "rtp_timeout"),
        ("conversation error", None, "error"),
        ("worker died", None, "worker_died"),
        ("gateway stopping", None, "gateway_stopped"),
        ("408 Request Timeout", None, "sip_error"),
        ("486 Busy Here", "busy", "busy"),
        ("no answer in 30 s", "no-answer", "no_answer"),
        ("503 Service Unavailable", "failed", "failed"),
        ("something new", None, "other"),
        (None, None, "other"),
    ],
)
def test_a_calls_outcome_is_one_of_a_closed_set(
    reason: str | None, outcome: str | None, expected: str
) -> None:
    got = call_outcome(SipCallEnd("c1@host", None, reason, 1.0, outcome))
    assert got == expected and got in CALL_OUTCOMES


def test_calls_are_counted_by_outcome_and_timed_from_media_up() -> None:
    m = PoolMetrics(PoolState(1, 4))
    m.call_started(start("a@host", 100.0))
    m.call_started(start("b@host", 100.0))
    m.call_ended(SipCallEnd("a@host", None, "200 Normal call clearing", 112.5))
    m.call_ended(SipCallEnd("b@host", None, "agent hangup", 190.0))
    # A call we placed that nobody answered: counted, but it never had media to time.
    m.call_ended(SipCallEnd("c@host", "ours", "no answer in 30 s", 130.0, "no-answer"))
    scrape = samples(m.render())
    assert value(scrape, "sipagent_calls_total", outcome="remote_hangup") == 1
    assert value(scrape, "sipagent_calls_total", outcome="agent_hangup") == 1
    assert value(scrape, "sipagent_calls_total", outcome="no_answer") == 1
    assert value(scrape, "sipagent_calls_total", outcome="worker_died") == 0  # there at 0
    assert value(scrape, "sipagent_call_duration_seconds_count") == 2
    assert value(scrape, "sipagent_call_duration_seconds_sum") == pytest.approx(102.5)
    assert value(scrape, "sipagent_call_duration_seconds_bucket", le="15.0") == 1
    assert value(scrape, "sipagent_call_duration_seconds_bucket", le="120.0") == 2


# -- turns -------------------------------------------------------------------------------


def test_each_kind_of_turn_has_the_latency_parts_it_went_through() -> None:
    def parts(kind: str, **fields: Any) -> dict[str, float]:
        return dict(turn_latencies(turn(kind, **fields).turn))

    assert parts("reply") == {
        "end_of_turn": 0.3,
        "stt": 0.12,
        "brain": 0.4,
        "tts": 0.15,
        "playout": 0.03,
        "total": 1.0,
    }
    assert set(parts("greeting")) == set(parts("keys")) == {"brain", "tts", "playout", "total"}
    assert set(parts("reprompt")) == set(parts("pushed")) == {"tts", "playout", "total"}
    # The apology is rendered at start-up: no TTS waited for.
    assert set(parts("apology")) == set(parts("failure-goodbye")) == {"playout", "total"}
    # Cut off, or never heard: its timings are partial, none is taken.
    assert parts("reply", interrupted=True) == {}
    assert parts("reply", first_audio_at=0.0, total_ms=0.0) == {}


def test_turns_feed_the_latency_histograms_barge_ins_and_kinds() -> None:
    m = PoolMetrics(PoolState(1, 4))
    m.turn(turn("greeting", total_ms=640.0))
    m.turn(turn("reply", total_ms=1200.0))
    m.turn(turn("reply", barge_in=True, interrupted=True))  # cut off in turn
    m.turn(turn("apology"))
    m.turn(turn("something-new"))
    scrape = samples(m.render())
    count = "sipagent_turn_latency_seconds_count"
    assert value(scrape, count, part="total") == 4  # every turn that played
    assert value(scrape, count, part="end_of_turn") == value(scrape, count, part="stt") == 1
    assert value(scrape, count, part="brain") == 2
    assert value(scrape, count, part="tts") == 3
    total_sum = value(scrape, "sipagent_turn_latency_seconds_sum", part="total")
    assert total_sum == pytest.approx(0.64 + 1.2 + 1.0 + 1.0)
    bucket = "sipagent_turn_latency_seconds_bucket"
    assert value(scrape, bucket, part="total", le="0.75") == 1
    assert value(scrape, bucket, part="total", le="+Inf") == 4
    assert value(scrape, "sipagent_barge_ins_total") == 1
    assert value(scrape, "sipagent_turns_total", kind="reply") == 2
    assert value(scrape, "sipagent_turns_total", kind="other") == 1


# -- what the workers counted --------------------------------------------------------------


def test_what_workers_counted_adds_up_with_closed_labels() -> None:
    m = PoolMetrics(PoolState(1, 4))
    m.tallied(
        Tallied(
            vendor_errors=(
                VendorErrors("deepgram", "timeout", 2),
                VendorErrors("plivo", "auth", 1),
                VendorErrors("acme-internal", "http", 1),  # not a provider we know
                VendorErrors("openai", "weird", 1),
            ),
            failovers={"tts": 1},
            streams_refused={"no-start": 2, "forged": 1, "new-reason": 1},
        )
    )
    m.tallied(Tallied(vendor_errors=(VendorErrors("deepgram", "timeout", 1),)))
    scrape = samples(m.render())
    errors = "sipagent_vendor_errors_total"
    assert value(scrape, errors, vendor="deepgram", kind="timeout") == 3
    assert value(scrape, errors, vendor="plivo", kind="auth") == 1
    assert value(scrape, errors, vendor="other", kind="http") == 1
    assert value(scrape, errors, vendor="openai", kind="other") == 1
    assert value(scrape, "sipagent_failovers_total", stage="tts") == 1
    assert value(scrape, "sipagent_failovers_total", stage="brain") == 0
    refused = "sipagent_streams_refused_total"
    assert value(scrape, refused, reason="no_start") == 2
    assert value(scrape, refused, reason="forged") == 1
    assert value(scrape, refused, reason="other") == 1


# -- gauges ------------------------------------------------------------------------------


def test_gauges_are_read_from_the_pools_state_when_scraped() -> None:
    state = PoolState(2, 4, stream_workers=1, stream_max_calls=10)
    m = PoolMetrics(state, registers=True)
    scrape = samples(m.render())
    assert value(scrape, "sipagent_workers", kind="sip", state="down") == 2
    assert value(scrape, "sipagent_registration_up", account="0") == 0
    state.worker_up(0, 100, "sip:agent1@phone.plivo.com", registers=True)
    state.worker_up(1, 101, "sip:agent2@phone.plivo.com", registers=True)
    state.worker_up(2, 102, "ws://0.0.0.0:9100/stream", registers=False)
    state.set_registration(0, True, "200 OK")
    state.call_started(0, "a@host", None)
    state.call_started(2, "stream-1", "uuid-1")
    scrape = samples(m.render())
    assert value(scrape, "sipagent_calls_active") == 2
    assert value(scrape, "sipagent_workers", kind="sip", state="ready") == 1
    assert value(scrape, "sipagent_workers", kind="sip", state="unregistered") == 1
    assert value(scrape, "sipagent_workers", kind="stream", state="ready") == 1
    assert value(scrape, "sipagent_registration_up", account="0") == 1
    assert value(scrape, "sipagent_registration_up", account="1") == 0
    assert ("sipagent_registration_up", frozenset({("account", "2")})) not in scrape
    state.start_draining()
    scrape = samples(m.render())
    assert value(scrape, "sipagent_workers", kind="sip", state="draining") == 2
    assert value(scrape, "sipagent_workers", kind="stream", state="draining") == 1


def test_no_label_carries_a_number_a_uri_a_call_id_or_a_user_name() -> None:
    state = PoolState(1, 4)
    m = PoolMetrics(state, registers=True)
    state.worker_up(0, 100, "sip:agent12345@phone.plivo.com", registers=True)
    state.call_started(0, "7d1c@10.0.0.1", "3f2a9c1e-7b4d")
    m.call_started(start("7d1c@10.0.0.1", 1.0))
    m.turn(turn("reply", user_text=f"call me on {CALLER}", agent_text=CALLED))
    m.call_ended(SipCallEnd("7d1c@10.0.0.1", "3f2a9c1e-7b4d", f"transferred to {CALLED}", 2.0))
    text = m.render().decode()
    for secret in (CALLER, CALLED, "4155550", "agent12345", "7d1c", "3f2a9c1e", "sip:"):
        assert secret not in text


# -- the supervisor ----------------------------------------------------------------------


def test_the_supervisor_feeds_the_metrics_from_its_workers_reports() -> None:
    sup = Supervisor(load_settings(None, env_file=None), 1, out=io.StringIO())
    sup.state.worker_up(0, 4242, "sip:agent@127.0.0.1:5070", registers=False)
    worker = SimpleNamespace(index=0, pid=4242)
    spare = SimpleNamespace(index=None, pid=4243)
    for msg in (
        CallStarted(start("a@host", 10.0)),
        TurnRecorded(turn("greeting")),
        CallStarted(start("b@host", 11.0)),
        CallEnded(SipCallEnd("a@host", None, "agent hangup", 20.0)),
    ):
        sup.handle(worker, msg)  # type: ignore[arg-type]
    sup.handle(spare, Tallied(failovers={"brain": 1}))  # type: ignore[arg-type]
    scrape = samples(sup.metrics.render())
    assert value(scrape, "sipagent_calls_active") == 1
    assert value(scrape, "sipagent_calls_total", outcome="agent_hangup") == 1
    assert value(scrape, "sipagent_turn_latency_seconds_count", part="total") == 1
    assert value(scrape, "sipagent_failovers_total", stage="brain") == 1
    # The worker dies with call b up: the call ends as "worker died", the worker restarts.
    sup.worker_gone(0)
    scrape = samples(sup.metrics.render())
    assert value(scrape, "sipagent_calls_total", outcome="worker_died") == 1
    assert value(scrape, "sipagent_worker_restarts_total", kind="sip") == 1
    assert value(scrape, "sipagent_calls_active") == 0
    assert value(scrape, "sipagent_workers", kind="sip", state="down") == 1
    # Stopping: a worker that ends is not restarted, nor counted as restarting.
    sup.workers.stopping = True
    sup.worker_gone(0)
    assert value(samples(sup.metrics.render()), "sipagent_worker_restarts_total", kind="sip") == 1


# -- the app -----------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, make_settings())
    yield e
    e.records.close()


def test_the_app_serves_the_metrics_unsigned(env: Env) -> None:
    r = env.plivo.client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain") and "version=0.0.4" in r.content_type
    scrape = samples(r.get_data())
    assert value(scrape, "sipagent_workers", kind="sip", state="ready") == 3
    assert value(scrape, "sipagent_calls_active") == 0


def test_refused_callbacks_are_counted_by_reason(env: Env) -> None:
    body = {"CallUUID": "3f2a9c1e-7b4d-4e8a-9f01-23456789abcd", "From": CALLER, "To": CALLED}
    assert env.plivo.client.post("/answer", data=body).status_code == 403  # unsigned
    headers = env.plivo.headers("POST", "/hangup", body)
    assert env.plivo.post("/hangup", body, headers=headers).status_code == 200
    assert env.plivo.post("/hangup", body, headers=headers).status_code == 403  # replayed
    env.plivo.token = "not-the-token"
    assert env.answer().status_code == 403  # forged
    assert env.answer().status_code == 403
    scrape = samples(env.plivo.client.get("/metrics").get_data())
    refused = "sipagent_webhooks_refused_total"
    assert value(scrape, refused, reason="unsigned") == 1
    assert value(scrape, refused, reason="replayed") == 1
    assert value(scrape, refused, reason="forged") == 2
    assert value(scrape, refused, reason="bad_token") == 0


def test_a_pushed_reply_with_a_wrong_token_is_counted(tmp_path: Path) -> None:
    settings = make_settings(webhook={"push_token": "bot-secret"})
    metrics = PoolMetrics(make_pool(FakeClock()))
    with CallRecords.open(tmp_path / "records.db") as records:
        app = create_app(settings, make_pool(FakeClock()), records, metrics=metrics)
        client = app.test_client()
        for headers in ({}, {"Authorization": "Bearer nope"}):
            r = client.post("/bot/calls/x/reply", json={"text": "a"}, headers=headers)
            assert r.status_code == 401
        # The app serves the metrics it was given (the supervisor's).
        metrics.call_ended(SipCallEnd("a@host", None, "agent hangup", 1.0))
        scrape = samples(client.get("/metrics").get_data())
    assert value(scrape, "sipagent_webhooks_refused_total", reason="bad_token") == 2
    assert value(scrape, "sipagent_calls_total", outcome="agent_hangup") == 1


# -- the worker's side ---------------------------------------------------------------------


def test_a_vendor_error_is_counted_once_and_a_summary_not_at_all() -> None:
    TALLY.take()
    error = ProviderError("deepgram", "timeout", "no final transcript within 3 s")
    assert count_vendor_error(error) is error
    count_vendor_error(error)  # seen again by the turn it failed
    count_vendor_error(counted(ProviderError("stt", "failed", "every STT provider failed")))
    delta = TALLY.take()
    assert delta.vendor_errors == {("deepgram", "timeout"): 1}
    assert not TALLY.take()


def test_a_tally_travels_as_deltas() -> None:
    tally = Tally()
    tally.vendor_error("openai", "http")
    tally.vendor_error("openai", "http")
    tally.vendor_error("deepgram", "auth")
    tally.failover("brain")
    tally.stream_refused("forged")
    msg = tallied(tally.take())
    assert msg == Tallied(
        vendor_errors=(VendorErrors("deepgram", "auth", 1), VendorErrors("openai", "http", 2)),
        failovers={"brain": 1},
        streams_refused={"forged": 1},
    )
    assert protocol.decode(protocol.encode(msg)) == msg
    assert not tally.take()


def test_a_worker_reports_what_it_counted_before_a_calls_end() -> None:
    async def scenario() -> list[protocol.Message]:
        ours, theirs = socket.socketpair()
        reader, their_writer = await asyncio.open_unix_connection(sock=theirs)
        _, writer = await asyncio.open_unix_connection(sock=ours)
        reporter = _Reporter(writer)
        TALLY.take()
        TALLY.vendor_error("elevenlabs", "disconnect")
        reporter.call_ended(SipCallEnd("a@host", None, "agent hangup", 1.0))
        reporter.send_tally()  # nothing more counted: nothing sent
        got = [await protocol.receive(reader) for _ in range(2)]
        await asyncio.gather(*reporter.tasks)
        writer.close()
        await writer.wait_closed()
        assert await reader.read() == b""  # nothing else was sent
        their_writer.close()
        await their_writer.wait_closed()
        return [m for m in got if m is not None]

    tally, end = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert tally == Tallied(vendor_errors=(VendorErrors("elevenlabs", "disconnect", 1),))
    assert isinstance(end, CallEnded) and end.record.reason == "agent hangup"


def _labels(scrape: Samples) -> Mapping[str, set[str]]:
    out: dict[str, set[str]] = {}
    for _, labels in scrape:
        for k, v in labels:
            out.setdefault(k, set()).add(v)
    return out


def test_every_label_value_of_a_fresh_gateway_is_from_a_closed_set() -> None:
    scrape = samples(PoolMetrics(PoolState(2, 4), registers=True).render())
    labels = _labels(scrape)
    assert set(labels) == {"outcome", "kind", "part", "le", "stage", "reason", "state", "account"}
    assert labels["account"] == {"0", "1"}
