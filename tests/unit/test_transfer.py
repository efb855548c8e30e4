"""Transfer to a human: target normalisation, and the session's side of a transfer action
(handover line, transfer, hang-up or apology and carry on), without SIP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Mapping

import pytest

from gateway.pipeline.session import CallSession, ConversationOptions, TurnRecord
from gateway.pipeline.transport import CallLeg
from gateway.policy.transfer import (
    TransferError,
    TransferOutcome,
    transfer_target,
    transfer_uri,
    uri_host,
)
from gateway.providers.base import CallContext
from gateway.providers.fake import FakeStt, FakeTts
from gateway.sip.calls import CallHandle, SipCall
from tests.helpers.session import (
    TONE_FRAMES_PER_CHAR,
    Call,
    MediaClock,
    QuickBrain,
    Speak,
    loop_ring,
    make_handle,
    run,
    speech,
    start_call,
)
from tests.helpers.transfer import TransferBrain, start

pytestmark = pytest.mark.timeout(30)


# -- pure helpers ---------------------------------------------------------------------------


def test_transfer_target_of_actions() -> None:
    assert transfer_target("transfer") == ""
    assert transfer_target("transfer:+14155550100") == "+14155550100"
    assert transfer_target("transfer:sip:desk@example.com") == "sip:desk@example.com"
    assert transfer_target("hangup") is None
    assert transfer_target("transferx:1") is None


@pytest.mark.parametrize(
    ("target", "domain", "uri"),
    [
        ("sip:desk@example.com", None, "sip:desk@example.com"),
        ("SIPS:desk@example.com:5061", None, "SIPS:desk@example.com:5061"),
        ("+1 (415) 555-0100", "acme.zt.plivo.com", "sip:+14155550100@acme.zt.plivo.com"),
        ("14155550100", "acme.zt.plivo.com:5060", "sip:14155550100@acme.zt.plivo.com:5060"),
        ("tel:+14155550100;ext=1", "acme.zt.plivo.com", "sip:+14155550100@acme.zt.plivo.com"),
        ("sales", "pbx.example.com", "sip:sales@pbx.example.com"),
    ],
)
def test_transfer_uri(target: str, domain: str | None, uri: str) -> None:
    assert transfer_uri(target, domain) == uri


@pytest.mark.parametrize(
    ("target", "domain", "message"),
    [
        ("", "d.example", "no transfer target"),
        ("+14155550100", None, "set transfer.domain"),
        ("+14155550100", "", "zt.plivo.com"),
        ("bob@example.com", "d.example", "neither a SIP URI"),
        ("sip:", None, "not a valid SIP URI"),
        ("sip:a b@x", None, "not a valid SIP URI"),
        ("14155550100", "bad domain", "not a host"),
    ],
)
def test_bad_transfer_targets_are_named(target: str, domain: str | None, message: str) -> None:
    with pytest.raises(TransferError, match=message.replace(".", r"\.")):
        transfer_uri(target, domain)


def test_uri_host() -> None:
    assert uri_host('"Bob" <sip:bob@192.0.2.7:5070;transport=udp>') == "192.0.2.7:5070"
    assert uri_host("sip:agent@phone.plivo.com") == "phone.plivo.com"
    assert uri_host("sip:203.0.113.5") == "203.0.113.5"


# -- the session -----------------------------------------------------------------------------


OPTIONS = ConversationOptions(end_of_turn_ms=300, hangup_delay_s=0.05, transfer_failed_text="No.")


def test_a_transfer_that_works_ends_the_call_after_the_handover_line(speech_8k: Speak) -> None:
    ok = TransferOutcome(True, 200, "200 OK", target="sip:+14155550100@acme.zt.plivo.com")
    brain = TransferBrain("Connecting.", ["transfer:+14155550100", "hangup"])

    async def scenario() -> None:
        call, transfer = start(brain, OPTIONS, ok)
        try:
            await call.turn(0)
            asked = call.clock.say(speech(speech_8k, "let me talk to a person"))
            await call.until("the hang-up", lambda: bool(call.hangups))
            assert transfer.targets == ["+14155550100"]
            assert transfer.agent_was_quiet == [True]
            assert call.hangups == ["transferred to sip:+14155550100@acme.zt.plivo.com"]
            assert call.session.transfers == [ok]
            reply = call.turns[1]
            assert reply.agent_text == "Connecting."
            assert reply.actions == ["transfer:+14155550100", "hangup"]
            # "Connecting." was said in full: 11 characters of tone.
            said = [t for t in call.clock.agent_loud_ticks() if t > asked]
            assert len(said) == 11 * TONE_FRAMES_PER_CHAR
            await asyncio.sleep(0.2)
            assert len(call.turns) == 2 and call.hangups == [call.hangups[0]]
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


def test_a_failed_transfer_is_apologised_for_and_the_call_goes_on(speech_8k: Speak) -> None:
    failed = TransferOutcome(False, 486, "486 Busy Here", target="sip:desk@example.com")
    brain = TransferBrain("Connecting.", ["transfer", "hangup"])

    async def scenario() -> None:
        call, transfer = start(brain, OPTIONS, failed)
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            apology = await call.turn(2)
            assert transfer.targets == [""]  # plain "transfer": the configured target
            assert apology.kind == "transfer-failed"
            assert apology.agent_text == "No."
            assert apology.first_audio_at > 0
            assert call.hangups == []  # the "hangup" after a transfer is not run
            assert call.session.transfers == [failed]
            # The conversation carries on: the next question gets an answer.
            brain.actions = ()
            call.clock.say(speech(speech_8k, "what are your hours"))
            nxt = await call.turn(3)
            assert nxt.kind == "reply" and nxt.agent_text == "Connecting."
            assert len(brain.heard) == 2
            assert call.hangups == []
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


def test_a_transfer_without_an_outcome_times_out_into_the_apology(speech_8k: Speak) -> None:
    options = ConversationOptions(
        end_of_turn_ms=300, transfer_timeout_s=0.5, transfer_failed_text="No."
    )

    async def scenario() -> None:
        call, _ = start(TransferBrain("Ok.", ["transfer:desk"]), options, None)
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            await call.turn(1)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            apology = await call.turn(2, timeout=3.0)
            # The 0.5 s timeout, then "No." (9 frames), recorded once it played out.
            waited = loop.time() - t0
            assert 0.5 + 0.18 - 1e-6 <= waited <= 0.5 + 0.18 + 0.02 + 1e-6, waited
            assert apology.kind == "transfer-failed"
            assert call.session.transfers[0].ok is False
            assert "no outcome within 0.5 s" in call.session.transfers[0].detail
            # The brain is told, so it does not go on as if the transfer had worked.
            brain = call.session.brain
            assert isinstance(brain, TransferBrain) and len(brain.notes) == 1
            assert "failed (no outcome within 0.5 s)" in brain.notes[0]
            assert call.hangups == []
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


def test_caller_speech_during_the_transfer_does_not_cancel_it(speech_8k: Speak) -> None:
    ok = TransferOutcome(True, 200, "200 OK", target="sip:desk@example.com")

    async def scenario() -> None:
        call, transfer = start(TransferBrain("Ok.", ["transfer:desk"]), OPTIONS, ok)
        transfer.release.clear()
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            await call.until("the transfer to start", lambda: bool(transfer.targets))
            call.clock.say(speech(speech_8k, "hello are you still there"))
            await call.until("the caller to finish", call.clock.idle)
            await asyncio.sleep(0.5)  # more than end_of_turn (300 ms)
            assert len(call.session.brain.heard) == 1  # type: ignore[attr-defined]
            assert call.hangups == []
            transfer.release.set()
            await call.until("the hang-up", lambda: bool(call.hangups))
            assert call.hangups == ["transferred to sip:desk@example.com"]
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


def test_a_bad_target_is_a_failed_transfer(speech_8k: Speak) -> None:
    async def bad(target: str) -> TransferOutcome:
        transfer_uri(target, None)  # raises: a number needs a domain
        raise AssertionError("unreachable")

    async def scenario() -> None:
        handle = make_handle()
        turns: list[TurnRecord] = []
        hangups: list[str] = []
        transport = SipCall(handle, hangup=hangups.append, transfer=bad)
        session = CallSession(
            transport,
            stt=FakeStt(),
            tts=FakeTts(),
            brain=TransferBrain("Ok.", ["transfer:+14155550100"]),
            options=OPTIONS,
            on_turn=turns.append,
        )
        clock = MediaClock(handle)
        call = Call(
            session,
            transport,
            clock,
            asyncio.ensure_future(session.run()),
            asyncio.ensure_future(clock.run()),
            turns,
            hangups,
        )
        try:
            await call.turn(0)
            clock.say(speech(speech_8k, "let me talk to a person"))
            apology = await call.turn(2)
            assert apology.kind == "transfer-failed"
            assert "set transfer.domain" in session.transfers[0].detail
            assert hangups == []
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


# -- playbook actions --------------------------------------------------------------------------


def _playbook(actions: str) -> dict[str, object]:
    import tomllib

    text = f"""
[agent]
name = "T"
greeting = "Hi."
fallback = "Pardon?"
reprompt = "Still there?"
goodbye = "Bye."

[[intents]]
name = "human"
keywords = ["person"]
reply = "Connecting you."
actions = {actions}
"""
    return tomllib.loads(text)


def test_playbook_transfer_actions_reach_the_reply() -> None:
    from gateway.providers.scripted import ScriptedBrain, parse_playbook

    for actions in ('["transfer"]', '["transfer:+1 415 555 0100"]', '["transfer:sip:d@x.org"]'):
        pb = parse_playbook(_playbook(actions))
        reply = asyncio.run(ScriptedBrain(pb).respond("a person please", CallContext("c")))
        assert reply.text == "Connecting you."
        assert reply.actions == tuple(json.loads(actions))


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        ('["transfer:bob@example.com"]', 'action "transfer:bob@example.com" in intent "human"'),
        ('["transfer:"]', 'unknown action "transfer:"'),
        ('["transfers"]', "allowed: hangup, transfer, transfer:<target>"),
    ],
)
def test_playbook_rejects_bad_transfer_actions(actions: str, message: str) -> None:
    from gateway.providers.scripted import PlaybookError, parse_playbook

    with pytest.raises(PlaybookError) as info:
        parse_playbook(_playbook(actions))
    assert message in str(info.value)


def test_transfer_domain_for_numbers() -> None:
    from gateway.pool.worker import transfer_domain
    from sip_config import load_settings

    remote = "<sip:+14155550123@203.0.113.9:5060>"
    plain = load_settings(None, env_file=None)
    assert transfer_domain(plain, remote) == "203.0.113.9:5060"
    zentrunk = load_settings(
        None, env_file=None, overrides={"transfer": {"domain": "sip:acme.zt.plivo.com"}}
    )
    assert transfer_domain(zentrunk, remote) == "acme.zt.plivo.com"
    registered = load_settings(
        None,
        env_file=None,
        overrides={
            "sip": {"mode": "register"},
            "registration": {"accounts": [{"username": "agent1", "password": "x"}]},
        },
    )
    assert transfer_domain(registered, remote) == "phone.plivo.com"
    assert transfer_uri("+14155550100", transfer_domain(registered, remote)) == (
        "sip:+14155550100@phone.plivo.com"
    )


def test_bad_transfer_domain_setting_is_named() -> None:
    from sip_config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"transfer\.domain: must be a host"):
        load_settings(None, env_file=None, overrides={"transfer": {"domain": "a b"}})


# -- which road a transfer takes (Plivo's REST API or REFER) -------------------------------
_CALL_UUID = "3f2a9c1e-7b4d-4e8a-9f01-23456789abcd"
_REGISTERED: dict[str, dict[str, object]] = {
    "sip": {"mode": "register"},
    "registration": {"accounts": [{"username": "agent1", "password": "x"}]},
}
_REST: dict[str, dict[str, object]] = {
    "app": {"auth_token": "tok", "public_url": "https://agent.example.com"},
    "transfer": {"plivo_auth_id": "MAXXXXXXXXXXXXXXXXXX"},
}


def _merge(*parts: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for part in parts:
        for section, values in part.items():
            out.setdefault(section, {}).update(values)
    return out


def _road(overrides: Mapping[str, Mapping[str, object]], headers: dict[str, str]) -> str:
    """The CallUUID a worker would transfer with Plivo's REST API ("" for REFER)."""
    from types import SimpleNamespace

    from gateway.pool.worker import AgentWorker
    from gateway.sip.calls import CallHandle
    from sip_config import load_settings

    settings = load_settings(None, env_file=None, overrides=overrides)
    handle = CallHandle(0, "c1", "sip:caller@host", "sip:agent@host", headers=headers)
    return AgentWorker._rest_transfer_uuid(SimpleNamespace(settings=settings), handle)  # type: ignore[arg-type]


def test_auto_transfers_a_plivo_call_through_plivos_api_and_others_with_refer() -> None:
    # Plivo takes REFER only on Zentrunk; a call from its Dial (it carries the CallUUID)
    # is moved with the Transfer API, which knows the call by that CallUUID.
    plivo_leg = {"X-PH-Calluuid": _CALL_UUID.replace("-", "")}
    assert _road(_REST, plivo_leg) == _CALL_UUID
    assert _road(_REST, {}) == ""  # a trunk call or a softphone: REFER
    assert _road({}, plivo_leg) == ""  # no REST credentials: REFER (warned at start)
    refer = _merge(_REST, {"transfer": {"method": "refer"}})
    assert _road(refer, plivo_leg) == ""


def test_a_refer_that_cannot_work_is_refused_in_configuration() -> None:
    from sip_config import ConfigError, load_settings

    def refused(overrides: Mapping[str, Mapping[str, object]]) -> str:
        with pytest.raises(ConfigError) as info:
            load_settings(None, env_file=None, overrides=overrides)
        return str(info.value)

    registered_refer = _merge(_REGISTERED, {"transfer": {"method": "refer"}})
    assert "cannot transfer calls in register mode" in refused(registered_refer)
    registered_auto = _merge(_REGISTERED, {"transfer": {"target": "+14155550100"}})
    assert "required to transfer calls in register mode" in refused(registered_auto)
    for transfer in (
        {"domain": "phone.plivo.com"},
        {"target": "sip:desk@phone.plivo.com", "method": "refer"},
    ):
        assert "only to your Zentrunk domain" in refused({"transfer": transfer})
    # What works: Zentrunk's own domain, any other host, and register mode with the API.
    load_settings(None, env_file=None, overrides={"transfer": {"domain": "acme.zt.plivo.com"}})
    load_settings(None, env_file=None, overrides={"transfer": {"domain": "pbx.example.com"}})
    load_settings(None, env_file=None, overrides=_merge(_REGISTERED, _REST, registered_auto))
    assert load_settings(None, env_file=None).transfer.method == "auto"


# -- warm transfer -------------------------------------------------------------------------


class FakeLegs:
    """The SIP side of a warm transfer: a human leg that answers (or ends) on cue."""

    def __init__(self, answer_after_s: float | None, end_reason: str = "") -> None:
        self.answer_after_s = answer_after_s
        self.end_reason = end_reason
        self.dialled: list[str] = []
        self.bridges: list[tuple[CallHandle, str]] = []
        self.hangups: list[tuple[CallHandle, str]] = []
        self.human: CallHandle | None = None
        self.clock: MediaClock | None = None
        self.clock_task: asyncio.Task[None] | None = None
        self.ring_task: asyncio.Task[None] | None = None

    def resolve(self, target: str) -> str:
        return transfer_uri(target or "desk", "pbx.example.com")

    async def dial(self, uri: str) -> CallHandle:
        self.dialled.append(uri)
        human = CallHandle(
            2, "human-leg", uri, "sip:agent@127.0.0.1", bridge_leg=True, playout=loop_ring()
        )
        self.human = human
        self.clock = MediaClock(human)  # the human's side of the media
        self.clock_task = asyncio.ensure_future(self.clock.run())

        async def ring() -> None:
            if self.answer_after_s is None:
                return  # rings for ever
            await asyncio.sleep(self.answer_after_s)
            if self.end_reason:
                human.end_reason = self.end_reason
                human.mark_ended(asyncio.get_running_loop().time())
            else:
                human.mark_answered(asyncio.get_running_loop().time())

        self.ring_task = asyncio.ensure_future(ring())
        return human

    async def bridge(self, human: CallLeg, reason: str) -> bool:
        assert isinstance(human, CallHandle)
        self.bridges.append((human, reason))
        return True

    def hangup(self, leg: CallLeg, reason: str) -> None:
        assert isinstance(leg, CallHandle)
        self.hangups.append((leg, reason))
        leg.mark_ended(asyncio.get_running_loop().time())

    async def close(self) -> None:
        for task in (self.clock_task, self.ring_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def test_a_leg_answered_on_the_pj_thread_wakes_whoever_waits_for_it() -> None:
    async def scenario() -> None:
        leg = CallHandle(2, "human-leg", "sip:h@x", "sip:agent@x", bridge_leg=True)
        waiter = asyncio.ensure_future(leg.settled())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        # Marked as the pj thread marks it: from another thread.
        setter = threading.Thread(target=leg.mark_answered, args=(12.5,))
        setter.start()
        await asyncio.wait_for(waiter, 5.0)
        setter.join()
        ended = CallHandle(3, "gone", "sip:h@x", "sip:agent@x", ended_at=1.0)
        await asyncio.wait_for(ended.settled(), 1.0)  # already over: at once

    asyncio.run(scenario())


def start_warm(brain: QuickBrain, options: ConversationOptions, legs: FakeLegs) -> Call:
    return start_call(brain, options, warm=legs)


WARM = ConversationOptions(
    end_of_turn_ms=300, transfer_failed_text="No.", warm_intro_text="Hi.", warm_summary_turns=1
)


def test_warm_transfer_briefs_the_human_then_bridges(speech_8k: Speak) -> None:
    legs = FakeLegs(answer_after_s=0.2)

    async def scenario() -> None:
        call = start_warm(TransferBrain("Ok.", ["transfer:+14155550100"]), WARM, legs)
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            # The summary alone is 5 s of audio.
            await call.until("the bridge", lambda: bool(legs.bridges), timeout=15.0)
            assert legs.dialled == ["sip:+14155550100@pbx.example.com"]
            human, reason = legs.bridges[0]
            assert reason == "transferred to sip:+14155550100@pbx.example.com (warm)"
            # The human heard the whole summary (FakeTts: 3 frames per character) before
            # the bridge, and nothing is left to play.
            summary = call.session.warm_summary()
            assert summary.startswith("Hi. They are calling from +14155550123. They said: ")
            assert summary.endswith(" Connecting you now.")
            assert legs.clock is not None
            assert len(legs.clock.agent_loud_ticks()) == len(summary) * TONE_FRAMES_PER_CHAR
            assert len(human.playout) == 0
            # The agent's part is over: no hang-up, and the caller's words start no turn.
            await asyncio.sleep(0.2)
            call.clock.say(speech(speech_8k, "what are your hours"))
            await call.until("the caller to finish", call.clock.idle)
            await asyncio.sleep(0.5)
            assert call.hangups == [] and legs.hangups == []
            assert len(call.turns) == 2
            assert call.session.transfers[0].bridged
            await legs.close()
            await call.hang_up()
        finally:
            await call.stop()
            await legs.close()

    run(scenario)


def test_warm_transfer_to_a_busy_human_is_apologised_for(speech_8k: Speak) -> None:
    legs = FakeLegs(answer_after_s=0.1, end_reason="486 Busy Here")

    async def scenario() -> None:
        call = start_warm(TransferBrain("Ok.", ["transfer"]), WARM, legs)
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            apology = await call.turn(2)
            assert apology.kind == "transfer-failed"
            assert legs.dialled == ["sip:desk@pbx.example.com"]
            assert legs.bridges == [] and legs.hangups == []
            assert call.session.transfers[0].detail == "486 Busy Here"
            assert call.hangups == []
            await legs.close()
            await call.hang_up()
        finally:
            await call.stop()
            await legs.close()

    run(scenario)


def test_warm_transfer_nobody_answers_hangs_up_the_human_leg(speech_8k: Speak) -> None:
    legs = FakeLegs(answer_after_s=None)
    options = ConversationOptions(
        end_of_turn_ms=300, transfer_failed_text="No.", transfer_timeout_s=0.5
    )

    async def scenario() -> None:
        call = start_warm(TransferBrain("Ok.", ["transfer"]), options, legs)
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            reply = await call.turn(1)
            ringing = call.clock.ticks
            apology = await call.turn(2, timeout=4.0)
            assert apology.kind == "transfer-failed"
            # While the human was rung the caller heard ringback (2 s of tone open each
            # cadence), not silence; the ring stopped for the apology ("No." = 9 frames).
            assert reply.agent_text == "Ok."
            heard = call.clock.agent_loud_ticks(ringing)
            # 0.5 s of it (25 frames, all in the cadence's 2 s of tone), then "No.".
            assert len(heard) == 25 + 3 * TONE_FRAMES_PER_CHAR, len(heard)
            assert [reason for _, reason in legs.hangups] == ["warm transfer abandoned"]
            assert legs.bridges == []
            assert "no outcome within 0.5 s" in call.session.transfers[0].detail
            # The brain is told, so it does not go on as if the transfer had worked.
            brain = call.session.brain
            assert isinstance(brain, TransferBrain) and len(brain.notes) == 1
            assert "failed (no outcome within 0.5 s)" in brain.notes[0]
            await legs.close()
            await call.hang_up()
        finally:
            await call.stop()
            await legs.close()

    run(scenario)


def test_warm_transfer_rings_no_longer_than_the_ring_timeout(speech_8k: Speak) -> None:
    legs = FakeLegs(answer_after_s=None)
    options = dataclasses.replace(WARM, warm_ring_timeout_s=0.5, transfer_timeout_s=30)

    async def scenario() -> None:
        call = start_warm(TransferBrain("Ok.", ["transfer"]), options, legs)
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            await call.turn(1)
            apology = await call.turn(2, timeout=4.0)
            assert apology.kind == "transfer-failed"
            # The ring timeout, not the whole transfer's, ended it; the ringing leg was
            # hung up (a CANCEL on the wire).
            assert call.session.transfers[0].detail == "no answer within 0.5 s"
            assert [reason for _, reason in legs.hangups] == ["warm transfer abandoned"]
            assert legs.bridges == [] and call.hangups == []
            await legs.close()
            await call.hang_up()
        finally:
            await call.stop()
            await legs.close()

    run(scenario)


def test_a_failed_warm_transfer_rings_on_until_the_apology_is_ready(speech_8k: Speak) -> None:
    """The apology takes 0.3 s to synthesise: the caller hears the ringback until its first
    audio, not 0.3 s of silence, which a caller takes as their turn to speak (and their
    words would cut the apology short)."""
    legs = FakeLegs(answer_after_s=None)
    options = dataclasses.replace(WARM, warm_ring_timeout_s=0.5, transfer_timeout_s=30)

    async def scenario() -> None:
        slow_tts = FakeTts(first_byte_delay_s=0.3)
        call = start_call(TransferBrain("Ok.", ["transfer"]), options, warm=legs, tts=slow_tts)
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            await call.turn(1)
            ringing = call.clock.ticks + 2  # the ringback starts once "Ok." played out
            apology = await call.turn(2, timeout=4.0)
            over = call.clock.ticks - 2  # the apology's last frames, then silence
            assert apology.kind == "transfer-failed"
            assert call.session.transfers[0].detail == "no answer within 0.5 s"
            empty = [i for i in range(ringing, over) if call.clock.agent[i] is None]
            assert empty == [], f"{len(empty)} ticks of nothing between ringback and apology"
            await legs.close()
            await call.hang_up()
        finally:
            await call.stop()
            await legs.close()

    run(scenario)


def test_the_apology_is_synthesised_while_the_transfer_is_tried(speech_8k: Speak) -> None:
    """A TTS 0.8 s from its first audio and a 0.5 s ring timeout: the apology, made while
    the human was rung, is heard 0.8 s after the ringback began, not 0.5 + 0.8 s."""
    legs = FakeLegs(answer_after_s=None)
    options = dataclasses.replace(WARM, warm_ring_timeout_s=0.5, transfer_timeout_s=30)

    async def scenario() -> None:
        slow_tts = FakeTts(first_byte_delay_s=0.8)
        call = start_call(TransferBrain("Ok.", ["transfer"]), options, warm=legs, tts=slow_tts)
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            await call.turn(1)
            handed_over = asyncio.get_running_loop().time()  # "Ok." played: ringing starts
            apology = await call.turn(2, timeout=4.0)
            assert apology.kind == "transfer-failed"
            waited = apology.first_audio_at - handed_over
            assert 0.75 <= waited <= 0.9, waited
            await legs.close()
            await call.hang_up()
        finally:
            await call.stop()
            await legs.close()

    run(scenario)


def test_an_apology_cut_short_by_the_caller_is_still_recorded(speech_8k: Speak) -> None:
    legs = FakeLegs(answer_after_s=0.1, end_reason="486 Busy Here")
    # 3 s of apology (FakeTts: 3 frames a character): time for the caller to talk over it.
    apology_text = "Sorry, nobody could take your call just now. What else can I do?"
    options = dataclasses.replace(WARM, transfer_failed_text=apology_text)

    async def scenario() -> None:
        call = start_warm(TransferBrain("Ok.", ["transfer"]), options, legs)
        clock = call.clock
        try:
            await call.turn(0)
            clock.say(speech(speech_8k, "let me talk to a person"))
            await call.turn(1)
            await call.until("the apology to play", lambda: call.session.speaker.speaking)
            await asyncio.sleep(0.5)
            clock.say(speech(speech_8k, "wait a moment"))
            apology = await call.turn(2)
            # The caller heard part of it, so it is on the record, marked as cut off.
            assert apology.kind == "transfer-failed"
            assert apology.interrupted is True
            assert apology.agent_text == apology_text
            assert apology.first_audio_at > 0
            assert call.session.barge_ins == 1
            await legs.close()
            await call.hang_up()
        finally:
            await call.stop()
            await legs.close()

    run(scenario)
