"""The agent's turns: from a caller turn (or a key entry, a greeting, a re-prompt, a pushed
reply) to the brain, to speech, to the reply's actions, with each turn's record.

One agent turn at a time is the reply task (`Replies.start`); starting another or barge-in
cancels it. A turn that fails (an error, or no audio by `reply_deadline_s`) is counted and
apologised for with the start-up prompts; after `max_failures` in a row the agent says
goodbye and hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway.pipeline import clock
from gateway.pipeline.generation import Generation
from gateway.pipeline.keypad import KeypadEntry, spoken_entry
from gateway.pipeline.options import ConversationOptions, Prompts
from gateway.pipeline.playout import Speaker, close_stream, said_nothing
from gateway.pipeline.pushed import PushedReplies
from gateway.pipeline.record import TurnRecord, ms
from gateway.pipeline.transfers import Handover, warm_summary
from gateway.pipeline.transport import CallTransport
from gateway.policy.transfer import transfer_target
from gateway.providers.base import (
    Brain,
    BrainReply,
    KeyInput,
    ProviderError,
    SttStream,
)
from gateway.tally import count_vendor_error

log = logging.getLogger("gateway.pipeline.session")


class Replies:
    """The agent turns of one call; see the module docstring."""

    def __init__(
        self,
        call: CallTransport,
        brain: Brain,
        options: ConversationOptions,
        prompts: Prompts | None,
        speaker: Speaker,
        keypad: KeypadEntry,
        pushed: PushedReplies,
        handover: Handover,
        hangup: Callable[[str], None],
        on_turn: Callable[[TurnRecord], None] | None,
    ) -> None:
        self.call = call
        self.call_id = call.call_id
        self.ctx = call.context
        self.brain = brain
        self.opt = options
        self.prompts = prompts
        self.speaker = speaker
        self.keypad = keypad
        self.pushed = pushed
        self.handover = handover
        self.hangup = hangup
        self._on_turn = on_turn
        self.records: list[TurnRecord] = []
        self.task: asyncio.Task[None] | None = None
        self._deadline: asyncio.Timeout | None = None  # of the reply being prepared
        self._failures = 0  # consecutive failed agent turns
        self._turns = 0
        # The caller's words kept until the brain has answered: if the caller talks on
        # first, the next turn includes them.
        self.carry_text = ""
        # Called when a reply task starts, and when it is over (done, failed or cancelled).
        self.on_start: Callable[[], None] = _nothing
        self.on_done: Callable[[], None] = _nothing
        speaker.on_audio = self._audio_flowing
        speaker.on_synthesised = self._synthesised
        self._limit = 0.0  # the deadline's length, while one runs
        # A reply generated ahead of the turn's end (the caller paused), and its words.
        self._prepared: tuple[str, Generation] | None = None
        self._discarded_since = 0  # dropped since the last streamed reply (its record has them)
        self._dropping: set[asyncio.Task[None]] = set()

    # -- the reply task ---------------------------------------------------------------------
    def pending(self) -> bool:
        """A reply is being prepared or spoken."""
        return self.task is not None and not self.task.done()

    def cancel(self) -> None:
        """Stop the reply in progress (barge-in, or a new caller turn supersedes it)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def start(self, coro: Awaitable[None], deadline: bool = False) -> None:
        """Make `coro` the reply task (cancelling the one before); `deadline`: it fails
        without audio within `reply_deadline_s`."""
        self.cancel()
        limit = self.opt.reply_deadline_s if deadline else None
        self.task = asyncio.ensure_future(self._guard(coro, limit))
        self.task.add_done_callback(lambda _: self.on_done())
        self.on_start()

    async def close(self) -> None:
        """Cancel the reply in progress and wait for it (the call ended)."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.drop_prepared()
        if self._dropping:
            await asyncio.wait(self._dropping)

    # -- replies generated ahead of the turn's end --------------------------------------------
    def prepare(self, text: str) -> None:
        """The caller paused after saying `text`: start the reply to it now, to be spoken
        if the turn ends with these words (`generate_ahead`, and a brain that can)."""
        self.drop_prepared()
        if not self.opt.generate_ahead or not self.brain.streams or self.pending():
            return
        if not text.strip():
            return
        words = f"{self.carry_text} {text}".strip()
        if self.keypad.expected is not None and spoken_entry(words) is not None:
            return  # an entry said: the brain answers it as keys (`respond`)
        stream = self.brain.prepare_stream(words, self.ctx)
        if stream is None:
            return
        log.debug("call %s: generating ahead for %r", self.call_id, words)
        self._prepared = (words, Generation(stream, self.speaker.tts, ahead=True))

    def drop_prepared(self) -> None:
        """The caller went on (or the turn took another way): a reply generated ahead is
        dropped, and counted (its tokens were paid for)."""
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            return
        self._discarded_since += 1
        log.debug("call %s: dropped the reply generated ahead", self.call_id)
        task = asyncio.ensure_future(prepared[1].close())
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    def _take_prepared(self, text: str) -> Generation | None:
        """The reply generated ahead, if it answers exactly `text` (then it is kept)."""
        prepared = self._prepared
        if prepared is None:
            return None
        if prepared[0] != text:
            self.drop_prepared()
            return None
        self._prepared = None
        gen = prepared[1]
        gen.stream.keep()
        return gen

    def _audio_flowing(self, queued_s: float) -> None:
        """Audio arrived: the caller hears it for `queued_s`, and from then on may wait in
        silence no longer than the deadline (a vendor stalling mid-reply gets the apology
        as one that never started does)."""
        if self._deadline is not None:
            loop = asyncio.get_running_loop()
            self._deadline.reschedule(loop.time() + queued_s + self._limit)

    def _synthesised(self) -> None:
        """Every piece of the reply is queued: no vendor is waited for any more."""
        if self._deadline is not None:
            self._deadline.reschedule(None)

    async def _guard(self, coro: Awaitable[None], limit: float | None = None) -> None:
        deadline: asyncio.Timeout | None = None
        try:
            if limit is None:
                await coro
            else:
                # Moved past the audio queued each time some arrives, and lifted once
                # the whole reply is queued (the speaker's callbacks).
                async with asyncio.timeout(limit) as deadline:
                    self._deadline, self._limit = deadline, limit
                    await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._deadline = None
            late = deadline is not None and deadline.expired()
            await self._failed(exc, f"no agent audio for {limit:g} s" if late else "")
        finally:
            self._deadline = None

    async def _failed(self, exc: BaseException, why: str) -> None:
        """A reply failed: count it, log it, and say the apology (or the goodbye)."""
        self._failures += 1
        if isinstance(exc, ProviderError):
            # A provider without the failover layer (which counts its own) failed.
            count_vendor_error(exc)
        self.speaker.speaking = False
        log.error(
            "call %s: agent turn failed (%d in a row): %s",
            self.call_id,
            self._failures,
            why or (exc if isinstance(exc, ProviderError) else repr(exc)),
            exc_info=not why and not isinstance(exc, ProviderError),
        )
        if self.prompts is not None:
            await self._fallback(self.prompts)

    async def _fallback(self, prompts: Prompts) -> None:
        """After a failed turn: the apology, or after too many the goodbye and a hang-up.
        Runs as the reply task, so barge-in cuts it like any agent turn."""
        final = self._failures >= self.opt.max_failures
        text = prompts.goodbye_text if final else prompts.apology_text
        pcm = prompts.goodbye if final else prompts.apology
        self._turns += 1
        rec = TurnRecord(
            call_id=self.call_id,
            turn=self._turns,
            kind="failure-goodbye" if final else "apology",
            agent_text=text,
            actions=["hangup"] if final else [],
        )
        await self._speak_turn(rec, clock.now(), self.speaker.speak_pcm(pcm))
        if final:
            await asyncio.sleep(self.opt.hangup_delay_s)
            self.hangup("vendor failures")

    # -- agent turns ------------------------------------------------------------------------
    async def greet(self) -> None:
        """The greeting, timed from the answer."""
        rec = TurnRecord(call_id=self.call_id, turn=0, kind="greeting")
        t0 = clock.now()
        reply = await self.brain.greeting(self.ctx)
        rec.brain_ms = ms(clock.now() - t0)
        start = self.call.answered_at or t0
        await self.deliver(reply, rec, start, clock.now())

    async def respond(
        self,
        parts: list[asyncio.Future[str]],
        stt: SttStream | None,
        rec: TurnRecord,
        end_of_speech: float,
        detected_at: float,
    ) -> None:
        """Answer a caller turn: its transcript (pieces finalised early, then the rest)."""
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
        t_stt = clock.now()
        rec.stt_ms = ms(t_stt - detected_at)
        if self.carry_text:
            text = f"{self.carry_text} {text}".strip()
        # A short sound nobody could transcribe is ignored, unless it cut the agent off:
        # then silence would be dead air, and the brain's fallback asks again.
        if not text and rec.speech_ms < self.opt.min_unrecognised_ms and not rec.barge_in:
            log.debug("call %s: ignored %d ms of unrecognised sound", self.call_id, rec.speech_ms)
            return
        entry = self.keypad.said(text)  # speech came before any key: the request is over
        if entry is not None:  # it said the entry asked for
            self.drop_prepared()
            self.carry_text = ""
            rec.user_text = f"{text} [keys said] {entry.digits}"
            await self.respond_keys(entry, rec, end_of_speech)
            return
        # Kept until the brain has answered: if the caller talks on first, the next turn
        # includes these words.
        self.carry_text = text
        rec.user_text = text
        if self.brain.streams:
            gen = self._take_prepared(text)
            rec.ahead = gen is not None
            if gen is None:
                gen = Generation(self.brain.respond_stream(text, self.ctx), self.speaker.tts)
            await self._deliver_stream(gen, rec, end_of_speech, t_stt)
            return
        try:
            reply = await self.brain.respond(text, self.ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.carry_text = ""
            raise
        t_brain = clock.now()
        rec.brain_ms = ms(t_brain - t_stt)
        self.carry_text = ""
        await self.deliver(reply, rec, end_of_speech, t_brain)

    async def respond_keys(self, keys: KeyInput, rec: TurnRecord, t_ref: float) -> None:
        """Answer the caller's keys (one key, or an entry)."""
        t0 = clock.now()
        if self.brain.streams:
            stream = self.brain.respond_keys_stream(keys, self.ctx)
            await self._deliver_stream(Generation(stream, self.speaker.tts), rec, t_ref, t0)
            return
        reply = await self.brain.respond_keys(keys, self.ctx)
        t_brain = clock.now()
        rec.brain_ms = ms(t_brain - t0)
        await self.deliver(reply, rec, t_ref, t_brain)

    async def _deliver_stream(
        self, gen: Generation, rec: TurnRecord, t_ref: float, t_stt: float
    ) -> None:
        """Speak a streamed reply sentence by sentence while the brain is still generating,
        then run its actions.  Cancelling (barge-in) stops the brain's stream too."""
        self._turns += 1
        rec.turn = self._turns
        rec.discarded, self._discarded_since = self._discarded_since, 0
        try:
            first_chunk_at, first_wire_at = await self.speaker.speak(gen.texts(), gen.synthesize)
            await gen.wait()
        except BaseException as exc:
            await gen.close()
            self.carry_text = ""
            if isinstance(exc, asyncio.CancelledError):
                rec.interrupted = True
                rec.first_audio_at = round(self.speaker.first_audio_at, 4)
                self._record(rec)
            raise
        self.carry_text = ""
        reply = gen.stream.reply or BrainReply("")
        rec.agent_text = reply.text
        rec.intent = reply.intent
        rec.actions = _actions_of(reply)
        self.keypad.arm(reply.collect, reprompt=rec.kind == "reprompt")
        # Generated ahead, the brain and the TTS may have answered before the transcript
        # was final: what the turn waited for each is counted from there.
        if gen.first_token_at:
            rec.brain_ms = ms(max(0.0, gen.first_token_at - t_stt))
        first_audio_at = gen.first_audio_at or first_chunk_at
        if first_audio_at and gen.first_piece_at:
            rec.tts_first_ms = ms(max(0.0, first_audio_at - max(gen.first_piece_at, t_stt)))
        self._finish_record(rec, t_ref, first_chunk_at, first_wire_at)
        await self._run_actions(reply)

    async def deliver(
        self, reply: BrainReply, rec: TurnRecord, t_ref: float, t_brain: float
    ) -> None:
        """Speak a reply, record its timings, then run its actions."""
        self._turns += 1
        rec.turn = self._turns
        rec.agent_text = reply.text
        rec.intent = reply.intent
        rec.actions = _actions_of(reply)
        # Armed before the reply is spoken: the caller may key ahead (and cut it short).
        self.keypad.arm(reply.collect, reprompt=rec.kind == "reprompt")
        audio = getattr(reply, "audio", b"")  # a brain that answers with recorded audio
        if audio:
            speech = self.speaker.speak_pcm(audio)
        elif reply.text:
            speech = self.speaker.speak(reply.text)
        else:  # nothing to say yet (a pending reply)
            speech = said_nothing()
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
            rec.first_audio_at = round(self.speaker.first_audio_at, 4)
            self._record(rec)
            raise
        if first_chunk_at and tts_from:
            rec.tts_first_ms = ms(first_chunk_at - tts_from)
        self._finish_record(rec, t_ref, first_chunk_at, first_wire_at)

    def _finish_record(
        self, rec: TurnRecord, t_ref: float, first_chunk_at: float, first_wire_at: float
    ) -> None:
        rec.max_gap_ms = self.speaker.last_gap_ms
        rec.end_of_speech_at = round(t_ref, 4)
        rec.first_audio_at = round(first_wire_at, 4)
        if first_wire_at:
            rec.playout_ms = ms(first_wire_at - first_chunk_at)
            rec.total_ms = ms(first_wire_at - t_ref)
        self._record(rec)

    def _record(self, rec: TurnRecord) -> None:
        self.records.append(rec)
        if self._on_turn is not None:
            self._on_turn(rec)

    async def _run_actions(self, reply: BrainReply) -> None:
        self._failures = 0
        if reply.send_dtmf:
            log.info("call %s: sending DTMF %s", self.call_id, reply.send_dtmf)
            self.call.send_dtmf(reply.send_dtmf)
        self.pushed.promised(reply)
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
        """Hand the caller to a human; when that fails, say `transfer_failed_text` and
        carry on."""
        text = self.opt.transfer_failed_text
        # The apology is synthesised while the transfer is tried, so a failure is told at
        # once: a pause after the ringback is taken by callers as their turn to speak.
        ready = asyncio.ensure_future(self._synthesize(text))
        try:
            done = await self.handover.transfer(
                target,
                summary=self.warm_summary,
                hangup=self.hangup,
                observe=lambda note: self.brain.observe(self.ctx, note),
            )
            if done:
                return
            self._turns += 1
            rec = TurnRecord(
                call_id=self.call_id,
                turn=self._turns,
                kind="transfer-failed",
                agent_text=text,
                intent="transfer_failed",
            )
            t0 = clock.now()
            handover, playout = self.handover, self.call.playout

            async def after_ringback(piece: str) -> AsyncIterator[bytes]:
                # A failed warm transfer's ringback plays until the apology's audio is
                # ready: synthesised already, or now if that failed.
                try:
                    pcm = await ready
                except Exception:
                    pcm = b""
                chunks = _one(pcm) if pcm else self.speaker.tts.synthesize(piece)
                try:
                    first = True
                    async for chunk in chunks:
                        if first:
                            first = False
                            await handover.stop_ringback()
                            playout.mark()  # the apology's first frame, not the ringback's
                        yield chunk
                finally:
                    await close_stream(chunks)

            try:
                speech = self.speaker.speak(text, after_ringback)
                await self._speak_turn(rec, t0, speech, tts_from=t0)
            finally:
                await handover.stop_ringback()
        finally:
            ready.cancel()
            await asyncio.wait([ready])  # our own cancellation still propagates
            if not ready.cancelled():
                ready.exception()  # a TTS failure nobody needed: retrieved, not logged

    async def _synthesize(self, text: str) -> bytes:
        """All of `text`'s audio (an empty result when there is none)."""
        chunks = self.speaker.tts.synthesize(text)
        try:
            return b"".join([pcm async for pcm in chunks])
        finally:
            await close_stream(chunks)

    def warm_summary(self) -> str:
        """What the human hears first in a warm transfer."""
        return warm_summary(self.records, self.opt, self.ctx.from_number)


def _actions_of(reply: BrainReply) -> list[str]:
    """The reply's actions as recorded; keys the agent sends appear as ``dtmf:KEYS``."""
    return list(reply.actions) + ([f"dtmf:{reply.send_dtmf}"] if reply.send_dtmf else [])


def _nothing() -> None:
    pass


async def _one(pcm: bytes) -> AsyncIterator[bytes]:
    """`pcm` as a one-chunk stream."""
    yield pcm
