"""One call's conversation on the asyncio loop: the coordinator of its parts.

Task ownership: `CallSession.run()` owns a TaskGroup with the listener
(`gateway.pipeline.listening`), the keypad listener, the watchdog and, for brains whose
replies can arrive unprompted (an external bot answering later), the pushed-reply player
(`gateway.pipeline.pushed`); the current agent turn (STT final → brain → TTS → playout →
actions, `gateway.pipeline.replies`) is one task that barge-in cancels. Cancelling `run()`
(the call ended) cancels everything.

The call itself is a `CallTransport` (`gateway.pipeline.transport`): this package never
knows whether it is SIP or a WebSocket stream.

Keypad keys (DTMF) are caller input like speech: a key stops the agent (barge-in) and,
alone or collected into an entry as the brain asked (`gateway.pipeline.keypad`), becomes a
caller turn the brain answers (`Brain.respond_keys`). Speech or keys, whichever comes
first: a key drops the speech in progress; once an entry has begun, speech is ignored until
it ends.

What the agent is doing (`CallSession.activity`) is derived from the parts' state and
reported on change (``on_activity``): checked where the floor moves, where a reply or a
speech starts, and on the watchdog's tick (hold and transfers change without an event here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.audio.pcm import FRAME_MS
from gateway.pipeline import clock
from gateway.pipeline.activity import Activity
from gateway.pipeline.keypad import KeypadEntry
from gateway.pipeline.listening import CallerTurn, Listener
from gateway.pipeline.options import ConversationOptions, Prompts
from gateway.pipeline.playout import Speaker
from gateway.pipeline.pushed import PushedReplies, failing
from gateway.pipeline.record import TurnRecord
from gateway.pipeline.replies import Replies
from gateway.pipeline.transfers import Handover
from gateway.pipeline.transport import CallTransport
from gateway.pipeline.turns import TurnDetector
from gateway.policy.transfer import TransferOutcome
from gateway.providers.base import (
    Brain,
    BrainReply,
    KeyInput,
    SttProvider,
    TtsProvider,
)

__all__ = ["CallSession", "ConversationOptions", "Prompts", "TurnRecord"]

log = logging.getLogger(__name__)


class CallSession:
    """The conversation of one call (made and run on its loop, whose clock it reads:
    `gateway.pipeline.clock`)."""

    def __init__(
        self,
        call: CallTransport,
        *,
        stt: SttProvider,
        tts: TtsProvider,
        brain: Brain,
        options: ConversationOptions,
        on_turn: Callable[[TurnRecord], None] | None = None,
        prompts: Prompts | None = None,
        on_activity: Callable[[Activity], None] | None = None,
    ) -> None:
        self.call = call
        self.brain = brain
        self.opt = options
        self.ctx = call.context
        self.speaker = Speaker(call.playout, tts)
        self.speaker.on_done = self._touch
        self.speaker.on_start = self._speech_started
        self.listener = Listener(call.call_id, stt, options)
        self.keypad = KeypadEntry()
        self.pushed = PushedReplies(brain, call.call_id)
        self.handover = Handover(call, self.speaker, options)
        self.replies = Replies(
            call,
            brain,
            options,
            prompts,
            self.speaker,
            self.keypad,
            self.pushed,
            self.handover,
            self.hangup,
            on_turn,
        )
        self.replies.on_done = self._floor_moved
        self.replies.on_start = self._reply_started
        # Set where the floor may have been freed (`_busy`): a reply task ended, a speech
        # was over or cut off, the caller's speech started or ended.
        self._floor_changed = asyncio.Event()
        self._last_activity = clock.now()
        self._no_input_attempts = 0
        self._hanging_up = False
        self._keys_barged = False  # the first key of the entry under way cut the agent off
        self.barge_ins = 0
        self.keys_pressed = 0
        # Told what the agent does whenever that changes (on the loop; never after run()).
        self._on_activity = on_activity
        self._reported: Activity | None = None  # the activity last reported
        self._reply_spoke = False  # the reply task under way began to speak

    @property
    def records(self) -> list[TurnRecord]:
        """The call's agent turns so far."""
        return self.replies.records

    @property
    def transfers(self) -> list[TransferOutcome]:
        """The outcomes of the call's transfers so far."""
        return self.handover.outcomes

    @property
    def detector(self) -> TurnDetector:
        """The caller's turn detector."""
        return self.listener.detector

    # -- life cycle -------------------------------------------------------------------------
    async def run(self) -> None:
        """Converse until cancelled (the call ended)."""
        loop = asyncio.get_running_loop()
        self.call.inbound.bind(loop)
        self.call.keys.bind(loop)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.listener.run(self.call.inbound, self), name="listen")
                tg.create_task(self._keys(), name="keys")
                tg.create_task(self._watchdog(), name="watchdog")
                if self.brain.pushes:
                    tg.create_task(
                        self.pushed.run(self._floor_free, self._play_pushed), name="pushed"
                    )
                self.replies.start(self.replies.greet(), deadline=True)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self._on_activity = None  # the call is over: what its parts do now is no activity
        await self.replies.close()
        with contextlib.suppress(Exception):
            await self.listener.drop()
        self.call.playout.clear()
        try:
            self.brain.forget(self.ctx.call_id)
        except Exception:
            log.exception("call %s: brain.forget failed", self.call.call_id)

    def hangup(self, reason: str) -> None:
        """Ask the transport to end the call (once)."""
        if self._hanging_up:
            return
        self._hanging_up = True
        log.info("call %s: hanging up (%s)", self.call.call_id, reason)
        self.call.hangup(reason)

    def warm_summary(self) -> str:
        """What the human hears first in a warm transfer."""
        return self.replies.warm_summary()

    # -- the floor: who speaks (the listener's `Floor`) --------------------------------------
    def agent_speaking(self) -> bool:
        """True while agent audio is being produced or still queued for the wire."""
        return self.speaker.busy()

    def handed_over(self) -> bool:
        return self.handover.underway or self.handover.bridged

    def keys_underway(self) -> bool:
        return self.keypad.underway

    def expected(self) -> str | None:
        return self.keypad.expected

    def heard(self, at: float) -> None:
        self._last_activity = at
        self._floor_moved()

    def caller_started(self) -> bool:
        self._no_input_attempts = 0
        self.replies.drop_prepared()
        if self.barge_in_if_speaking():
            return True
        # The caller went on talking before we answered: fold into one turn.
        self.replies.cancel()
        return False

    def barge_in_if_speaking(self) -> bool:
        if not self.agent_speaking():
            return False
        self._barge_in()
        return True

    def caller_turn(self, turn: CallerTurn) -> None:
        """Start the reply to the caller turn that just ended (`wait_ms` after its speech)."""
        rec = TurnRecord(
            call_id=self.call.call_id,
            turn=0,
            kind="reply",
            speech_ms=turn.speech_ms,
            eot_wait_ms=turn.wait_ms,
            barge_in=turn.barge_in,
        )
        end_of_speech = turn.at - turn.wait_ms / 1000.0
        self.replies.start(
            self.replies.respond(turn.parts, turn.stt, rec, end_of_speech, turn.at),
            deadline=True,
        )

    def caller_paused(self, text: str) -> None:
        """Generate the reply to `text` ahead, unless someone else has the floor."""
        if not (self.handed_over() or self.keys_underway() or self.agent_speaking()):
            self.replies.prepare(text)

    def caller_went_on(self) -> None:
        self.replies.drop_prepared()

    def _barge_in(self) -> None:
        dropped = self.speaker.stop()
        self._floor_moved()
        self.barge_ins += 1
        self.replies.cancel()
        log.info(
            "call %s: barge-in, dropped %d ms of agent audio",
            self.call.call_id,
            dropped * FRAME_MS,
        )

    def _touch(self) -> None:
        self._last_activity = clock.now()
        self._floor_moved()

    def _floor_moved(self) -> None:
        self._floor_changed.set()
        self._check_activity()

    def activity(self) -> Activity:
        """What the agent is doing now (the first that holds, in this order): transferring,
        on hold, speaking (also while the reply that spoke runs its actions), thinking (a
        reply on its way, nothing of it said yet), else listening."""
        if self.handed_over():
            return "transferring"
        if self.call.on_hold:
            return "on-hold"
        replying = self.replies.pending()
        if self.agent_speaking() or (replying and self._reply_spoke):
            return "speaking"
        return "thinking" if replying else "listening"

    def _reply_started(self) -> None:
        self._reply_spoke = False
        self._check_activity()

    def _speech_started(self) -> None:
        self._reply_spoke = True
        self._check_activity()

    def _check_activity(self) -> None:
        """Report the activity if it changed since the last report."""
        if self._on_activity is None:
            return
        now = self.activity()
        if now != self._reported:
            self._reported = now
            self._on_activity(now)

    async def _floor_free(self) -> None:
        """Return once nobody has the floor (`_busy` is False), re-checked where it may
        have been freed (`_floor_changed`). Audio left queued with nobody speaking (a speech
        that failed half-way) plays out without an event of its own: the wait then ends at
        the latest when that audio has had its time."""
        while self._busy():
            self._floor_changed.clear()
            queued = len(self.call.playout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(queued * FRAME_MS / 1000.0 if queued else None):
                    await self._floor_changed.wait()

    def _busy(self) -> bool:
        """The caller or the agent has the floor (or a reply is being prepared)."""
        return (
            self._hanging_up
            or self.keypad.underway
            or self.handed_over()
            or self.agent_speaking()
            or self.listener.in_speech
            or self.replies.pending()
        )

    # -- keypad -----------------------------------------------------------------------------
    async def _keys(self) -> None:
        """Take the caller's keys; end a keypad entry when its inter-digit timeout passes."""
        keys = self.call.keys
        while True:
            due = self.keypad.deadline
            if due is not None:
                try:
                    async with asyncio.timeout_at(due):
                        key, method = await keys.get()
                except TimeoutError:
                    self._submit_keys(self.keypad.expire())
                    continue
            else:
                key, method = await keys.get()
            await self._on_key(key, method)

    async def _on_key(self, key: str, method: str) -> None:
        """One key: it stops the agent and drops speech in progress, then is delivered
        alone or added to the keypad entry the brain asked for."""
        now = clock.now()
        self.keys_pressed += 1
        self._last_activity = now
        self._no_input_attempts = 0
        log.info("call %s: caller pressed %s (%s)", self.call.call_id, key, method)
        if self.keypad.swallows(key, now):
            return  # the terminator of the entry that just ended at max_digits
        first = not self.keypad.underway
        if first:
            self._keys_barged = self.agent_speaking()
        if self.agent_speaking():
            self._barge_in()
        elif first:
            self.replies.cancel()  # a reply still being prepared: the key supersedes it
        await self.listener.drop_for_keys()
        self.replies.drop_prepared()
        self.replies.carry_text = ""
        entry = self.keypad.press(key, now)
        if entry is not None:
            self._submit_keys(entry)

    def _submit_keys(self, keys: KeyInput) -> None:
        now = clock.now()
        rec = TurnRecord(
            call_id=self.call.call_id,
            turn=0,
            kind="keys",
            user_text=f"[keys] {keys.digits}"
            + ("" if keys.ended_by == "key" else f" ({keys.ended_by})"),
            barge_in=self._keys_barged,
        )
        self._keys_barged = False
        self.replies.start(self.replies.respond_keys(keys, rec, now), deadline=True)

    # -- pushed replies, no input -----------------------------------------------------------
    def _play_pushed(
        self, reply: BrainReply | None, error: Exception | None, rec: TurnRecord
    ) -> None:
        self._last_activity = clock.now()
        if error is not None:
            self.replies.start(failing(error))
            return
        assert reply is not None
        now = clock.now()
        self.replies.start(self.replies.deliver(reply, rec, now, now))

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self._check_activity()  # hold and transfers move without an event
            if self.call.on_hold:
                # The caller put us on hold: no "are you there?" until they are back.
                self._last_activity = clock.now()
                continue
            if self._busy():
                continue
            now = clock.now()
            if self.pushed.waiting(now):
                continue  # a pushed reply is owed: silence is expected until it is due
            overdue = self.pushed.overdue(now)
            if overdue is not None:
                self.replies.start(failing(overdue))
                continue
            if now - self._last_activity < self.opt.no_input_timeout_s:
                continue
            self._no_input_attempts += 1
            reply = await self.brain.no_input(self.ctx, self._no_input_attempts)
            rec = TurnRecord(
                call_id=self.call.call_id,
                turn=0,
                kind="reprompt" if "hangup" not in reply.actions else "goodbye",
            )
            self._last_activity = clock.now()
            self.replies.start(self.replies.deliver(reply, rec, clock.now(), clock.now()))
