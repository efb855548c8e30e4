"""Handing the caller to a human: cold (the transport's REFER or REST transfer) or warm
(the agent calls the human, briefs them, then bridges the two calls).

While a transfer is under way (`Handover.underway`) and after a warm one (`bridged`) the
caller's words start no turn. Success ends the agent's part; failure is told to the brain
and returned, and the conversation says so and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.pipeline.options import ConversationOptions
from gateway.pipeline.playout import Speaker, ringback, speak_on
from gateway.pipeline.record import TurnRecord
from gateway.pipeline.transport import CallLeg, CallTransport, WarmLegs
from gateway.policy.transfer import TransferError, TransferOutcome
from gateway.providers.base import ProviderError

# The conversation's log lines, wherever in the pipeline they are written.
log = logging.getLogger("gateway.pipeline.session")


class Handover:
    """The transfers of one call."""

    def __init__(self, call: CallTransport, speaker: Speaker, options: ConversationOptions):
        self.call = call
        self.speaker = speaker
        self.opt = options
        self.underway = False
        self.bridged = False  # warm-transferred: the caller talks with the human now
        self.outcomes: list[TransferOutcome] = []
        # The caller's ringback during a warm transfer. After a failed one it plays on until
        # the apology's first audio is ready (`stop_ringback`), so the caller never hears a
        # silence in between, which a caller takes as their turn to speak.
        self._ringback: asyncio.Task[None] | None = None

    async def stop_ringback(self) -> None:
        """Stop the ringback (if it plays) and drop what of it is queued."""
        ringing, self._ringback = self._ringback, None
        if ringing is None:
            return
        ringing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ringing
        self.call.playout.clear()

    async def transfer(
        self,
        target: str,
        summary: Callable[[], str],
        hangup: Callable[[str], None],
        observe: Callable[[str], None],
    ) -> bool:
        """Hand the caller to `target` (after the handover line was spoken). Success ends
        the call ("transferred to <uri>", `hangup`) or bridges it; failure is `observe`d
        for the brain. True on success."""
        call_id = self.call.call_id
        self.underway = True
        try:
            outcome = await self._outcome(target, summary)
            self.outcomes.append(outcome)
            where = outcome.target or target or "the default target"
            if outcome.ok:
                log.info("call %s: transferred to %s (%s)", call_id, where, outcome.detail)
                if outcome.bridged:
                    # The agent's part is over; the call goes on until either side ends it.
                    self.bridged = True
                    return True
                if outcome.hangup_after_s:
                    # The far end normally ends our leg itself; this bounds the wait.
                    await asyncio.sleep(outcome.hangup_after_s)
                hangup(f"transferred to {where}")
                return True
            log.warning("call %s: transfer to %s failed: %s", call_id, where, outcome.detail)
            try:
                observe(
                    f"The transfer to {where} failed ({outcome.detail}). The caller is still on"
                    " the line and has been told; carry on helping them."
                )
            except Exception:
                log.exception("call %s: brain.observe failed", call_id)
            return False
        except BaseException:
            await self.stop_ringback()
            raise
        finally:
            self.underway = False

    async def _outcome(self, target: str, summary: Callable[[], str]) -> TransferOutcome:
        cold, warm = self.call.cold_transfer, self.call.warm_legs
        if cold is None and warm is None:
            return TransferOutcome(False, detail="transfer is not configured")
        try:
            async with asyncio.timeout(self.opt.transfer_timeout_s):
                if warm is not None:
                    return await self._warm(warm, target, summary)
                assert cold is not None
                return await cold(target)
        except TimeoutError:
            return TransferOutcome(
                False, detail=f"no outcome within {self.opt.transfer_timeout_s:g} s"
            )
        except (ValueError, ProviderError) as exc:  # a bad target, a REST failure
            return TransferOutcome(False, detail=str(exc))

    async def _warm(
        self, legs: WarmLegs, target: str, summary: Callable[[], str]
    ) -> TransferOutcome:
        """Call the human, tell them who is calling and what about, then bridge the caller
        to them. The human's leg is hung up on any failure (and on cancellation)."""
        uri = legs.resolve(target)
        # The caller hears ringback while the human is rung and briefed, never dead air.
        self._ringback = asyncio.ensure_future(self.speaker.play_loop(ringback()))
        failed = False
        try:
            outcome = await self._warm_legs(legs, uri, summary)
            failed = not outcome.ok
            return outcome
        finally:
            if not failed:  # bridged, or an error: nothing is said next
                await self.stop_ringback()

    async def _warm_legs(
        self, legs: WarmLegs, uri: str, summary: Callable[[], str]
    ) -> TransferOutcome:
        human = await legs.dial(uri)
        bridged = False
        try:
            if not await self._answered(human):
                if human.ended_at:
                    detail = human.end_reason or "no answer"
                else:  # cancelled by the hang-up below (CANCEL while it rings)
                    detail = f"no answer within {self.opt.warm_ring_timeout_s:g} s"
                return TransferOutcome(False, detail=detail, target=uri)
            if not await speak_on(human.playout, self.speaker.tts, summary()):
                raise TransferError("the human hung up")
            if human.ended_at:
                return TransferOutcome(False, detail="the human hung up", target=uri)
            bridged = await legs.bridge(human, f"transferred to {uri} (warm)")
            if not bridged:
                return TransferOutcome(False, detail="a call ended before the bridge", target=uri)
            return TransferOutcome(True, 200, "bridged (warm)", target=uri, bridged=True)
        finally:
            if not bridged and not human.ended_at:
                legs.hangup(human, "warm transfer abandoned")

    async def _answered(self, human: CallLeg) -> bool:
        """Wait for the human to answer (True) or the call to end or ring too long."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.opt.warm_ring_timeout_s):
                await human.settled()
        return bool(human.answered_at) and not human.ended_at


def warm_summary(records: list[TurnRecord], options: ConversationOptions, from_number: str) -> str:
    """What the human hears first in a warm transfer: the intro, who calls, and the
    caller's last few turns."""
    said = [r.user_text for r in records if r.user_text]
    said = said[-options.warm_summary_turns :] if options.warm_summary_turns else []
    text = options.warm_intro_text
    if from_number:
        text += f" They are calling from {from_number}."
    if said:
        text += " They said: " + "; ".join(said) + "."
    return text + " Connecting you now."
