#!/usr/bin/env python3
"""Load-generator process for `stream_capacity.py`: many Plivo audio streams on one loop.

Each call is a `PlivoStreamPeer` (`gateway.devtools.plivo_stream`: Plivo's side of a
bidirectional ``<Stream>``, every behaviour after Plivo's documentation) on this process's
single asyncio loop; its URL carries a per-call token minted with the gateway's
``stream.token_secret`` (`gateway.stream.auth.stream_url_for_call`, what the answer_url app
puts in its ``<Stream>``), so no app is involved. A call: connects (calls start spread
over ``--ramp-s``), waits until the greeting has played (its checkpoint answered with
``playedStream``), then ``--turns`` times speaks a question (real speech, sent as μ-law
``media`` in real time by the peer's 20 ms clock), waits for the reply to play out, thinks
``--think-s`` (±20 %) and goes on; at the end it hangs up (``stop``, then the close).

``--barge`` calls speak every question after the first ``--barge-after-s`` into the agent's
previous reply instead (it is interrupted: ``clearAudio``), so a call of 4 turns barges in
3 times.

Protocol with the parent: ``ready`` once the loop runs, then ``go`` on stdin; as calls
progress ``answered I`` / ``greeted I`` / ``hangup I``; at the end one ``call {json}`` per
call and one ``gen {json}`` for the process (its loop's lateness).

What a call reports (times are CLOCK_MONOTONIC, comparable across local processes):

- per turn ``end_at`` (the ``media`` event carrying the question's last voiced frame went
  out: a chunk leaves Plivo once its 20 ms were captured, so that is the end of speech),
  ``heard_at`` (the 20 ms tick on which Plivo's playback first played the reply) and
  ``latency_ms`` between them; for a barge-in ``voiced_at`` (first voiced frame sent),
  ``clear_ms`` (→ ``clearAudio`` arrived) and ``cut_ms`` (→ the end of the last agent frame
  Plivo played: what the caller heard of the agent after starting to speak);
- ``underruns``: [start, ms] of each stretch Plivo's playback queue ran dry inside an agent
  turn (`PeerStats.underruns`: shorter than 0.8 s, not after a ``clearAudio``, not where the
  queue drained to a checkpoint);
- the peer's own clock: ticks that ran late (this process was busy) and the worst lateness.

Usage: python scripts/bench/stream_caller.py --url ws://127.0.0.1:P/stream --secret S
       --calls N --clip a.wav [--clip b.wav] [--barge-calls B] [--turns 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from speech_clips import Clip  # scripts/bench, beside this file

from gateway.audio.ring import InboundRing, PlayoutRing
from gateway.devtools.plivo_stream import PeerStats, PlivoStreamPeer, StreamCall
from gateway.stream.auth import stream_url_for_call

TOKEN_TTL_S = 600.0  # the URL is used at once; a long TTL keeps a slow ramp valid


class Ear(InboundRing):
    """What the caller hears, reduced to when the agent's audio started and stopped.

    The peer pushes one frame per 20 ms tick (after counting it in ``frames_heard`` when
    it was the agent's audio); nothing is stored. `check`, when set, runs on every tick:
    the call's waits are woken from here instead of by a task per tick.
    """

    def __init__(self) -> None:
        super().__init__(capacity=1)
        self.stats: PeerStats | None = None
        self.on = False
        self._heard = 0
        self.onsets: list[float] = []  # ticks on which the agent's audio started
        self.offsets: list[float] = []  # first silent tick after it (= end of its last frame)
        self.check: Callable[[], None] | None = None

    def push(self, frame: bytes) -> None:
        """One tick of Plivo's playback."""
        stats = self.stats
        if stats is not None:
            audio = stats.frames_heard != self._heard
            self._heard = stats.frames_heard
            if audio != self.on:
                self.on = audio
                (self.onsets if audio else self.offsets).append(time.monotonic())
        if self.check is not None:
            self.check()


class Mouth(PlayoutRing):
    """What the caller says: the peer pops one frame per tick into a ``media`` event; the
    frames whose play index is watched get the time they went out."""

    def __init__(self) -> None:
        super().__init__(capacity=1 << 30)
        self.watch: dict[int, float] = {}

    def pop(self) -> bytes | None:
        """The next frame (None: silence); stamps watched ones."""
        frame = super().pop()
        if frame is not None and self.frames_played in self.watch:
            self.watch[self.frames_played] = time.monotonic()
        return frame

    def say(self, clip: Clip) -> tuple[int, int, int]:
        """Queue ``clip``; the play indices of its first and last voiced frame and of its
        last frame (watched)."""
        base = self.frames_played + len(self)
        marks = (base + clip.first_voiced + 1, base + clip.last_voiced + 1, base + len(clip.frames))
        self.watch = dict.fromkeys(marks, 0.0)
        for f in clip.frames:
            self.put(f)
        return marks


@dataclass
class Turn:
    """One question and the reply to it."""

    barge: bool
    voiced_at: float = 0.0
    end_at: float = 0.0
    heard_at: float = 0.0
    clear_at: float = 0.0
    cut_at: float = 0.0

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"barge": self.barge, "end_at": round(self.end_at, 4)}
        if self.heard_at:
            out["heard_at"] = round(self.heard_at, 4)
            out["latency_ms"] = round((self.heard_at - self.end_at) * 1000.0, 1)
        if self.barge:
            out["voiced_at"] = round(self.voiced_at, 4)
            if self.clear_at:
                out["clear_ms"] = round((self.clear_at - self.voiced_at) * 1000.0, 1)
            if self.cut_at:
                out["cut_ms"] = round((self.cut_at - self.voiced_at) * 1000.0, 1)
        return out


@dataclass
class CallRun:
    """One call: its peer, its script, what it measured."""

    index: int
    peer: PlivoStreamPeer
    ear: Ear
    mouth: Mouth
    barge: bool
    rng: random.Random
    greeting_ms: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    done: bool = False

    async def until(self, cond: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``cond()`` holds, checked on every tick of the peer's clock; False
        after ``timeout`` seconds or once the call ended."""
        if cond():
            return True
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        call = self.peer.call

        def check() -> None:
            if not woken.done() and (cond() or call.ended.is_set()):
                woken.set_result(None)

        self.ear.check = check
        try:
            await asyncio.wait_for(woken, timeout)
        except TimeoutError:
            pass
        finally:
            self.ear.check = None
        return cond()

    def report(self) -> dict[str, Any]:
        st = self.peer.stats
        call = self.peer.call
        answered = sum(1 for t in self.turns if t.heard_at)
        underruns = [
            [round(g.start, 4), round(g.duration * 1000.0, 1)]
            for g in st.underruns(0.8, checkpoints_end_turns=True)
        ]
        return {
            "index": self.index,
            "call_id": self.peer.call_id,
            "barge": self.barge,
            "connected": bool(call.confirmed_at),
            "reason": call.reason,
            "greeting_ms": round(self.greeting_ms, 1),
            "turns": [t.report() for t in self.turns],
            "ok": bool(call.confirmed_at)
            and self.greeting_ms > 0
            and self.done
            and answered == len(self.turns)
            and st.error_count == 0,
            "underruns": underruns,
            "frames_heard": st.frames_heard,
            "clears": len(st.clears),
            "late_ticks": st.late_ticks,
            "max_late_ms": round(st.max_lateness_s * 1000.0, 1),
            "errors": st.errors[:5],
            "error_count": st.error_count,
            "events_in": dict(st.events_in),
            "events_out": dict(st.events_out),
            "notes": self.notes,
        }


class Generator:
    """Every call of this process, on one loop."""

    def __init__(self, args: argparse.Namespace, clips: list[Clip]) -> None:
        self.args = args
        self.clips = clips
        self.runs: list[CallRun] = []
        self.lag: list[float] = []  # the loop's lateness on a 20 ms sleep, seconds

    def say(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def run(self) -> None:
        a = self.args
        rng = random.Random(a.seed)
        t0 = time.monotonic()
        tasks = []
        monitor = asyncio.create_task(self._monitor())
        for i in range(a.calls):
            at = t0 + a.phase_s + i * a.ramp_s / max(1, a.calls)
            tasks.append(asyncio.create_task(self._call(i, at, i < a.barge_calls, rng.random())))
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), a.ramp_s + a.max_s)
        except TimeoutError:
            for r in self.runs:
                if not r.done:
                    r.notes.append("ended by the time limit")
                if r.peer.ws is not None:
                    r.peer.drop()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    async def _monitor(self) -> None:
        """The loop's lateness, as a 20 ms clock of its own sees it."""
        while True:
            due = time.monotonic() + 0.02
            await asyncio.sleep(0.02)
            self.lag.append(max(0.0, time.monotonic() - due))

    async def _call(self, index: int, at: float, barge: bool, seed: float) -> None:
        a = self.args
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        call_id = str(uuid.uuid4())
        url = stream_url_for_call(a.url, a.secret, call_id, time.time(), TOKEN_TTL_S)
        ear, mouth = Ear(), Mouth()
        peer = PlivoStreamPeer(url, call=StreamCall(url, inbound=ear, playout=mouth))
        ear.stats = peer.stats
        run = CallRun(index, peer, ear, mouth, barge, random.Random(seed))
        self.runs.append(run)
        runner = asyncio.create_task(peer.run())
        try:
            await self._converse(run)
        except Exception as exc:  # one call's surprise must not end the others
            run.notes.append(f"script error: {exc!r}")
        finally:
            self.say(f"hangup {index}")
            if peer.ws is not None and not peer.call.ended.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await peer.hangup()
            try:
                async with asyncio.timeout(5):
                    await runner
            except TimeoutError:
                peer.drop()
                await runner

    async def _converse(self, run: CallRun) -> None:
        a = self.args
        peer, ear = run.peer, run.ear
        call, stats = peer.call, peer.stats
        with contextlib.suppress(TimeoutError):
            await peer.until(lambda: call.confirmed.is_set() or call.ended.is_set(), 15)
        if not call.confirmed.is_set():
            run.notes.append(f"not connected: {call.reason}")
            return
        self.say(f"answered {run.index}")
        if not await run.until(lambda: any(c.played_at for c in stats.checkpoints), 15):
            run.notes.append("greeting: no checkpoint played")
            return
        run.greeting_ms = (ear.onsets[0] - stats.connected_at) * 1000.0 if ear.onsets else 0.0
        self.say(f"greeted {run.index}")
        for k in range(a.turns):
            if not await self._turn(run, k):
                return
        run.done = True

    async def _turn(self, run: CallRun, k: int) -> bool:
        """Question ``k`` and the reply to it; False when the call cannot go on."""
        a = self.args
        ear, mouth = run.ear, run.mouth
        call, stats = run.peer.call, run.peer.stats
        barge = run.barge and k > 0 and bool(run.turns[-1].heard_at)
        if barge:
            cue = run.turns[-1].heard_at + a.barge_after_s
            await asyncio.sleep(max(0.0, cue - time.monotonic()))
        else:
            await asyncio.sleep(a.think_s * run.rng.uniform(0.8, 1.2))
        if call.ended.is_set():
            run.notes.append(f"turn {k}: the call ended ({call.reason})")
            return False
        turn = Turn(barge)
        run.turns.append(turn)
        clip = self.clips[(run.index + k) % len(self.clips)]
        clears_before, onsets_before = len(stats.clears), len(ear.onsets)
        offsets_before = len(ear.offsets)
        first, last, final = mouth.say(clip)
        if not await run.until(lambda: mouth.watch[last] > 0, 30):
            run.notes.append(f"turn {k}: the question was not sent ({call.reason})")
            return False
        turn.voiced_at, turn.end_at = mouth.watch[first], mouth.watch[last]
        if barge:
            await run.until(lambda: len(stats.clears) > clears_before, a.turn_timeout_s)
            cleared = [t for t in stats.clears[clears_before:] if t >= turn.voiced_at]
            turn.clear_at = cleared[0] if cleared else 0.0
            cuts = [t for t in ear.offsets[offsets_before:] if t >= turn.voiced_at]
            turn.cut_at = cuts[0] if cuts else 0.0
            if not turn.clear_at:
                run.notes.append(f"turn {k}: barge-in without clearAudio")
        await run.until(lambda: mouth.watch[final] > 0, 30)

        # The reply: the first tick that played agent audio after the end of speech.
        def reply_onset() -> float:
            return next((t for t in ear.onsets[onsets_before:] if t >= turn.end_at), 0.0)

        if not await run.until(lambda: reply_onset() > 0, a.turn_timeout_s):
            run.notes.append(f"turn {k}: no reply")
            return not call.ended.is_set()
        turn.heard_at = reply_onset()
        if run.barge and k + 1 < a.turns:
            return True  # the next question interrupts this reply
        played = await run.until(
            lambda: any(
                c.at >= turn.end_at and (c.played_at or c.cleared) for c in stats.checkpoints
            ),
            a.turn_timeout_s + 30,
        )
        if not played:
            run.notes.append(f"turn {k}: reply did not play out")
        return not call.ended.is_set()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the stream workers' ws:// URL")
    ap.add_argument("--secret", required=True, help="stream.token_secret of the gateway")
    ap.add_argument("--calls", type=int, required=True)
    ap.add_argument("--clip", type=Path, action="append", required=True, help="speech WAV")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--barge-calls", type=int, default=0, help="the first B calls barge in")
    ap.add_argument("--barge-after-s", type=float, default=1.0)
    ap.add_argument("--think-s", type=float, default=1.0)
    ap.add_argument("--ramp-s", type=float, default=5.0, help="calls start spread over")
    ap.add_argument("--phase-s", type=float, default=0.0, help="first call's start offset")
    ap.add_argument("--turn-timeout-s", type=float, default=10.0)
    ap.add_argument("--max-s", type=float, default=180.0, help="hang up everything after")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=Path, help="cProfile the calls into this file")
    args = ap.parse_args()
    clips = [Clip.load(p) for p in args.clip]
    gen = Generator(args, clips)

    async def go() -> None:
        gen.say("ready")
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.startswith("go"):
            await gen.run()

    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(asyncio.run, go())
        prof.dump_stats(str(args.profile))
    else:
        asyncio.run(go())
    for r in sorted(gen.runs, key=lambda r: r.index):
        gen.say("call " + json.dumps(r.report(), separators=(",", ":")))
    lag = sorted(gen.lag)
    gen.say(
        "gen "
        + json.dumps(
            {
                "lag_p99_ms": round(lag[int(0.99 * (len(lag) - 1))] * 1000.0, 1) if lag else 0.0,
                "lag_max_ms": round(lag[-1] * 1000.0, 1) if lag else 0.0,
            }
        )
    )
    return 0 if gen.runs and all(r.report()["ok"] for r in gen.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
