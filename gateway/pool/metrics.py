"""The gateway's Prometheus metrics, kept in the supervisor's process.

The workers already report every call event to the supervisor (`gateway.pool.protocol`),
so the metrics are fed from those reports: aggregated across the pool in one registry,
with no per-process files (prometheus-client's multiprocess mode is not needed).  What
only a worker sees (vendor errors, failovers, refused streams) comes in its `Tallied`
messages; the gauges (calls up, workers, registrations) are read from `PoolState` when
Prometheus scrapes.  The answer_url app serves `render` at ``/metrics`` and counts the
callbacks it refuses here.

No label carries a phone number, a SIP URI, a call id or a user name: every label value
is from a closed set (anything else is counted as ``other``), or a worker's position.

Threads: the supervisor's loop calls the ``call_*``, `turn`, `tallied` and
`worker_restarted` methods; waitress threads call `webhook_refused` and `render`.
prometheus-client's metrics are thread-safe; the calls-in-progress table is touched by
the loop only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gateway.pool.protocol import Tallied
from gateway.pool.state import PoolState
from gateway.records.model import CallTurn, SipCallEnd, SipCallStart
from sip_config.providers import provider_specs

__all__ = [
    "CALL_OUTCOMES",
    "CONTENT_TYPE",
    "TURN_PARTS",
    "PoolMetrics",
    "call_outcome",
    "turn_latencies",
    "worker_state",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The Content-Type of `PoolMetrics.render`: Prometheus' text format, the version every
Prometheus server reads (the names here need none of version 1.0.0's UTF-8 escaping)."""

OTHER: Final = "other"

# Without this the text format has a ``*_created`` series (the time each counter and
# histogram was made) beside every one of them: twice the series, and nobody graphs them.
# (A process-wide switch: this process exports no other metrics.)
disable_created_metrics()  # type: ignore[no-untyped-call]

CALL_OUTCOMES: Final = (
    "remote_hangup",  # the caller (the callee of a call we placed) hung up
    "agent_hangup",  # the agent ended the call (the brain's "hangup")
    "transferred",  # handed to a human
    "vendor_failures",  # too many failed turns in a row: the agent said goodbye
    "max_duration",  # conversation.max_call_s
    "rtp_timeout",  # the caller's audio stopped (sip.rtp_timeout_s)
    "error",  # the conversation crashed
    "worker_died",  # the worker process holding it died
    "gateway_stopped",  # the gateway stopped (or drained out) with the call up
    "sip_error",  # ended with a SIP error status
    "busy",  # a call we placed: busy
    "no_answer",  # a call we placed: not answered in time
    "failed",  # a call we placed: failed before it was answered
    OTHER,
)
"""Values of ``sipagent_calls_total{outcome}``."""

TURN_KINDS: Final = (
    "greeting",
    "reply",
    "keys",
    "pushed",
    "reprompt",
    "goodbye",
    "apology",
    "failure-goodbye",
    "transfer-failed",
)
"""The kinds of agent turn (`gateway.pipeline.record.TurnRecord.kind`)."""

TURN_PARTS: Final = (
    ("end_of_turn", "eot_wait_ms"),
    ("stt", "stt_ms"),
    ("brain", "brain_ms"),
    ("tts", "tts_first_ms"),
    ("playout", "playout_ms"),
    ("total", "total_ms"),
)
"""``sipagent_turn_latency_seconds{part}``, and the turn record's field each is from."""

# Which parts a turn of each kind has (see `turn_latencies`).
_HEARD_SPEECH: Final = frozenset({"reply"})
_ASKED_BRAIN: Final = frozenset({"greeting", "reply", "keys"})
_PRE_RENDERED: Final = frozenset({"apology", "failure-goodbye"})

WORKER_KINDS: Final = ("sip", "stream")
WORKER_STATES: Final = ("ready", "unregistered", "draining", "down")
"""Values of ``sipagent_workers{state}`` (see `worker_state`)."""

STAGES: Final = ("stt", "tts", "brain")
VENDOR_ERROR_KINDS: Final = (
    "timeout",
    "auth",
    "http",
    "disconnect",
    "malformed",
    "config",
    "failed",
)
"""`gateway.providers.base.ProviderError` kinds, plus ``failed`` (a provider's bug)."""

WEBHOOK_REFUSALS: Final = ("unsigned", "forged", "replayed", "unverifiable", "bad_token")
"""Why the app refused a callback: Plivo's signature missing, wrong, or its nonce used
already, or the check itself failed; a pushed bot reply without the right bearer token."""

STREAM_REFUSALS: Final = (
    "draining",
    "bad_token",
    "expired_token",
    "unsigned",
    "forged",
    "replayed",
    "no_start",
    "bad_start",
    "wrong_call",
    "in_use",
    "format",
)
"""Why a stream worker refused a Plivo stream (`gateway.stream.server`)."""

# Turn latencies: from tens of milliseconds (playout) to seconds (a slow brain).
LATENCY_BUCKETS: Final = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
DURATION_BUCKETS: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

_SIP_STATUS = re.compile(r"^([1-6]\d\d)\b")
_REASONS: Final = {
    "caller hung up": "remote_hangup",
    "agent hangup": "agent_hangup",
    "agent hung up": "agent_hangup",
    "vendor failures": "vendor_failures",
    "max duration": "max_duration",
    "rtp timeout": "rtp_timeout",
    "conversation error": "error",
    "worker died": "worker_died",
    "gateway stopping": "gateway_stopped",
    "supervisor gone": "gateway_stopped",
}
_UNANSWERED: Final = {"busy": "busy", "no-answer": "no_answer", "failed": "failed"}


def call_outcome(end: SipCallEnd) -> str:
    """The outcome label of a call that ended: from a placed call's outcome when it was
    never answered, else from the end reason the worker gave (`CALL_OUTCOMES`)."""
    if end.outcome in _UNANSWERED:
        return _UNANSWERED[end.outcome]
    reason = (end.reason or "").strip()
    if reason in _REASONS:
        return _REASONS[reason]
    if reason.startswith("transferred"):
        return "transferred"
    status = _SIP_STATUS.match(reason)
    if status is not None:
        # The far end's BYE ends a call with 200; an error status is the SIP side failing.
        return "remote_hangup" if status.group(1).startswith("2") else "sip_error"
    return OTHER


def turn_latencies(turn: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The latency parts (`TURN_PARTS`, in seconds) one turn record adds to the histogram.

    Only a turn that played (its first audio reached the caller) and was not cut off has
    latencies; of those, each kind has the parts it went through: ``end_of_turn`` and
    ``stt`` only a reply to the caller's speech, ``brain`` only turns the brain answered
    (greeting, reply, keys), ``tts`` every turn but the pre-rendered apology and failure
    goodbye, ``playout`` and ``total`` every turn that played.
    """
    if turn.get("interrupted") or not turn.get("first_audio_at"):
        return []
    kind = turn.get("kind")
    out = []
    for part, field in TURN_PARTS:
        if part in ("end_of_turn", "stt") and kind not in _HEARD_SPEECH:
            continue
        if part == "brain" and kind not in _ASKED_BRAIN:
            continue
        if part == "tts" and kind in _PRE_RENDERED:
            continue
        value = turn.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((part, max(0.0, float(value)) / 1000.0))
    return out


def worker_state(worker: Mapping[str, Any]) -> str:
    """A worker's state (`WORKER_STATES`) from its `PoolState.snapshot` entry: ``down``
    (its process is starting or restarting), ``draining`` (takes no new calls),
    ``unregistered`` (up, but its registration failed or is pending), else ``ready``."""
    if not worker["up"]:
        return "down"
    if not worker["accepting"]:
        return "draining"
    if worker["registered"] is False:
        return "unregistered"
    return "ready"


def _closed(value: object, allowed: Iterable[str]) -> str:
    """``value`` when it is one of ``allowed``, else ``other``."""
    return value if isinstance(value, str) and value in allowed else OTHER


class _PoolGauges(Collector):
    """The gauges read from the pool's state at each scrape."""

    def __init__(self, state: PoolState, registers: bool) -> None:
        self.state = state
        self.registers = registers

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        snapshot = self.state.snapshot()
        calls, workers, registration = self._families()
        calls.add_metric([], sum(int(w["calls"]) for w in snapshot))
        count = {(k, s): 0 for k in WORKER_KINDS for s in WORKER_STATES}
        for w in snapshot:
            count[(str(w["kind"]), worker_state(w))] += 1
        for (kind, state), n in count.items():
            workers.add_metric([kind, state], n)
        for w in snapshot:
            # Registering SIP workers only; account N is registration.accounts[N], which
            # worker N registers (the user name stays out: /metrics is unauthenticated).
            if w["kind"] == "sip" and (self.registers or w["registered"] is not None):
                registration.add_metric([str(w["index"])], 1 if w["registered"] else 0)
        return [calls, workers, registration]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("sipagent_calls_active", "Calls in progress across the pool."),
            GaugeMetricFamily(
                "sipagent_workers",
                "Worker processes by kind and state (ready, unregistered, draining, down).",
                labels=["kind", "state"],
            ),
            GaugeMetricFamily(
                "sipagent_registration_up",
                "1 while the worker registering registration.accounts[account] is"
                " registered, else 0.",
                labels=["account"],
            ),
        )


class PoolMetrics:
    """The metrics of one gateway (one registry); see the module docstring."""

    def __init__(self, state: PoolState, *, registers: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter("sipagent_calls", "Calls ended, by outcome.", ["outcome"], registry=r)
        self.call_duration = Histogram(
            "sipagent_call_duration_seconds",
            "Duration of the calls that ended, from media up to the end.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.turns = Counter(
            "sipagent_turns", "Agent turns recorded, by kind.", ["kind"], registry=r
        )
        self.turn_latency = Histogram(
            "sipagent_turn_latency_seconds",
            "Agent turn latency by part: end_of_turn (the caller's pause until the turn"
            " ended), stt, brain (to its first words), tts (to the first audio), playout"
            " (to the wire) and total (the caller's last word to the agent's first).",
            ["part"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter(
            "sipagent_barge_ins", "Caller turns that cut the agent off.", registry=r
        )
        self.vendor_errors = Counter(
            "sipagent_vendor_errors",
            "Errors of the vendors' providers (each failed attempt), by vendor and kind.",
            ["vendor", "kind"],
            registry=r,
        )
        self.failovers = Counter(
            "sipagent_failovers",
            "Times a stage (stt, tts, brain) handed its work to its secondary provider.",
            ["stage"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "sipagent_worker_restarts",
            "Worker processes that died and were replaced, by kind.",
            ["kind"],
            registry=r,
        )
        self.webhooks_refused = Counter(
            "sipagent_webhooks_refused",
            "Callbacks the answer_url app refused (Plivo signature, bot token), by reason.",
            ["reason"],
            registry=r,
        )
        self.streams_refused = Counter(
            "sipagent_streams_refused",
            "Plivo audio stream connections the stream workers refused, by reason.",
            ["reason"],
            registry=r,
        )
        r.register(_PoolGauges(state, registers))
        # Every known label value from the start: a rate over a series that appears only
        # with its first event misses that event.
        for outcome in CALL_OUTCOMES:
            self.calls.labels(outcome=outcome)
        for kind in TURN_KINDS:
            self.turns.labels(kind=kind)
        for part, _ in TURN_PARTS:
            self.turn_latency.labels(part=part)
        for stage in STAGES:
            self.failovers.labels(stage=stage)
        for kind in WORKER_KINDS:
            self.worker_restarts.labels(kind=kind)
        for reason in WEBHOOK_REFUSALS:
            self.webhooks_refused.labels(reason=reason)
        for reason in STREAM_REFUSALS:
            self.streams_refused.labels(reason=reason)
        self._vendors = frozenset(p.name for p in provider_specs()) | {"plivo"}
        self._started: dict[str, float] = {}  # SIP Call-ID -> unix time its media came up

    # -- from the workers' reports (the supervisor's loop) ---------------------------------
    def call_started(self, start: SipCallStart) -> None:
        """A call's conversation started."""
        self._started[start.sip_call_id] = start.at

    def call_ended(self, end: SipCallEnd) -> None:
        """A call ended (also one that never started: a placed call nobody answered)."""
        self.calls.labels(outcome=call_outcome(end)).inc()
        started = self._started.pop(end.sip_call_id, None)
        if started is not None:
            self.call_duration.observe(max(0.0, end.at - started))

    def turn(self, turn: CallTurn) -> None:
        """An agent turn was recorded."""
        record = turn.turn
        self.turns.labels(kind=_closed(record.get("kind"), TURN_KINDS)).inc()
        if record.get("barge_in"):
            self.barge_ins.inc()
        for part, seconds in turn_latencies(record):
            self.turn_latency.labels(part=part).observe(seconds)

    def tallied(self, msg: Tallied) -> None:
        """What a worker counted since its last report."""
        for e in msg.vendor_errors:
            if e.count > 0:
                vendor = _closed(e.vendor, self._vendors)
                kind = _closed(e.kind, VENDOR_ERROR_KINDS)
                self.vendor_errors.labels(vendor=vendor, kind=kind).inc(e.count)
        for stage, n in msg.failovers.items():
            if n > 0:
                self.failovers.labels(stage=_closed(stage, STAGES)).inc(n)
        for reason, n in msg.streams_refused.items():
            if n > 0:
                label = _closed(reason.replace("-", "_"), STREAM_REFUSALS)
                self.streams_refused.labels(reason=label).inc(n)

    def worker_restarted(self, kind: str) -> None:
        """A worker process of ``kind`` died and is being replaced."""
        self.worker_restarts.labels(kind=_closed(kind, WORKER_KINDS)).inc()

    # -- from the answer_url app (waitress threads) ----------------------------------------
    def webhook_refused(self, reason: str) -> None:
        """The app refused a callback for ``reason`` (`WEBHOOK_REFUSALS`)."""
        self.webhooks_refused.labels(reason=_closed(reason, WEBHOOK_REFUSALS)).inc()

    def render(self) -> bytes:
        """Every metric in Prometheus' text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
