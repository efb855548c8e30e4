"""One call's conversation on the asyncio loop: listen, detect turns, answer, barge-in.

Task ownership: `CallSession.run()` owns a TaskGroup with the listener, the keypad
listener, the watchdog and,
for brains whose replies can arrive unprompted (an external bot answering later), the
pushed-reply player; the current agent turn (STT final → brain → TTS → playout → actions)
is one task, `_reply`, that barge-in cancels. Cancelling `run()` (the call ended) cancels
everything.

Keypad keys (DTMF) are caller input like speech: a key stops the agent (barge-in) and,
alone or collected into an entry as the brain asked (`BrainReply.collect`: min/max digits,
terminator, inter-digit timeout), becomes a caller turn the brain answers
(`Brain.respond_keys`). Speech or keys, whichever comes first: a key drops the speech in
progress; once an entry has begun, speech is ignored until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from gateway.audio.pcm import FRAME_MS, SAMPLE_RATE
from gateway.pipeline.transport import CallLeg, CallTransport, WarmLegs
from gateway.pipeline.turns import TurnDetector
from gateway.policy.transfer import TransferError, TransferOutcome, transfer_target
from gateway.providers.base import (
    Brain,
    BrainReply,
    DigitCollect,
    KeyInput,
    ProviderError,
    ReplyStream,
    SttProvider,
    SttStream,
    TtsProvider,
)
from gateway.providers.textchunks import SentenceCutter

log = logging.getLogger(__name__)


@dataclass
class ConversationOptions:
    """Turn-taking knobs (from settings)."""

    aggressiveness: int = 2
    min_speech_ms: int = 120
    end_of_turn_ms: int = 400
    barge_in_min_speech_ms: int = 80
    preroll_ms: int = 200
    early_final_ms: int = 200
    max_utterance_ms: int = 20000
    no_input_timeout_s: float = 8.0
    min_unrecognised_ms: int = 400
    hangup_delay_s: float = 0.3
    max_failures: int = 3  # consecutive failed turns before the call is ended politely
    # A reply (or greeting) with no audio this long after it was due counts as failed: the
    # apology plays, so a slow or dead vendor never leaves the caller in silence. None: no
    # limit (the offline pipeline, whose delays are CPU, not vendors).
    reply_deadline_s: float | None = None
    # Transfer (a "transfer[:target]" action): the longest wait for its outcome, and what
    # the agent says when it fails before the conversation carries on.
    transfer_timeout_s: float = 30.0
    transfer_failed_text: str = "Sorry, I couldn't transfer you right now. How else can I help?"
    # Warm transfer: said to the human when they answer, before "They said: ..." (the
    # caller's last few turns) and the connection.
    warm_intro_text: str = "Hello, this is the virtual agent. I have a caller on the line."
    warm_summary_turns: int = 3
    warm_ring_timeout_s: float = 25.0  # the human's phone rings this long at most

    def turn_detector(self, min_speech_ms: int | None = None) -> TurnDetector:
        """A turn detector with these options (`min_speech_ms` overrides its option)."""
        return TurnDetector(
            aggressiveness=self.aggressiveness,
            min_speech_ms=self.min_speech_ms if min_speech_ms is None else min_speech_ms,
            end_of_turn_ms=self.end_of_turn_ms,
            preroll_ms=self.preroll_ms,
            max_utterance_ms=self.max_utterance_ms,
        )


@dataclass(frozen=True)
class Prompts:
    """Audio rendered at start-up, so it plays even when every vendor is down: the
    apology after a failed turn, and the goodbye after `max_failures` in a row."""

    apology_text: str
    apology: bytes  # 8 kHz 16-bit mono PCM
    goodbye_text: str
    goodbye: bytes


@dataclass
class TurnRecord:
    """Timings of one agent turn, in milliseconds unless named otherwise."""

    call_id: str
    turn: int
    # greeting | reply | keys | pushed | reprompt | goodbye | apology | failure-goodbye
    # | transfer-failed
    kind: str
    user_text: str = ""
    agent_text: str = ""
    intent: str | None = None
    speech_ms: int = 0
    eot_wait_ms: float = 0.0
    stt_ms: float = 0.0
    brain_ms: float = 0.0
    tts_first_ms: float = 0.0
    playout_ms: float = 0.0
    total_ms: float = 0.0
    # CLOCK_MONOTONIC seconds (system-wide on Linux: comparable across local processes)
    end_of_speech_at: float = 0.0
    first_audio_at: float = 0.0
    max_gap_ms: float = 0.0  # longest pause between agent frames on the wire (20 = none)
    interrupted: bool = False  # this agent turn was cut off by the caller
    barge_in: bool = False  # the caller's turn began while the agent was speaking
    actions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """Plain dict (for logs and storage)."""
        return asdict(self)


class CallSession:
    """The conversation of one call."""

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
    ) -> None:
        self.call = call
        self._transferring = False
        self._bridged = False  # warm-transferred: the caller talks with the human now
        self.transfers: list[TransferOutcome] = []
        self.prompts = prompts
        self._failures = 0  # consecutive failed agent turns
        self.stt = stt
        self.tts = tts
        self.brain = brain
        self.opt = options
        self._on_turn = on_turn
        self.ctx = call.context
        self.detector = options.turn_detector()
        self._stt: SttStream | None = None
        # Transcripts of earlier pieces of the turn in progress, finalised early (in pauses).
        self._parts: list[asyncio.Future[str]] = []
        self._reply: asyncio.Task[None] | None = None
        self._deadline: asyncio.Timeout | None = None  # of the reply being prepared
        self._speaking = False
        self._carry_text = ""
        self._last_activity = time.monotonic()
        self._no_input_attempts = 0
        self._turns = 0
        self._turn_barged = False
        # The recogniser ended a turn while the detector stayed in speech (a noisy line).
        self._stt_ended = False
        self._hanging_up = False
        # Monotonic time by which the brain promised a pushed reply (BrainReply.pending_s).
        self._push_due: float | None = None
        self.records: list[TurnRecord] = []
        self.barge_ins = 0
        self._last_gap_ms = 0.0
        # Keypad entry: what the brain asked to collect, the keys so far, when the entry
        # times out, and whether its first key cut the agent off.
        self._collect: DigitCollect | None = None
        self._keys_buf = ""
        self._keys_due = 0.0
        self._keys_barged = False
        # The caller's utterance in progress lost to a key: ignore it until it ends.
        self._ignore_speech = False
        # After an entry ended at max_digits: its terminator, pressed right after out of
        # habit ("123456#"), is swallowed until this monotonic time.
        self._late_terminator: tuple[str, float] | None = None
        self.keys_pressed = 0

    # -- life cycle -------------------------------------------------------------------------
    async def run(self) -> None:
        """Converse until cancelled (the call ended)."""
        loop = asyncio.get_running_loop()
        self.call.inbound.bind(loop)
        self.call.keys.bind(loop)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._listen(), name="listen")
                tg.create_task(self._keys(), name="keys")
                tg.create_task(self._watchdog(), name="watchdog")
                if self.brain.pushes:
                    tg.create_task(self._play_pushed(), name="pushed")
                self._start_reply(self._greet(), deadline=True)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        reply, self._reply = self._reply, None
        if reply is not None and not reply.done():
            reply.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reply
        with contextlib.suppress(Exception):
            await self._drop_stt()
        self.call.playout.clear()
        try:
            self.brain.forget(self.ctx.call_id)
        except Exception:
            log.exception("call %s: brain.forget failed", self.call.call_id)

    # -- listening --------------------------------------------------------------------------
    def agent_speaking(self) -> bool:
        """True while agent audio is being produced or still queued for the wire."""
        return self._speaking or len(self.call.playout) > 0

    async def _listen(self) -> None:
        inbound = self.call.inbound
        det = self.detector
        while True:
            frame = await inbound.get()
            det.min_speech_ms = (
                self.opt.barge_in_min_speech_ms if self.agent_speaking() else self.opt.min_speech_ms
            )
            event = det.push(frame)
            if self._transferring or self._bridged:
                # The caller is being handed over (or talks with the human now): their
                # words start no turn (and do not cancel the transfer in progress).
                continue
            if event is None:
                if det.in_speech:
                    await self._feed_speech(frame)
                    self._check_stt_end()
                continue
            now = time.monotonic()
            self._last_activity = now
            if event.kind == "start" and self._keys_buf:
                # A keypad entry is under way: keys came first, this speech is ignored.
                self._ignore_speech = True
                continue
            if self._ignore_speech:
                self._ignore_speech = event.kind == "start"
                continue
            if event.kind == "start":
                self._stt_ended = False
                self._no_input_attempts = 0
                self._turn_barged = self.agent_speaking()
                if self._turn_barged:
                    self._barge_in()
                elif self._reply is not None and not self._reply.done():
                    # The caller went on talking before we answered: fold into one turn.
                    self._reply.cancel()
                await self._drop_stt()
                self._stt = await self.stt.open_stream()
                await self._stt.feed(event.audio)
            else:
                stt, self._stt = self._stt, None
                parts, self._parts = self._parts, []
                if self._stt_ended:
                    # The recogniser ended this run's last turn: what came after is a turn
                    # only if it heard words in it, else it was the noise.
                    self._stt_ended = False
                    if stt is not None and not stt.heard_words():
                        await stt.cancel()
                        continue
                if stt is None and not parts:
                    continue
                self._answer(
                    stt,
                    parts,
                    speech_ms=event.speech_ms,
                    wait_ms=float(event.trailing_silence_ms),
                    now=now,
                    barge_in=self._turn_barged,
                )

    def _check_stt_end(self) -> None:
        """End the turn on the recogniser's end of utterance (Deepgram's endpointing or
        UtteranceEnd), which it reports only after words.  The stream in progress exists
        only while the local VAD hears sound (from `early_final_ms` of silence on the local
        path ends the turn), so this is the noisy line: without it the turn would last until
        the noise stops or `max_utterance_ms`.  The detector stays in speech (a reset would
        start a new turn on the noise at once); the next words are a new turn, and what the
        run ends with is answered only if the recogniser heard words in it."""
        stt = self._stt
        wait_ms = None if stt is None else stt.utterance_end()
        if stt is None or wait_ms is None:
            return
        self._stt = None
        parts, self._parts = self._parts, []
        now = time.monotonic()
        self._last_activity = now
        barge_in = self._turn_barged
        if self._stt_ended:  # a further turn on the noisy line
            barge_in = self.agent_speaking()
            if barge_in:
                self._barge_in()
        self._stt_ended = True
        speech_ms = self.detector.split()
        log.debug("call %s: the recogniser ended the turn", self.call.call_id)
        self._answer(stt, parts, speech_ms=speech_ms, wait_ms=wait_ms, now=now, barge_in=barge_in)

    def _answer(
        self,
        stt: SttStream | None,
        parts: list[asyncio.Future[str]],
        *,
        speech_ms: int,
        wait_ms: float,
        now: float,
        barge_in: bool,
    ) -> None:
        """Start the reply to the caller turn that just ended (`wait_ms` after its speech)."""
        rec = TurnRecord(
            call_id=self.call.call_id,
            turn=0,
            kind="reply",
            speech_ms=speech_ms,
            eot_wait_ms=wait_ms,
            barge_in=barge_in,
        )
        end_of_speech = now - wait_ms / 1000.0
        self._start_reply(self._respond(parts, stt, rec, end_of_speech, now), deadline=True)

    async def _feed_speech(self, frame: bytes) -> None:
        """Stream a frame of the turn in progress to STT; finalise early in a pause.

        At `early_final_ms` of trailing silence the recogniser finalises what it has, so the
        transcript is ready by the time the pause becomes an end of turn. If the caller goes
        on, the rest is recognised as a new piece and the pieces are joined.  After the
        recogniser ended a turn (`_check_stt_end`) the rest of the run is one stream, never
        finalised early: the recogniser is what watches it.
        """
        if self._ignore_speech:
            return
        trailing = self.detector.trailing_silence_ms
        early = self.opt.early_final_ms
        if self._stt is not None:
            await self._stt.feed(frame)
            if early and trailing >= early and not self._stt_ended:
                stt, self._stt = self._stt, None
                self._parts.append(asyncio.ensure_future(stt.finish()))
        elif trailing == 0 or self._stt_ended:  # speech resumed, or after the recogniser's end
            self._stt = await self.stt.open_stream()
            await self._stt.feed(frame)

    async def _drop_stt(self) -> None:
        """Abandon any recognition in progress (a new turn starts)."""
        stt, self._stt = self._stt, None
        parts, self._parts = self._parts, []
        if stt is not None:
            await stt.cancel()
        for part in parts:
            part.cancel()

    def _barge_in(self) -> None:
        dropped = self.call.playout.clear()
        self.barge_ins += 1
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        self._speaking = False
        log.info(
            "call %s: barge-in, dropped %d ms of agent audio",
            self.call.call_id,
            dropped * FRAME_MS,
        )

    def _start_reply(self, coro: Awaitable[None], deadline: bool = False) -> None:
        old = self._reply
        if old is not None and not old.done():
            old.cancel()
        limit = self.opt.reply_deadline_s if deadline else None
        self._reply = asyncio.ensure_future(self._guard(coro, limit))

    async def _guard(self, coro: Awaitable[None], limit: float | None = None) -> None:
        deadline: asyncio.Timeout | None = None
        try:
            if limit is None:
                await coro
            else:
                # Lifted by `_speak` when the first audio is queued.
                async with asyncio.timeout(limit) as deadline:
                    self._deadline = deadline
                    await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._deadline = None
            late = deadline is not None and deadline.expired()
            await self._failed(exc, f"no agent audio within {limit:g} s" if late else "")
        finally:
            self._deadline = None

    async def _failed(self, exc: BaseException, why: str) -> None:
        """A reply failed: count it, log it, and say the apology (or the goodbye)."""
        self._failures += 1
        self._speaking = False
        log.error(
            "call %s: agent turn failed (%d in a row): %s",
            self.call.call_id,
            self._failures,
            why or (exc if isinstance(exc, ProviderError) else repr(exc)),
            exc_info=not why and not isinstance(exc, ProviderError),
        )
        if self.prompts is not None:
            await self._fallback()

    async def _fallback(self) -> None:
        """After a failed turn: the apology, or after too many the goodbye and a hang-up.
        Runs as the reply task, so barge-in cuts it like any agent turn."""
        assert self.prompts is not None
        final = self._failures >= self.opt.max_failures
        text = self.prompts.goodbye_text if final else self.prompts.apology_text
        pcm = self.prompts.goodbye if final else self.prompts.apology
        self._turns += 1
        rec = TurnRecord(
            call_id=self.call.call_id,
            turn=self._turns,
            kind="failure-goodbye" if final else "apology",
            agent_text=text,
            actions=["hangup"] if final else [],
        )
        await self._speak_turn(rec, time.monotonic(), self._speak_pcm(pcm))
        if final:
            await asyncio.sleep(self.opt.hangup_delay_s)
            self.hangup("vendor failures")

    # -- agent turns ------------------------------------------------------------------------
    async def _greet(self) -> None:
        rec = TurnRecord(call_id=self.call.call_id, turn=0, kind="greeting")
        t0 = time.monotonic()
        reply = await self.brain.greeting(self.ctx)
        rec.brain_ms = _ms(time.monotonic() - t0)
        start = self.call.answered_at or t0
        await self._deliver(reply, rec, start, time.monotonic())

    async def _respond(
        self,
        parts: list[asyncio.Future[str]],
        stt: SttStream | None,
        rec: TurnRecord,
        end_of_speech: float,
        detected_at: float,
    ) -> None:
        try:
            texts = [await part for part in parts]
            if stt is not None:
                texts.append(await stt.finish())
        except asyncio.CancelledError:
            for part in parts:
                part.cancel()
            if stt is not None:
                await stt.cancel()
            raise
        text = " ".join(t for t in texts if t)
        t_stt = time.monotonic()
        rec.stt_ms = _ms(t_stt - detected_at)
        if self._carry_text:
            text = f"{self._carry_text} {text}".strip()
        # A short sound nobody could transcribe is ignored, unless it cut the agent off:
        # then silence would be dead air, and the brain's fallback asks again.
        if not text and rec.speech_ms < self.opt.min_unrecognised_ms and not rec.barge_in:
            log.debug(
                "call %s: ignored %d ms of unrecognised sound",
                self.call.call_id,
                rec.speech_ms,
            )
            return
        # Speech came before any key: the keypad entry asked for is over.
        self._collect = None
        # Kept until the brain has answered: if the caller talks on first, the next turn
        # includes these words.
        self._carry_text = text
        rec.user_text = text
        if self.brain.streams:
            await self._deliver_stream(
                self.brain.respond_stream(text, self.ctx), rec, end_of_speech, t_stt
            )
            return
        try:
            reply = await self.brain.respond(text, self.ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._carry_text = ""
            raise
        t_brain = time.monotonic()
        rec.brain_ms = _ms(t_brain - t_stt)
        self._carry_text = ""
        await self._deliver(reply, rec, end_of_speech, t_brain)

    async def _deliver_stream(
        self, stream: ReplyStream, rec: TurnRecord, t_ref: float, t_stt: float
    ) -> None:
        """Speak a streamed reply sentence by sentence while the brain is still generating,
        then run its actions.  Cancelling (barge-in) stops the brain's stream too."""
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        first_token_at = 0.0
        first_piece_at = 0.0

        async def produce() -> None:
            nonlocal first_token_at, first_piece_at
            cutter = SentenceCutter()
            try:
                async for delta in stream:
                    if not first_token_at and delta:
                        first_token_at = time.monotonic()
                    for piece in cutter.push(delta):
                        first_piece_at = first_piece_at or time.monotonic()
                        pieces.put_nowait(piece)
                for piece in cutter.flush():
                    first_piece_at = first_piece_at or time.monotonic()
                    pieces.put_nowait(piece)
            finally:
                pieces.put_nowait(None)

        async def texts() -> AsyncIterator[str]:
            while (piece := await pieces.get()) is not None:
                yield piece
            if producer.done() and not producer.cancelled():
                producer.result()  # the brain's error, if it failed

        self._turns += 1
        rec.turn = self._turns
        producer = asyncio.ensure_future(produce())
        try:
            first_chunk_at, first_wire_at = await self._speak(texts())
            await producer
        except BaseException as exc:
            producer.cancel()
            with contextlib.suppress(BaseException):
                await producer
            await stream.aclose()
            self._carry_text = ""
            if isinstance(exc, asyncio.CancelledError):
                rec.interrupted = True
                rec.first_audio_at = round(self.call.playout.marked_at, 4)
                self._record(rec)
            raise
        self._carry_text = ""
        reply = stream.reply or BrainReply("")
        rec.agent_text = reply.text
        rec.intent = reply.intent
        rec.actions = _actions_of(reply)
        self._arm_collect(reply, rec)
        if first_token_at:
            rec.brain_ms = _ms(first_token_at - t_stt)
        if first_chunk_at and first_piece_at:
            rec.tts_first_ms = _ms(first_chunk_at - first_piece_at)
        self._finish_record(rec, t_ref, first_chunk_at, first_wire_at)
        await self._run_actions(reply)

    async def _deliver(
        self, reply: BrainReply, rec: TurnRecord, t_ref: float, t_brain: float
    ) -> None:
        """Speak a reply, record its timings, then run its actions."""
        self._turns += 1
        rec.turn = self._turns
        rec.agent_text = reply.text
        rec.intent = reply.intent
        rec.actions = _actions_of(reply)
        # Armed before the reply is spoken: the caller may key ahead (and cut it short).
        self._arm_collect(reply, rec)
        audio = getattr(reply, "audio", b"")  # a brain that answers with recorded audio
        if audio:
            speech = self._speak_pcm(audio)
        elif reply.text:
            speech = self._speak(reply.text)
        else:  # nothing to say yet (a pending reply)
            speech = _said_nothing()
        await self._speak_turn(rec, t_ref, speech, tts_from=t_brain)
        await self._run_actions(reply)

    async def _speak_turn(
        self,
        rec: TurnRecord,
        t_ref: float,
        speech: Awaitable[tuple[float, float]],
        tts_from: float = 0.0,
    ) -> None:
        """Play a turn's `speech` and record the turn: with its timings once it played out
        (TTS first audio counted from `tts_from` when given), or as interrupted when the
        caller cut it off, so no turn the caller heard is missing from the record."""
        try:
            first_chunk_at, first_wire_at = await speech
        except asyncio.CancelledError:
            rec.interrupted = True
            rec.first_audio_at = round(self.call.playout.marked_at, 4)
            self._record(rec)
            raise
        if first_chunk_at and tts_from:
            rec.tts_first_ms = _ms(first_chunk_at - tts_from)
        self._finish_record(rec, t_ref, first_chunk_at, first_wire_at)

    def _finish_record(
        self, rec: TurnRecord, t_ref: float, first_chunk_at: float, first_wire_at: float
    ) -> None:
        rec.max_gap_ms = self._last_gap_ms
        rec.end_of_speech_at = round(t_ref, 4)
        rec.first_audio_at = round(first_wire_at, 4)
        if first_wire_at:
            rec.playout_ms = _ms(first_wire_at - first_chunk_at)
            rec.total_ms = _ms(first_wire_at - t_ref)
        self._record(rec)

    def _arm_collect(self, reply: BrainReply, rec: TurnRecord) -> None:
        """Take the reply's keypad-entry request; a re-prompt without one keeps the
        entry asked for before (the caller is reminded, the question stands)."""
        if reply.collect is not None or rec.kind != "reprompt":
            self._collect = reply.collect

    async def _run_actions(self, reply: BrainReply) -> None:
        self._failures = 0
        if reply.send_dtmf:
            log.info("call %s: sending DTMF %s", self.call.call_id, reply.send_dtmf)
            self.call.send_dtmf(reply.send_dtmf)
        if reply.pending_s is not None:
            self._push_due = time.monotonic() + reply.pending_s
        elif reply.text or getattr(reply, "audio", None):
            self._push_due = None  # answered: nothing is owed any more
        for action in reply.actions:
            target = transfer_target(action)
            if target is not None:
                # Done here whatever the outcome: a transfer that worked ends the call, one
                # that failed was apologised for and the conversation carries on (a
                # "hangup" that came with it is not run).
                await self._transfer(target)
                return
        if "hangup" in reply.actions:
            await asyncio.sleep(self.opt.hangup_delay_s)
            self.hangup("agent hangup")

    async def _transfer(self, target: str) -> None:
        """Hand the caller to a human (after the handover line was spoken). Success ends
        the call ("transferred to <uri>"); failure says `transfer_failed_text` and the
        conversation goes on."""
        sip_call_id = self.call.call_id
        self._transferring = True
        try:
            cold, warm = self.call.cold_transfer, self.call.warm_legs
            if cold is None and warm is None:
                outcome = TransferOutcome(False, detail="transfer is not configured")
            else:
                try:
                    async with asyncio.timeout(self.opt.transfer_timeout_s):
                        if warm is not None:
                            outcome = await self._warm_transfer(warm, target)
                        else:
                            assert cold is not None
                            outcome = await cold(target)
                except TimeoutError:
                    outcome = TransferOutcome(
                        False, detail=f"no outcome within {self.opt.transfer_timeout_s:g} s"
                    )
                except (ValueError, ProviderError) as exc:  # a bad target, a REST failure
                    outcome = TransferOutcome(False, detail=str(exc))
            self.transfers.append(outcome)
            where = outcome.target or target or "the default target"
            if outcome.ok:
                log.info("call %s: transferred to %s (%s)", sip_call_id, where, outcome.detail)
                if outcome.bridged:
                    # The agent's part is over; the call goes on until either side ends it.
                    self._bridged = True
                    return
                if outcome.hangup_after_s:
                    # The far end normally ends our leg itself; this bounds the wait.
                    await asyncio.sleep(outcome.hangup_after_s)
                self.hangup(f"transferred to {where}")
                return
            log.warning("call %s: transfer to %s failed: %s", sip_call_id, where, outcome.detail)
            try:
                self.brain.observe(
                    self.ctx,
                    f"The transfer to {where} failed ({outcome.detail}). The caller is still on"
                    " the line and has been told; carry on helping them.",
                )
            except Exception:
                log.exception("call %s: brain.observe failed", sip_call_id)
        finally:
            self._transferring = False
        self._turns += 1
        rec = TurnRecord(
            call_id=sip_call_id,
            turn=self._turns,
            kind="transfer-failed",
            agent_text=self.opt.transfer_failed_text,
            intent="transfer_failed",
        )
        t0 = time.monotonic()
        await self._speak_turn(rec, t0, self._speak(self.opt.transfer_failed_text), tts_from=t0)

    async def _warm_transfer(self, legs: WarmLegs, target: str) -> TransferOutcome:
        """Call the human, tell them who is calling and what about, then bridge the caller
        to them. The human's leg is hung up on any failure (and on cancellation)."""
        uri = legs.resolve(target)
        # The caller hears ringback while the human is rung and briefed, never dead air.
        hold = asyncio.ensure_future(self._play_loop(_ringback()))
        try:
            return await self._warm_legs(legs, uri)
        finally:
            hold.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hold
            self.call.playout.clear()

    async def _play_loop(self, pcm: bytes) -> None:
        """Play `pcm` to the caller over and over until cancelled."""
        while True:
            await self.call.playout.capture(pcm)

    async def _warm_legs(self, legs: WarmLegs, uri: str) -> TransferOutcome:
        human = await legs.dial(uri)
        bridged = False
        try:
            ring_until = time.monotonic() + self.opt.warm_ring_timeout_s
            while not human.answered_at and not human.ended_at:
                if time.monotonic() >= ring_until:
                    # Cancelled by the hang-up below (CANCEL while it rings).
                    detail = f"no answer within {self.opt.warm_ring_timeout_s:g} s"
                    return TransferOutcome(False, detail=detail, target=uri)
                await asyncio.sleep(FRAME_MS / 1000.0)
            if human.ended_at:
                return TransferOutcome(False, detail=human.end_reason or "no answer", target=uri)
            await self._speak_to(human, self._warm_summary())
            if human.ended_at:
                return TransferOutcome(False, detail="the human hung up", target=uri)
            bridged = await legs.bridge(human, f"transferred to {uri} (warm)")
            if not bridged:
                return TransferOutcome(False, detail="a call ended before the bridge", target=uri)
            return TransferOutcome(True, 200, "bridged (warm)", target=uri, bridged=True)
        finally:
            if not bridged and not human.ended_at:
                legs.hangup(human, "warm transfer abandoned")

    def _warm_summary(self) -> str:
        said = [r.user_text for r in self.records if r.user_text]
        said = said[-self.opt.warm_summary_turns :] if self.opt.warm_summary_turns else []
        text = self.opt.warm_intro_text
        if self.ctx.from_number:
            text += f" They are calling from {self.ctx.from_number}."
        if said:
            text += " They said: " + "; ".join(said) + "."
        return text + " Connecting you now."

    async def _speak_to(self, leg: CallLeg, text: str) -> None:
        """Speak `text` on another call (the human's leg) and wait until it has played."""
        playout = leg.playout
        chunks = self.tts.synthesize(text)
        try:
            async for pcm in chunks:
                if not await playout.capture(pcm):
                    raise TransferError("the human hung up")
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        await playout.played_out()

    def _record(self, rec: TurnRecord) -> None:
        self.records.append(rec)
        if self._on_turn is not None:
            self._on_turn(rec)

    async def _speak_pcm(self, pcm: bytes) -> tuple[float, float]:
        """Play ready-made audio like a reply (barge-in, timings, gap measurement)."""

        async def chunks(_: str) -> AsyncIterator[bytes]:
            yield pcm

        return await self._speak(" ", synthesize=chunks)

    async def _speak(
        self,
        text: str | AsyncIterator[str],
        synthesize: Callable[[str], AsyncIterator[bytes]] | None = None,
    ) -> tuple[float, float]:
        """Stream TTS of `text` (or of each piece, in order, as the pieces arrive) into the
        playout ring; return (first chunk time, first on-wire time)."""
        playout = self.call.playout
        first_chunk_at = 0.0
        first_wire_at = 0.0
        try:
            async for piece in _pieces(text):
                if not self._speaking:
                    # Speaking from the first piece on (a streamed reply may take a while
                    # to start; until then the caller's speech is a new turn, not a
                    # barge-in).  The ring is empty: the next frame out is this reply's.
                    self._speaking = True
                    playout.mark()
                chunks = (synthesize or self.tts.synthesize)(piece)
                try:
                    async for pcm in chunks:
                        if not first_chunk_at:
                            first_chunk_at = time.monotonic()
                            playout.max_gap = 0.0
                            if self._deadline is not None:
                                self._deadline.reschedule(None)  # audio is flowing
                        await playout.capture(pcm)
                finally:
                    # Stop the synthesis now, not when the generator is garbage-collected.
                    aclose = getattr(chunks, "aclose", None)
                    if aclose is not None:
                        await aclose()
            # Let the queued audio play out; barge-in cancels us here too.
            await playout.played_out()
            first_wire_at = playout.marked_at if first_chunk_at else 0.0
            self._last_gap_ms = _ms(playout.max_gap)
        finally:
            self._speaking = False
            self._last_activity = time.monotonic()
        return first_chunk_at, first_wire_at

    # -- keypad -----------------------------------------------------------------------------
    async def _keys(self) -> None:
        """Take the caller's keys; end a keypad entry when its inter-digit timeout passes."""
        queue = self.call.keys
        while True:
            if self._keys_buf and self._collect is not None:
                try:
                    async with asyncio.timeout_at(self._loop_time(self._keys_due)):
                        key, method = await queue.get()
                except TimeoutError:
                    self._end_entry("timeout")
                    continue
            else:
                key, method = await queue.get()
            await self._on_key(key, method)

    def _loop_time(self, monotonic_at: float) -> float:
        loop = asyncio.get_running_loop()
        return loop.time() + (monotonic_at - time.monotonic())

    async def _on_key(self, key: str, method: str) -> None:
        """One key: it stops the agent and drops speech in progress, then is delivered
        alone or added to the keypad entry the brain asked for."""
        now = time.monotonic()
        self.keys_pressed += 1
        self._last_activity = now
        self._no_input_attempts = 0
        log.info("call %s: caller pressed %s (%s)", self.call.call_id, key, method)
        late, self._late_terminator = self._late_terminator, None
        if late is not None and key == late[0] and now < late[1]:
            return  # the terminator of the entry that just ended at max_digits
        first = not self._keys_buf
        if first:
            self._keys_barged = self.agent_speaking()
        if self.agent_speaking():
            self._barge_in()
        elif first and self._reply is not None and not self._reply.done():
            self._reply.cancel()  # a reply still being prepared: the key supersedes it
        if self._stt is not None or self._parts or self.detector.in_speech:
            # Keys came first: the caller's words in progress are dropped.
            await self._drop_stt()
            self._ignore_speech = self.detector.in_speech
        self._carry_text = ""
        spec = self._collect
        if spec is None:
            self._submit_keys(KeyInput(key, "key"))
            return
        if spec.terminator and key == spec.terminator:
            self._end_entry("terminator")
            return
        self._keys_buf += key
        self._keys_due = now + spec.timeout_s
        if len(self._keys_buf) >= spec.max_digits:
            if spec.terminator:
                self._late_terminator = (spec.terminator, now + spec.timeout_s)
            self._end_entry("max")

    def _end_entry(self, ended_by: str) -> None:
        keys, self._keys_buf = self._keys_buf, ""
        self._collect = None
        self._submit_keys(KeyInput(keys, ended_by))

    def _submit_keys(self, keys: KeyInput) -> None:
        now = time.monotonic()
        rec = TurnRecord(
            call_id=self.call.call_id,
            turn=0,
            kind="keys",
            user_text=f"[keys] {keys.digits}"
            + ("" if keys.ended_by == "key" else f" ({keys.ended_by})"),
            barge_in=self._keys_barged,
        )
        self._keys_barged = False
        self._start_reply(self._respond_keys(keys, rec, now), deadline=True)

    async def _respond_keys(self, keys: KeyInput, rec: TurnRecord, t_ref: float) -> None:
        t0 = time.monotonic()
        if self.brain.streams:
            await self._deliver_stream(
                self.brain.respond_keys_stream(keys, self.ctx), rec, t_ref, t0
            )
            return
        reply = await self.brain.respond_keys(keys, self.ctx)
        t_brain = time.monotonic()
        rec.brain_ms = _ms(t_brain - t0)
        await self._deliver(reply, rec, t_ref, t_brain)

    # -- pushed replies ---------------------------------------------------------------------
    def _busy(self) -> bool:
        """The caller or the agent has the floor (or a reply is being prepared)."""
        return (
            self._hanging_up
            or bool(self._keys_buf)  # a keypad entry is under way
            or self._transferring
            or self._bridged
            or self.agent_speaking()
            or self.detector.in_speech
            or (self._reply is not None and not self._reply.done())
        )

    async def _play_pushed(self) -> None:
        """Play each reply the brain's owner pushes as an agent turn, once the turn in
        progress is over; one that could not be prepared gets the apology."""
        while True:
            error: Exception | None = None
            try:
                reply = await self.brain.wait_pushed(self.ctx.call_id)
            except Exception as exc:
                reply, error = None, exc
            if reply is None and error is None:
                return  # the brain forgot the call: nothing more will come
            while self._busy():
                await asyncio.sleep(FRAME_MS / 1000.0)
            self._push_due = None
            self._last_activity = time.monotonic()
            if error is not None:
                self._start_reply(_raise(error))
                continue
            assert reply is not None
            now = time.monotonic()
            rec = TurnRecord(call_id=self.call.call_id, turn=0, kind="pushed")
            self._start_reply(self._deliver(reply, rec, now, now))

    # -- no input and hang-up ---------------------------------------------------------------
    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            if self.call.on_hold:
                # The caller put us on hold: no "are you there?" until they are back.
                self._last_activity = time.monotonic()
                continue
            if self._busy():
                continue
            if self._push_due is not None:
                # A pushed reply is owed: silence is expected until it is due.
                if time.monotonic() < self._push_due:
                    continue
                self._push_due = None
                self._start_reply(
                    _raise(ProviderError(self.brain.name, "timeout", "no pushed reply in time"))
                )
                continue
            if time.monotonic() - self._last_activity < self.opt.no_input_timeout_s:
                continue
            self._no_input_attempts += 1
            reply = await self.brain.no_input(self.ctx, self._no_input_attempts)
            rec = TurnRecord(
                call_id=self.call.call_id,
                turn=0,
                kind="reprompt" if "hangup" not in reply.actions else "goodbye",
            )
            self._last_activity = time.monotonic()
            self._start_reply(self._deliver(reply, rec, time.monotonic(), time.monotonic()))

    def hangup(self, reason: str) -> None:
        """Ask the SIP side to end the call (once)."""
        if self._hanging_up:
            return
        self._hanging_up = True
        log.info("call %s: hanging up (%s)", self.call.call_id, reason)
        self.call.hangup(reason)


def _actions_of(reply: BrainReply) -> list[str]:
    """The reply's actions as recorded; keys the agent sends appear as ``dtmf:KEYS``."""
    return list(reply.actions) + ([f"dtmf:{reply.send_dtmf}"] if reply.send_dtmf else [])


async def _said_nothing() -> tuple[float, float]:
    """The (first chunk, first on-wire) times of a turn with nothing to say yet."""
    return 0.0, 0.0


def _ringback() -> bytes:
    """One cadence of ringback: 440 + 480 Hz for 2 s, then 4 s of silence (8 kHz PCM)."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 480 * t)) * 3000
    return tone.astype("<i2").tobytes() + bytes(2 * 4 * SAMPLE_RATE)


async def _raise(exc: Exception) -> None:
    """A reply that fails with `exc` (so `_guard` apologises for it like any failed turn)."""
    raise exc


async def _pieces(text: str | AsyncIterator[str]) -> AsyncIterator[str]:
    if isinstance(text, str):
        yield text
    else:
        async for piece in text:
            yield piece


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)
