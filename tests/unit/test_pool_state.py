"""Pool bookkeeping: slot reservations, routing choices, worker loss, drain, port plans."""

from __future__ import annotations

import pytest

from gateway.pool.plan import auto_workers, plan_pool, plan_workers
from gateway.pool.state import DialTarget, LiveCall, PoolState
from sip_config import ConfigError, Settings, load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool(workers: int = 3, clock: Clock | None = None) -> PoolState:
    state = PoolState(workers, 4, reserve_s=10.0, clock=clock or Clock())
    for i in range(workers):
        state.worker_up(i, 1000 + i, f"sip:agent@127.0.0.1:{5060 + i}", registers=False)
    return state


def test_reservations_spread_calls_and_never_exceed_four_per_worker() -> None:
    state = pool(3)
    targets = [state.reserve(f"uuid-{i}") for i in range(12)]
    assert all(t is not None for t in targets)
    per = [sum(1 for t in targets if t is not None and t.worker == w) for w in range(3)]
    assert per == [4, 4, 4]
    assert state.reserve("uuid-13") is None
    assert not state.ready()


def test_same_call_uuid_gets_the_same_worker_again() -> None:
    state = pool(2)
    first = state.reserve("retry")
    assert first is not None
    assert state.reserve("retry") == first
    assert state.snapshot()[first.worker]["reserved"] == 1


def test_reservation_expires_and_becomes_a_call_when_the_invite_arrives() -> None:
    clock = Clock()
    state = pool(1, clock)
    for i in range(4):
        assert state.reserve(f"u{i}") is not None
    assert state.reserve("late") is None
    state.call_started(0, "sip-call-0", "u0")  # u0's INVITE arrived: a call, not a hold
    assert state.snapshot()[0]["calls"] == 1 and state.snapshot()[0]["reserved"] == 3
    clock.now += 11  # the other three never dialled in
    assert state.reserve("late") is not None
    assert state.snapshot()[0]["free"] == 2


def test_a_warm_transfer_leg_holds_a_call_slot_until_it_ends() -> None:
    state = pool(1)
    for i in range(3):
        state.call_started(0, f"call-{i}", None)
    state.leg_changed(0, "human-leg", True)  # call-0's agent rings the human
    assert state.snapshot()[0]["legs"] == 1 and state.snapshot()[0]["free"] == 0
    assert state.reserve("fifth") is None
    state.leg_changed(0, "human-leg", False)
    assert state.reserve("fifth") is not None
    state.leg_changed(0, "other-leg", True)
    state.worker_down(0)
    assert state.snapshot()[0]["legs"] == 0


def test_dead_worker_is_not_routed_and_loses_its_calls() -> None:
    state = pool(2)
    state.call_started(0, "a", None)
    state.call_started(0, "b", None)
    assert state.worker_down(0) == {"a", "b"}
    targets = {state.reserve(f"x{i}").worker for i in range(4)}  # type: ignore[union-attr]
    assert targets == {1}
    assert state.snapshot()[0]["restarts"] == 1
    state.worker_up(0, 2000, "sip:agent@127.0.0.1:5060", registers=False)
    assert state.reserve("after") is not None


def test_calls_are_found_by_sip_call_id_or_call_uuid_while_in_progress() -> None:
    state = pool(2)
    state.call_started(1, "sip-a", "uuid-a")
    state.call_started(0, "sip-b", None)
    assert state.find_call("sip-a") == (1, "sip-a")
    assert state.find_call("uuid-a") == (1, "sip-a")
    assert state.find_call("sip-b") == (0, "sip-b")
    assert state.find_call("uuid-b") is None
    state.call_ended(1, "sip-a")
    assert state.find_call("uuid-a") is None and state.find_call("sip-a") is None
    state.call_started(0, "sip-c", "uuid-c")
    state.worker_down(0)
    assert state.find_call("uuid-c") is None and state.find_call("sip-b") is None


def test_a_live_calls_activity_is_kept_until_it_ends_and_unknown_ones_ignored() -> None:
    state = pool(2)
    state.call_started(
        1, "sip-a", "uuid-a", LiveCall("sip-a", "uuid-a", None, None, "inbound", 5.0)
    )
    state.call_started(0, "sip-b", None)  # its start not reported: not listed
    assert [c["activity"] for c in state.live_calls()] == [None]
    assert state.set_activity(1, "sip-a", "thinking")
    assert state.set_activity(1, "sip-a", "speaking")
    assert [(c["sip_call_id"], c["activity"]) for c in state.live_calls()] == [
        ("sip-a", "speaking")
    ]
    assert not state.set_activity(1, "sip-a", "dancing")  # not an activity
    assert not state.set_activity(0, "sip-a", "listening")  # another worker's call
    assert not state.set_activity(0, "sip-b", "listening")  # not listed
    assert [c["activity"] for c in state.live_calls()] == ["speaking"]
    state.call_ended(1, "sip-a")
    assert not state.set_activity(1, "sip-a", "listening")  # late, after the end
    assert state.live_calls() == []


def test_unregistered_worker_is_not_routed() -> None:
    state = PoolState(2, 4, clock=Clock())
    state.worker_up(0, 1, "sip:agent1@phone.plivo.com", registers=True)
    state.worker_up(1, 2, "sip:agent2@phone.plivo.com", registers=True)
    assert state.reserve("a") is None and not state.ready()
    state.set_registration(1, True, "200 OK")
    target = state.reserve("a")
    assert target is not None and target.uri == "sip:agent2@phone.plivo.com"


def test_draining_routes_nothing() -> None:
    state = pool(2)
    state.call_started(1, "c", None)
    state.start_draining()
    assert state.reserve("new") is None and not state.ready()
    assert state.total_calls() == 1
    state.call_ended(1, "c")
    assert state.total_calls() == 0


def _settings(**overrides: object) -> Settings:
    return load_settings(None, env_file=None, overrides=overrides)


def test_worker_ports_are_consecutive_with_separate_rtp_ranges() -> None:
    s = _settings(
        sip={"listen_port": 5060, "rtp_port_start": 20000}, pool={"rtp_ports_per_worker": 40}
    )
    plans = plan_workers(s, 3)
    assert [p.sip_port for p in plans] == [5060, 5061, 5062]
    assert [(p.rtp_port_start, p.rtp_port_range) for p in plans] == [
        (20000, 40),
        (20040, 40),
        (20080, 40),
    ]


@pytest.mark.parametrize(
    ("overrides", "workers", "needle"),
    [
        ({"sip": {"listen_port": 65534}}, 4, "past 65535"),
        ({"sip": {"rtp_port_start": 65000}, "pool": {"rtp_ports_per_worker": 400}}, 3, "RTP"),
        ({"sip": {"listen_port": 20010}}, 2, "inside the workers' RTP ports"),
        (
            {"sip": {"mode": "register"}, "registration": {"accounts": [{"username": "a"}]}},
            2,
            "need 2 accounts",
        ),
    ],
)
def test_impossible_port_plans_are_config_errors(
    overrides: dict[str, object], workers: int, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        plan_workers(_settings(**overrides), workers)


def test_auto_pool_size() -> None:
    offline = _settings()
    assert auto_workers(offline, cpus=2) == 1
    assert auto_workers(offline, cpus=8) == 4
    cloud = _settings(providers={"stt": "fake", "tts": "fake", "brain": "fake"})
    assert auto_workers(cloud, cpus=2) == 16
    reg = _settings(
        sip={"mode": "register"},
        registration={"accounts": [{"username": "a1"}, {"username": "a2"}]},
    )
    assert auto_workers(reg, cpus=2) == 2


def test_a_reservation_can_be_held_longer_for_a_ringing_outbound_call() -> None:
    clock = Clock()
    state = PoolState(1, 1, reserve_s=10.0, clock=clock)
    state.worker_up(0, 100, "sip:agent@127.0.0.1:5060", registers=False)
    assert state.reserve_for("outbound-1", 35.0) is not None
    clock.now += 20.0  # past reserve_s, within the hold: the one slot is still taken
    assert state.reserve("inbound-1") is None
    clock.now += 16.0
    assert state.reserve("inbound-1") is not None


def test_stream_workers_come_after_the_sip_workers_and_share_one_port() -> None:
    s = _settings(
        sip={"listen_port": 5060, "rtp_port_start": 20000},
        pool={"stream_workers": 2},
        stream={"listen_host": "0.0.0.0", "listen_port": 8090},
    )
    plans = plan_pool(s, 2)
    assert [(p.index, p.kind, p.address) for p in plans] == [
        (0, "sip", "127.0.0.1:5060"),
        (1, "sip", "127.0.0.1:5061"),
        (2, "stream", "0.0.0.0:8090"),
        (3, "stream", "0.0.0.0:8090"),
    ]
    only = plan_pool(_settings(pool={"sip": False, "stream_workers": 1}), 4)
    assert [(p.index, p.kind) for p in only] == [(0, "stream")]
    with pytest.raises(ConfigError, match="no worker would run"):
        plan_pool(_settings(pool={"sip": False}), 4)


def test_stream_slots_are_reserved_apart_from_sip_slots() -> None:
    state = PoolState(1, 4, stream_workers=1, stream_max_calls=2, clock=Clock())
    state.worker_up(0, 1000, "sip:agent@127.0.0.1:5060", registers=False)
    assert state.reserve("s-0", kind="stream") is None  # the stream worker is not up yet
    assert state.ready("sip") and not state.ready("stream")
    state.worker_up(1, 1001, "ws://127.0.0.1:8090/stream", registers=False)
    targets = [state.reserve(f"s-{i}", kind="stream") for i in range(3)]
    assert [t.worker if t else None for t in targets] == [1, 1, None]  # two streams fit
    assert state.reserve("c-0") == DialTarget(0, "sip:agent@127.0.0.1:5060")  # SIP unaffected
    state.call_started(1, "s-0", "s-0")  # the stream connected: its reservation is its call
    assert {w["kind"]: w["calls"] for w in state.snapshot()} == {"sip": 0, "stream": 1}
    assert state.kinds() == {"sip", "stream"}
