#!/usr/bin/env python3
"""Load-generator process for `capacity.py`: up to 4 conversing calls from one pjsua2 UA.

A pjsua2 process holds at most 4 calls, so the capacity benchmark runs several of these.
Each process dials one URI per call (same `Dialer` pj thread and account as the test
softphone), then on every call: waits for the greeting, and `--turns` times speaks a clip
(real speech, 8 kHz WAV), waits for the agent's reply to end and thinks a moment.

Protocol with the parent: the process prints ``ready`` once SIP is up, waits for ``go``
on stdin, prints ``answered I`` / ``hangup I`` as calls progress and, at the end, one line
``call {json}`` per call.

What a call reports, per agent reply (times are CLOCK_MONOTONIC, comparable across local
processes):

- ``latency_ms``: end of our last voiced frame on the wire → first agent frame (same
  convention as `sipagent call`: the first agent frame is back-dated by one frame);
- ``gaps``: [arrival time, ms] of each silent stretch between the reply's first and last
  tone frame. The agent's fake TTS is one continuous tone, so each is an underrun somewhere
  between the agent's TTS stream and our ear. PLC is switched off in this UA so a late or
  missing RTP packet is heard as silence instead of being papered over;
- ``max_interarrival_ms``: longest interval between two frames handed to us by our own
  media clock inside the reply (> 20 ms means this load-generator process was late).

Per call it also reports our jitter buffer's counters and RTP loss from pjmedia.

``--background`` calls are load only, and cheap: no Python runs per frame (pjmedia's WAV
player sends the speech, received audio is dropped by the conference bridge). They talk
open-loop on the rhythm of a measured call (greeting, then clip, pause for the reply, ...)
and report only whether they were answered.

Usage: python scripts/bench/capacity_caller.py --clip a.wav [--clip b.wav] URI [URI ...]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pjsua2 as pj  # beyond the Dialer's API: call options, WAV players, codec params

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from speech_clips import Clip  # scripts/bench, beside this file

from gateway.audio.pcm import FRAME_BYTES, FRAME_MS, read_wav_8k
from gateway.audio.ring import InboundRing, PlayoutRing
from gateway.sip import dialer as sipdialer
from gateway.sip.calls import OutboundCall
from gateway.sip.dialer import Dialer

FRAME_S = FRAME_MS / 1000.0
ACTIVE_PEAK = 1000  # |sample| above this is agent audio (the tone peaks at 8000; silence is 0)


class TimedInbound(InboundRing):
    """Keeps every received frame with its arrival time (media clock thread: append only)."""

    def __init__(self) -> None:
        super().__init__(capacity=1)
        self.arrivals: collections.deque[tuple[float, bytes]] = collections.deque()

    def push(self, frame: bytes) -> None:
        """Clock thread: stamp and keep the frame."""
        self.arrivals.append((time.monotonic(), frame))


class TimedPlayout(PlayoutRing):
    """Our speech: notes when chosen frames (by play index) went to the bridge."""

    def __init__(self) -> None:
        super().__init__(capacity=1 << 30)
        self.watch: set[int] = set()
        self.seen: dict[int, float] = {}

    def pop(self) -> bytes | None:
        """Clock thread: next frame, stamping watched ones."""
        frame = super().pop()
        if frame is not None and self.frames_played in self.watch:
            self.seen[self.frames_played] = time.monotonic()
        return frame


def _peaks(frames: list[bytes]) -> np.ndarray:
    """Peak |sample| of each 20 ms frame."""
    if not frames:
        return np.zeros(0, dtype=np.int32)
    a = np.frombuffer(b"".join(frames), dtype="<i2").reshape(len(frames), -1)
    peaks: np.ndarray = np.abs(a.astype(np.int32)).max(axis=1)
    return peaks


@dataclass
class Turn:
    """One of our utterances."""

    start_at: float = 0.0  # first voiced frame to the bridge
    end_at: float = 0.0  # end of the last voiced frame
    answered: bool = False


@dataclass
class CallRun:
    """One call's script and what it heard."""

    index: int
    uri: str
    state: OutboundCall
    turns_wanted: int
    rng: random.Random
    phase: str = "dialing"
    deadline: float = 0.0
    think_until: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    active: list[bool] = field(default_factory=list)
    last_active_at: float = 0.0
    heard_since: float = 0.0  # first tone frame after the current turn's end (0: none yet)
    watch: tuple[int, int, int] = (0, 0, 0)
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sip_call_id: str = ""

    @property
    def inbound(self) -> TimedInbound:
        ring = self.state.inbound
        assert isinstance(ring, TimedInbound)
        return ring

    @property
    def playout(self) -> TimedPlayout:
        ring = self.state.playout
        assert isinstance(ring, TimedPlayout)
        return ring

    def take_frames(self) -> None:
        """Move received frames into the call's arrays."""
        q = self.inbound.arrivals
        batch: list[tuple[float, bytes]] = []
        while q:
            batch.append(q.popleft())
        if not batch:
            return
        peaks = _peaks([f if len(f) == FRAME_BYTES else bytes(FRAME_BYTES) for _, f in batch])
        for (t, _), peak in zip(batch, peaks, strict=True):
            self.arrivals.append(t)
            on = bool(peak > ACTIVE_PEAK)
            self.active.append(on)
            if on:
                self.last_active_at = t
                if not self.heard_since and self.turns and t - FRAME_S >= self.turns[-1].end_at:
                    self.heard_since = t


class BenchCall(sipdialer._DialCall):
    """The softphone's call; drops the process' reference to it when it ends (pj thread).

    pjsua2 objects must die on the pj thread before libDestroy: `_DialCall` hands itself
    to `PjThread.dispose` on DISCONNECTED, and `forget` removes the only other reference.
    """

    forget: Callable[[], object] | None = None

    def onCallState(self, prm: Any) -> None:
        super().onCallState(prm)
        if self.state.ended.is_set() and self.forget is not None:
            self.forget()
            self.forget = None


class LoadCall(BenchCall):
    """A background call: speech from pjmedia WAV players, received audio ignored."""

    audio: Any = None
    players: list[Any]

    def onCallState(self, prm: Any) -> None:
        super().onCallState(prm)
        if self.state.ended.is_set():
            self.dialer.pj.dispose(*self.players)
            self.players = []
            self.audio = None

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        for mi in info.media:
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.audio = self.getAudioMedia(mi.index)
                self.state.media_up.set()


class Caller:
    """Runs every call of this process from the main thread."""

    def __init__(self, args: argparse.Namespace, clips: list[Clip]) -> None:
        self.args = args
        self.clips = clips
        self.rng = random.Random(args.seed)
        self.dialer = Dialer()
        # pjsua2 objects of live calls; touched on the pj thread only.
        self._objects: dict[int, Any] = {}
        self.runs: list[CallRun] = []
        self._out = threading.Lock()

    def say(self, line: str) -> None:
        with self._out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    # -- pj thread jobs ---------------------------------------------------------------------
    def _setup(self) -> None:
        ep = self.dialer.pj.ep
        for cid in ("PCMU/8000/1", "PCMA/8000/1"):
            prm = ep.codecGetParam(cid)
            prm.setting.plc = False  # a lost frame must be heard as a gap, not concealed
            ep.codecSetParam(cid, prm)

    def _dial(self, run: CallRun) -> None:
        call = BenchCall(self.dialer.account, run.state, self.dialer)
        call.forget = lambda: self._objects.pop(run.index, None)
        self._objects[run.index] = call
        call.makeCall(run.uri, pj.CallOpParam(True))
        run.sip_call_id = str(call.getInfo().callIdString)

    def _hangup(self, index: int) -> dict[str, Any]:
        call = self._objects.get(index)
        if call is None:
            return {}
        stats: dict[str, Any] = {}
        try:
            info = call.getInfo()  # keep it alive: .media points into it
            for mi in info.media:
                if mi.type == pj.PJMEDIA_TYPE_AUDIO:
                    st = call.getStreamStat(mi.index)
                    jb, rx = st.jbuf, st.rtcp.rxStat
                    stats = {
                        "jb_empty": int(jb.empty),
                        "jb_lost": int(jb.lost),
                        "jb_discard": int(jb.discard),
                        "jb_avg_delay_ms": int(jb.avgDelayMsec),
                        "jb_max_delay_ms": int(jb.maxDelayMsec),
                        "rx_pkt": int(rx.pkt),
                        "rx_loss": int(rx.loss),
                        "rx_jitter_max_ms": round(int(rx.jitterUsec.max) / 1000.0, 1),
                    }
                    break
        except Exception as exc:  # stats are a diagnostic; the call result still counts
            stats = {"error": str(exc)}
        call.state.hung_up_locally = True
        op = pj.CallOpParam()
        op.statusCode = 200 if call.state.confirmed_at else 603
        call.hangup(op)
        return stats

    # -- main thread ------------------------------------------------------------------------
    def start(self) -> None:
        self.dialer.start()
        self.dialer.pj.on_destroy(self._objects.clear)
        self.dialer.pj.submit(self._setup).result(10)

    def run(self, uris: list[str], stagger_s: float) -> None:
        a = self.args
        for i, uri in enumerate(uris):
            state = OutboundCall(uri, inbound=TimedInbound(), playout=TimedPlayout())
            run = CallRun(i, uri, state, a.turns, random.Random(self.rng.random()))
            self.runs.append(run)
            if i and stagger_s:
                time.sleep(stagger_s)
            run.deadline = time.monotonic() + 15.0
            self.dialer.pj.submit(partial(self._dial, run)).result(10)
        end_by = time.monotonic() + a.max_s
        while any(r.phase != "done" for r in self.runs):
            now = time.monotonic()
            for r in self.runs:
                self._step(r, now, force_end=now > end_by)
            time.sleep(0.02)  # the timestamps come from the media clock, not this loop
        for r in self.runs:
            r.take_frames()
            self.say("call " + json.dumps(report(r), separators=(",", ":")))

    def _step(self, r: CallRun, now: float, force_end: bool) -> None:
        a = self.args
        r.take_frames()
        st = r.state
        if r.phase == "done":
            return
        if st.ended.is_set() and r.phase != "ending":
            r.notes.append(f"call ended in phase {r.phase}: {st.status_code} {st.reason}")
            r.phase = "done"
            return
        if force_end and r.phase not in ("ending",):
            r.notes.append(f"ended by the time limit in phase {r.phase}")
            self._end(r)
            return
        quiet = r.last_active_at and now - r.last_active_at >= a.quiet_s
        if r.phase == "dialing":
            if st.confirmed.is_set():
                r.phase = "greeting"
                r.deadline = now + a.turn_timeout_s
                self.say(f"answered {r.index}")
            elif now > r.deadline:
                r.notes.append("not answered in 15 s")
                self._end(r)
        elif r.phase == "greeting":
            if quiet:
                self._think(r, now)
            elif now > r.deadline:
                r.notes.append("no greeting")
                self._think(r, now)
        elif r.phase == "think":
            if now >= r.think_until:
                self._speak(r)
        elif r.phase == "speaking":
            pl = r.playout
            first, last, final = r.watch
            if final in pl.seen and len(pl) == 0:
                turn = r.turns[-1]
                turn.start_at = pl.seen.get(first, 0.0)
                turn.end_at = pl.seen.get(last, now) + FRAME_S
                pl.seen.clear()
                r.heard_since = 0.0
                r.phase = "reply"
                r.deadline = now + a.turn_timeout_s
        elif r.phase == "reply":
            if r.heard_since and quiet and r.last_active_at > r.heard_since - FRAME_S:
                r.turns[-1].answered = True
                if len(r.turns) >= r.turns_wanted:
                    self._end(r)
                else:
                    self._think(r, now)
            elif now > r.deadline and not r.heard_since:
                r.notes.append(f"turn {len(r.turns)}: no reply")
                if len(r.turns) >= r.turns_wanted:
                    self._end(r)
                else:
                    self._think(r, now)
        elif r.phase == "ending" and (st.ended.is_set() or now > r.deadline):
            if not st.ended.is_set():
                r.notes.append("no end of call 5 s after hangup")
            r.phase = "done"

    def _think(self, r: CallRun, now: float) -> None:
        r.phase = "think"
        r.think_until = now + r.rng.uniform(self.args.think_min_s, self.args.think_max_s)

    def _speak(self, r: CallRun) -> None:
        clip = self.clips[(r.index + len(r.turns)) % len(self.clips)]
        pl = r.playout
        base = pl.frames_played + len(pl)  # play index of the clip's first frame, minus 1
        r.watch = (
            base + clip.first_voiced + 1,
            base + clip.last_voiced + 1,
            base + len(clip.frames),
        )
        pl.seen.clear()
        pl.watch = set(r.watch)
        r.turns.append(Turn())
        for f in clip.frames:
            pl.put(f)
        r.phase = "speaking"

    def _end(self, r: CallRun) -> None:
        self.say(f"hangup {r.index}")
        if not r.state.ended.is_set():
            r.stats = self.dialer.pj.submit(partial(self._hangup, r.index)).result(10)
        r.phase = "ending"
        r.deadline = time.monotonic() + 5.0

    def stop(self) -> None:
        self.dialer.stop()


class BackgroundCaller:
    """Open-loop load calls with C-only media (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clips: list[tuple[Path, float]] = [
            (p, len(read_wav_8k(p)) / (2 * 8000.0)) for p in args.clip
        ]
        self.rng = random.Random(args.seed)
        self.dialer = Dialer()
        self._objects: dict[int, Any] = {}  # pj thread only
        self.states: list[OutboundCall] = []
        self.call_ids: dict[int, str] = {}

    def start(self) -> None:
        self.dialer.start()
        self.dialer.pj.on_destroy(self._objects.clear)

    def _dial(self, index: int, state: OutboundCall) -> None:
        call = LoadCall(self.dialer.account, state, self.dialer)
        call.players = [self._player(path) for path, _ in self.clips]
        call.forget = lambda: self._objects.pop(index, None)
        self._objects[index] = call
        call.makeCall(state.uri, pj.CallOpParam(True))
        self.call_ids[index] = str(call.getInfo().callIdString)

    @staticmethod
    def _player(path: Path) -> Any:
        player = pj.AudioMediaPlayer()
        player.createPlayer(str(path), pj.PJMEDIA_FILE_NO_LOOP)
        return player

    def _play(self, index: int, clip: int, on: bool) -> None:
        call = self._objects.get(index)
        if call is None or call.audio is None:
            return
        player = call.players[clip]
        if on:
            player.setPos(0)
            player.startTransmit(call.audio)
        else:
            player.stopTransmit(call.audio)

    def _hangup(self, index: int) -> None:
        call = self._objects.get(index)
        if call is not None:
            op = pj.CallOpParam()
            op.statusCode = 200
            call.hangup(op)

    def run(self, uris: list[str]) -> list[dict[str, Any]]:
        a = self.args
        pjt = self.dialer.pj
        for i, uri in enumerate(uris):
            state = OutboundCall(uri)
            self.states.append(state)
            if i and a.stagger_ms:
                time.sleep(a.stagger_ms / 1000.0)
            pjt.submit(partial(self._dial, i, state)).result(10)
        # (time, call, action, clip): an event list drives every call of the process
        events: list[tuple[float, int, str, int]] = []
        answered: set[int] = set()
        turns = [0] * len(uris)
        end_by = time.monotonic() + a.max_s
        while time.monotonic() < end_by:
            now = time.monotonic()
            for i, st in enumerate(self.states):
                if i not in answered and st.confirmed.is_set():
                    answered.add(i)
                    self.say(f"answered {i}")
                    # the greeting (~1.7 s of tone) plays first
                    events.append((now + 2.2 + self.rng.uniform(0.2, 0.6), i, "speak", 0))
            due = sorted(e for e in events if e[0] <= now)
            events = [e for e in events if e[0] > now]
            for _, i, action, clip in due:
                if action == "speak":
                    clip = (i + turns[i]) % len(self.clips)
                    turns[i] += 1
                    pjt.submit(partial(self._play, i, clip, True)).result(10)
                    dur = self.clips[clip][1]
                    events.append((now + dur, i, "quiet", clip))
                elif action == "quiet":
                    pjt.submit(partial(self._play, i, clip, False)).result(10)
                    if turns[i] >= a.turns:
                        # wait for the last reply, then hang up
                        events.append((now + a.reply_s, i, "hangup", 0))
                    else:
                        pause = a.reply_s + self.rng.uniform(a.think_min_s, a.think_max_s)
                        events.append((now + pause, i, "speak", 0))
                elif action == "hangup":
                    self.say(f"hangup {i}")
                    pjt.submit(partial(self._hangup, i)).result(10)
            if len(answered) == len(uris) and not events:
                break
            if all(st.ended.is_set() for st in self.states):
                break
            time.sleep(0.05)
        for i, st in enumerate(self.states):
            if not st.ended.is_set():
                pjt.submit(partial(self._hangup, i)).result(10)
        for st in self.states:
            st.ended.wait(5)
        return [
            {
                "uri": st.uri,
                "sip_call_id": self.call_ids.get(i, ""),
                "background": True,
                "answered": bool(st.confirmed_at),
                "status_code": st.status_code,
                "turns_spoken": turns[i],
                "ok": bool(st.confirmed_at)
                and turns[i] >= a.turns,  # the agent's side: capacity.py
                "notes": [] if st.confirmed_at else [f"not answered: {st.status_code}"],
            }
            for i, st in enumerate(self.states)
        ]

    def say(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def stop(self) -> None:
        self.dialer.stop()


def _gaps(times: list[float], active: list[bool], lo: int, hi: int) -> list[tuple[float, int]]:
    """Silent runs in frames lo..hi (both tone frames): (arrival of the first silent frame,
    length in ms)."""
    gaps: list[tuple[float, int]] = []
    run = 0
    for i in range(lo, hi + 1):
        if active[i]:
            if run:
                gaps.append((round(times[i - run], 4), run * FRAME_MS))
            run = 0
        else:
            run += 1
    return gaps


def _reply(r: CallRun, t0: float, t1: float) -> dict[str, Any] | None:
    """The agent's reply heard between t0 and t1, or None."""
    times = r.arrivals
    idx = [i for i in range(len(times)) if t0 <= times[i] - FRAME_S < t1 and r.active[i]]
    if not idx:
        return None
    lo, hi = idx[0], idx[-1]
    inter = np.diff(np.asarray(times[lo : hi + 1])) if hi > lo else np.zeros(1)
    return {
        "first_audio_at": round(times[lo] - FRAME_S, 4),
        "reply_ms": (hi - lo + 1) * FRAME_MS,
        "gaps": _gaps(times, r.active, lo, hi),
        "max_interarrival_ms": round(float(inter.max()) * 1000.0, 1),
    }


def report(r: CallRun) -> dict[str, Any]:
    """The call's JSON report."""
    st = r.state
    bounds = [t.start_at for t in r.turns if t.start_at] + [float("inf")]
    out_turns: list[dict[str, Any]] = []
    greeting = _reply(r, st.confirmed_at, bounds[0]) if st.confirmed_at else None
    for k, t in enumerate(r.turns):
        if not t.end_at:
            continue
        nxt = r.turns[k + 1].start_at if k + 1 < len(r.turns) else float("inf")
        rep = _reply(r, t.end_at, nxt or float("inf"))
        item: dict[str, Any] = {"end_of_speech_at": round(t.end_at, 4)}
        if rep is not None:
            item.update(rep)
            item["latency_ms"] = round((rep["first_audio_at"] - t.end_at) * 1000.0, 1)
        out_turns.append(item)
    # Tone heard while we were talking: a reply split by a long underrun, or a late tail.
    stray = 0
    for t in r.turns:
        if t.start_at and t.end_at:
            stray += sum(
                1
                for i, at in enumerate(r.arrivals)
                if t.start_at <= at - FRAME_S < t.end_at and r.active[i]
            )
    answered = sum(1 for t in out_turns if "latency_ms" in t)
    return {
        "uri": r.uri,
        "sip_call_id": r.sip_call_id,
        "answered": bool(st.confirmed_at),
        "status_code": st.status_code,
        "greeting": greeting,
        "turns": out_turns,
        "turns_wanted": r.turns_wanted,
        "ok": bool(st.confirmed_at) and greeting is not None and answered == r.turns_wanted,
        "stray_frames": stray,
        "frames_received": len(r.arrivals),
        "stats": r.stats,
        "notes": r.notes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("uris", nargs="+", help="one SIP URI per call (at most 4)")
    ap.add_argument("--clip", type=Path, action="append", required=True, help="speech WAV")
    ap.add_argument("--turns", type=int, default=4, help="utterances per call")
    ap.add_argument("--quiet-s", type=float, default=0.5, help="silence that ends a reply")
    ap.add_argument("--think-min-s", type=float, default=0.2)
    ap.add_argument("--think-max-s", type=float, default=0.6)
    ap.add_argument("--turn-timeout-s", type=float, default=10.0)
    ap.add_argument("--max-s", type=float, default=180.0, help="hang up everything after")
    ap.add_argument("--stagger-ms", type=float, default=0.0, help="between this process' calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-wait", action="store_true", help="dial at once, without 'go'")
    ap.add_argument("--background", action="store_true", help="open-loop load calls")
    ap.add_argument(
        "--reply-s", type=float, default=3.6, help="background: pause for the agent's reply"
    )
    args = ap.parse_args()
    if len(args.uris) > 4:
        ap.error("a pjsua2 process holds at most 4 calls")
    if args.background:
        return _run_background(args)
    clips = [Clip.load(p) for p in args.clip]
    caller = Caller(args, clips)
    try:
        caller.start()
        caller.say("ready")
        if not args.no_wait:
            line = sys.stdin.readline()
            if not line.startswith("go"):
                return 2
        caller.run(args.uris, args.stagger_ms / 1000.0)
    finally:
        caller.stop()
    return 0 if all(report(r)["ok"] for r in caller.runs) else 1


def _run_background(args: argparse.Namespace) -> int:
    bg = BackgroundCaller(args)
    try:
        bg.start()
        bg.say("ready")
        if not args.no_wait and not sys.stdin.readline().startswith("go"):
            return 2
        reports = bg.run(args.uris)
    finally:
        bg.stop()
    for rep in reports:
        bg.say("call " + json.dumps(rep, separators=(",", ":")))
    return 0 if all(r["ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
