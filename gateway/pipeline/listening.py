"""Listening to the caller: turn detection, speech-to-text streaming, and the moments the
conversation acts on (the caller starts talking, possibly over the agent; a caller turn
ended and needs an answer).

`Listener` owns the turn detector and the recognition in progress. What it decides is
handed to its `Floor` (the session), which knows whether the agent speaks, whether the
caller is being handed over, and whether a keypad entry is under way.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from gateway.pipeline import clock
from gateway.pipeline.options import ConversationOptions
from gateway.pipeline.transport import CallerAudio
from gateway.pipeline.turns import end_of_turn_for
from gateway.providers.base import SttProvider, SttStream

log = logging.getLogger("gateway.pipeline.session")


@dataclass
class CallerTurn:
    """A caller turn that just ended: its recognition, the time it ended, and how."""

    stt: SttStream | None  # the stream of its last piece (None when all were finalised)
    parts: list[asyncio.Future[str]]  # transcripts of earlier pieces, finalised in pauses
    speech_ms: int
    wait_ms: float  # silence waited after the speech before the turn was ended
    at: float  # monotonic time the end was detected
    barge_in: bool  # it began while the agent was speaking


class Floor(Protocol):
    """What the listener needs to know from, and tell, the rest of the conversation."""

    def agent_speaking(self) -> bool:
        """The agent is speaking (a start now is a barge-in)."""
        ...

    def handed_over(self) -> bool:
        """The caller is being transferred, or talks with a human now: no turns."""
        ...

    def keys_underway(self) -> bool:
        """A keypad entry has begun: speech that starts now is ignored."""
        ...

    def expected(self) -> str | None:
        """What the caller is expected to say now, for the recogniser
        (`SttProvider.open_stream`'s `expect`)."""
        ...

    def heard(self, at: float) -> None:
        """The caller's speech started or ended at `at` (the caller is there)."""

    def caller_started(self) -> bool:
        """The caller began a turn: stop the agent (True: it was a barge-in) or fold a
        reply still being prepared into this turn."""
        ...

    def barge_in_if_speaking(self) -> bool:
        """Stop the agent if it speaks (a further turn on a noisy line); True if it did."""
        ...

    def caller_turn(self, turn: CallerTurn) -> None:
        """A caller turn ended: answer it."""

    def caller_paused(self, text: str) -> None:
        """The caller paused in a turn, and `text` is final: every word so far."""

    def caller_went_on(self) -> None:
        """The caller spoke again after such a pause (the turn goes on)."""


class Listener:
    """The caller's side of one call; see the module docstring."""

    def __init__(self, call_id: str, stt: SttProvider, options: ConversationOptions) -> None:
        self.call_id = call_id
        self.stt = stt
        self.opt = options
        self.detector = options.turn_detector()
        self._stream: SttStream | None = None
        # Transcripts of earlier pieces of the turn in progress, finalised early (in pauses).
        self._parts: list[asyncio.Future[str]] = []
        self._barged = False  # the turn in progress began while the agent was speaking
        # The recogniser ended a turn while the detector stayed in speech (a noisy line).
        self._stt_ended = False
        # The caller's utterance in progress lost to a key: ignore it until it ends.
        self._ignore_speech = False
        self._floor: Floor | None = None  # set by `run`

    @property
    def in_speech(self) -> bool:
        """The caller is talking (by the turn detector)."""
        return self.detector.in_speech

    async def run(self, inbound: CallerAudio, floor: Floor) -> None:
        """Listen until cancelled."""
        self._floor = floor
        det = self.detector
        while True:
            frame = await inbound.get()
            event = det.push(frame, agent_speaking=floor.agent_speaking())
            if floor.handed_over():
                # The caller is being handed over (or talks with the human now): their
                # words start no turn (and do not cancel the transfer in progress).
                continue
            if event is None:
                if det.in_speech:
                    await self._feed_speech(frame)
                    self._check_stt_end(floor)
                continue
            now = clock.now()
            floor.heard(now)
            if event.kind == "start" and floor.keys_underway():
                # A keypad entry is under way: keys came first, this speech is ignored.
                self._ignore_speech = True
                continue
            if self._ignore_speech:
                self._ignore_speech = event.kind == "start"
                continue
            if event.kind == "start":
                self._stt_ended = False
                self._barged = floor.caller_started()
                await self.drop()
                self._stream = await self.stt.open_stream(floor.expected())
                await self._stream.feed(event.audio)
            else:
                stt, self._stream = self._stream, None
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
                floor.caller_turn(
                    CallerTurn(
                        stt,
                        parts,
                        speech_ms=event.speech_ms,
                        wait_ms=float(event.trailing_silence_ms),
                        at=now,
                        barge_in=self._barged,
                    )
                )

    def _check_stt_end(self, floor: Floor) -> None:
        """End the turn on the recogniser's end of utterance (Deepgram's endpointing or
        UtteranceEnd), which it reports only after words.  The stream in progress exists
        only while the local VAD hears sound (from `early_final_ms` of silence on the local
        path ends the turn), so this is the noisy line: without it the turn would last until
        the noise stops or `max_utterance_ms`.  The detector stays in speech (a reset would
        start a new turn on the noise at once); the next words are a new turn, and what the
        run ends with is answered only if the recogniser heard words in it."""
        stt = self._stream
        wait_ms = None if stt is None else stt.utterance_end()
        if stt is None or wait_ms is None:
            return
        self._stream = None
        parts, self._parts = self._parts, []
        now = clock.now()
        floor.heard(now)
        barge_in = self._barged
        if self._stt_ended:  # a further turn on the noisy line
            barge_in = floor.barge_in_if_speaking()
        self._stt_ended = True
        speech_ms = self.detector.split()
        log.debug("call %s: the recogniser ended the turn", self.call_id)
        floor.caller_turn(CallerTurn(stt, parts, speech_ms, wait_ms, now, barge_in))

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
        trailing = self.detector.quiet_ms  # a word's fading tail is part of the pause
        early = self.opt.early_final_ms
        if self._stream is not None:
            await self._stream.feed(frame)
            if early and trailing >= early and not self._stt_ended:
                stt, self._stream = self._stream, None
                part = asyncio.ensure_future(stt.finish())
                self._parts.append(part)
                parts = self._parts
                # Its failure is the turn's, raised where the turn awaits it; a piece of a
                # turn dropped or failed by an earlier piece is not awaited, so it is
                # retrieved here (no "exception was never retrieved").
                part.add_done_callback(_retrieve)
                part.add_done_callback(lambda _: self._part_final(parts))
        elif trailing == 0 or self._stt_ended:  # speech resumed, or after the recogniser's end
            if self._parts and not self._stt_ended:
                # The caller goes on after a pause: the words so far say nothing about
                # where the turn ends any more, and a reply started on them is wrong.
                self.detector.set_end_of_turn_ms(self.opt.end_of_turn_ms)
                if self._floor is not None:
                    self._floor.caller_went_on()
            expect = self._floor.expected() if self._floor is not None else None
            self._stream = await self.stt.open_stream(expect)
            await self._stream.feed(frame)

    def _part_final(self, parts: list[asyncio.Future[str]]) -> None:
        """A piece of the turn in progress, finalised in a pause, has its transcript: when
        it completes every word so far and the caller is still silent, the turn's end is
        judged by those words (`end_of_turn_for`) and, unless they lead on ("and ..."), the
        floor told (a reply may be started ahead)."""
        floor = self._floor
        if parts is not self._parts or self._stream is not None or not self.detector.in_speech:
            return  # the turn ended, or the caller went on meanwhile
        if floor is None:
            return
        if not all(p.done() and not p.cancelled() and p.exception() is None for p in parts):
            return  # a piece still being finalised (its own callback comes), or failed
        text = " ".join(t for t in (p.result() for p in parts) if t)
        if not text:
            return
        opt = self.opt
        wait_ms = end_of_turn_for(
            text,
            base_ms=opt.end_of_turn_ms,
            complete_ms=opt.end_of_turn_complete_ms,
            incomplete_ms=opt.end_of_turn_incomplete_ms,
        )
        self.detector.set_end_of_turn_ms(wait_ms)
        if wait_ms <= opt.end_of_turn_ms:  # words that lead on: the caller will go on
            floor.caller_paused(text)

    async def drop(self) -> None:
        """Abandon any recognition in progress (a new turn starts, the call ends)."""
        stt, self._stream = self._stream, None
        parts, self._parts = self._parts, []
        if stt is not None:
            await stt.cancel()
        for part in parts:
            part.cancel()

    async def drop_for_keys(self) -> None:
        """Keys came first: the caller's words in progress are dropped, and the rest of
        the utterance is ignored."""
        if self._stream is not None or self._parts or self.detector.in_speech:
            await self.drop()
            self._ignore_speech = self.detector.in_speech


def _retrieve(part: asyncio.Future[str]) -> None:
    if not part.cancelled():
        part.exception()
