"""What the agent is doing on a call (`CallSession.activity`), as the session reports it
(``on_activity``): on change only, at the moment it changes where the session has an event
for it, within a watchdog tick (0.2 s) for hold and transfers. On the virtual clock
(tests/helpers/session.py), with the fake providers."""

from __future__ import annotations

import asyncio

import pytest

from gateway.pipeline.session import ConversationOptions
from gateway.policy.transfer import TransferOutcome
from gateway.providers.fake import FakeBrain
from tests.helpers.session import Call, QuickBrain, Speak, run, speech, start_call
from tests.helpers.transfer import TransferBrain, start

pytestmark = pytest.mark.timeout(30)

OPTIONS = ConversationOptions(end_of_turn_ms=300, early_final_ms=0)
WATCHDOG_S = 0.2  # the session's watchdog tick


async def listening_again(call: Call, reports: int) -> None:
    """Wait until the session reported `reports` activities, the last one "listening"."""
    await call.until(
        f"report #{reports} (listening)",
        lambda: len(call.activities) >= reports and call.activity_seq()[-1] == "listening",
    )


def test_greeting_then_a_caller_turn_and_its_reply(speech_8k: Speak) -> None:
    utterance = speech(speech_8k, "what are your opening hours")

    async def scenario() -> None:
        call = start_call(QuickBrain(replies=["Okay."]), OPTIONS)
        clock = call.clock
        try:
            greeting = await call.turn(0)
            await listening_again(call, 3)
            # The greeting is ready at once: thinking, then speaking from its first piece,
            # at the start (before its first frame is out); listening on the tick its last
            # frame went out.
            assert call.activity_seq() == ["thinking", "speaking", "listening"]
            assert call.activity_at("thinking") == call.activity_at("speaking") == clock.times[0]
            last_loud = clock.agent_loud_ticks()[-1]
            assert call.activity_at("listening") == clock.times[last_loud]
            assert greeting.kind == "greeting"

            # The caller speaks: still listening (no report); the end of their turn is
            # thinking, the reply's first piece speaking, its end listening again.
            clock.say(utterance)
            reply = await call.turn(1)
            await listening_again(call, 6)
            assert call.activity_seq() == ["thinking", "speaking", "listening"] * 2
            turn_end = reply.end_of_speech_at + reply.eot_wait_ms / 1000
            assert call.activity_at("thinking", 1) == pytest.approx(turn_end)
            assert call.activity_at("speaking", 1) <= reply.first_audio_at
            assert call.activity_at("listening", 1) > reply.first_audio_at
            assert call.session.activity() == "listening"
            await call.hang_up()
        finally:
            await call.stop()
        # Nothing is reported as the call ends.
        assert call.activity_seq() == ["thinking", "speaking", "listening"] * 2

    run(scenario)


def test_a_barge_in_is_listening_at_once(speech_8k: Speak) -> None:
    async def scenario() -> None:
        # FakeBrain's greeting is long (84 frames): the caller talks over it.
        call = start_call(FakeBrain(), OPTIONS)
        clock = call.clock
        try:
            await call.until("the greeting on the wire", lambda: len(clock.agent_loud_ticks()) > 10)
            assert call.activity_seq() == ["thinking", "speaking"]
            clock.say(speech(speech_8k, "hold on a second"))
            await call.until("the barge-in", lambda: call.session.barge_ins == 1)
            # Cut off: listening (never "thinking" on the way, though the greeting's task
            # was still winding down), then the caller's turn is answered.
            await call.turn(1)
            await listening_again(call, 6)
            assert call.activity_seq() == ["thinking", "speaking", "listening"] * 2
            cut = clock.agent_loud.index(False, 1)  # the first tick without greeting audio
            assert clock.times[cut - 1] <= call.activity_at("listening") <= clock.times[cut]
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


def test_on_hold_and_back_within_a_watchdog_tick() -> None:
    async def scenario() -> None:
        call = start_call(QuickBrain(), OPTIONS)
        loop = asyncio.get_running_loop()
        try:
            await call.turn(0)
            await listening_again(call, 3)
            held_at = loop.time()
            call.transport.handle.on_hold = True  # as the SIP stack sets it (re-INVITE)
            await call.until("on hold", lambda: call.activity_seq()[-1] == "on-hold")
            assert call.activity_at("on-hold") - held_at <= WATCHDOG_S
            await asyncio.sleep(5 * WATCHDOG_S)
            assert len(call.activities) == 4  # reported once, not on every tick
            back_at = loop.time()
            call.transport.handle.on_hold = False
            await listening_again(call, 5)
            assert call.activities[-1][0] - back_at <= WATCHDOG_S
            assert call.activity_seq()[2:] == ["listening", "on-hold", "listening"]
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)


def test_transferring_until_the_transfer_fails_then_the_apology(speech_8k: Speak) -> None:
    failed = TransferOutcome(False, 486, "486 Busy Here", target="sip:desk@example.com")
    options = ConversationOptions(end_of_turn_ms=300, transfer_failed_text="No.")

    async def scenario() -> None:
        call, transfer = start(TransferBrain("Connecting.", ["transfer"]), options, failed)
        transfer.release.clear()  # the transfer waits for its outcome
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            await call.until("the transfer", lambda: bool(transfer.targets))
            started = asyncio.get_running_loop().time()
            await call.until("transferring", lambda: call.activity_seq()[-1] == "transferring")
            assert call.activity_at("transferring") - started <= WATCHDOG_S
            transfer.release.set()
            apology = await call.turn(2)
            assert apology.kind == "transfer-failed"
            await listening_again(call, 8)
            # The handover line is speaking until the transfer is under way (its actions
            # are part of the reply that spoke), the apology speaking again.
            assert call.activity_seq() == [
                *("thinking", "speaking", "listening"),
                *("thinking", "speaking", "transferring", "speaking", "listening"),
            ]
            await call.hang_up()
        finally:
            await call.stop()

    run(scenario)
