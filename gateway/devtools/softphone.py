"""`sipagent call`: a test softphone that talks to the agent and reports what it heard.

The call is SIP (`gateway.sip.dialer.Dialer`) for a ``sip:`` URI, or a Plivo audio
stream (`gateway.devtools.plivo_stream.StreamDialer`, playing Plivo's side of the
WebSocket) for a ``ws://``/``wss://`` URL or an answer_url (``http(s)://``); the script
below is the same for both, but for the SIP-only steps (hold, switch-codec, refresh).

It dials, waits for the greeting, then runs its steps: `say` (Piper speech), `play` (a
WAV) or `dtmf` (keypad keys, RFC 4733 or SIP INFO) once the agent has stopped talking, or
`barge` / `barge-dtmf` (speech or keys started part-way into the agent's next turn);
`hold` (a re-INVITE to sendonly, a hold announcement, then back to sendrecv),
`switch-codec` (a re-INVITE offering one codec) and `refresh` (an UPDATE session refresh).
Keys the agent sends, the codec after each offer/answer and the agent's Session-Expires
are reported too. The agent's audio is segmented into turns by level (the far end is
clean TTS, so silence between turns is near digital silence) and timed on arrival:

- greeting: answer → first agent audio;
- reply latency: end of our last voiced frame on the wire → first agent audio;
- barge-in stop: first voiced frame of our barge-in → last agent audio of the interrupted turn.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.audio.pcm import FRAME_MS, read_wav_8k, rms_dbfs, split_frames, write_wav

ACTIVE_DBFS = -45.0
KEY_STEPS = ("dtmf", "barge-dtmf")
# Steps that change the call itself rather than say anything.
CALL_STEPS = ("switch-codec", "refresh")
# Steps that start part-way into the agent's next turn.
MID_TURN_STEPS = ("barge", "barge-dtmf", "hold")
DTMF_DURATION_MS = 160
# What the caller's side plays while it holds the agent (a PBX's hold announcement): speech,
# so an agent that listened on hold would take it for a turn.
HOLD_ANNOUNCEMENT = "Please stay on the line. Your call is important to us."


@dataclass
class CallScript:
    """What the softphone does on the call."""

    steps: list[tuple[str, str]] = field(default_factory=list)
    barge_after_s: float = 1.5
    record: Path | None = None
    transcribe: bool = False
    expect: Path | None = None  # a playbook whose replies the transcriber expects
    json: bool = False
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    turn_timeout_s: float = 20.0
    gap_s: float = 0.8
    hold_s: float = 0.0
    no_hangup: bool = False
    vanish: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    dtmf_method: str = "rfc4733"  # or "info"
    session_expires_s: int = 0  # ask for SIP session timers (RFC 4028) with this interval
    auth: tuple[str, str] | None = None  # digest user and password for a challenge
    # A Plivo stream (ws://, wss://, or an answer_url): the auth token that signs the
    # upgrade (and the answer_url request), the start event's extra_headers, whether the
    # hang-up sends a stop event before the close, and the answer_url's From, To and
    # CallUUID ("": a new one).
    auth_token: str = ""
    extra_headers: str = ""
    send_stop: bool = True
    caller: str = "+15550100001"
    called: str = "+15550100002"
    call_uuid: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CallScript:
        """Build from `sipagent call` arguments."""
        return cls(
            steps=list(args.steps or []),
            barge_after_s=args.barge_after,
            record=args.record,
            transcribe=args.transcribe,
            expect=getattr(args, "expect", None),
            json=args.json,
            codecs=tuple(c.strip() for c in args.codecs.split(",") if c.strip()),
            turn_timeout_s=args.timeout,
            hold_s=args.hold,
            no_hangup=args.no_hangup,
            vanish=args.vanish,
            headers=dict(args.headers or []),
            dtmf_method="info" if getattr(args, "dtmf_method", "rfc4733") == "info" else "rfc4733",
            session_expires_s=getattr(args, "session_expires", 0),
            auth=getattr(args, "auth", None),
            auth_token=getattr(args, "auth_token", None) or "",
            extra_headers=getattr(args, "extra_headers", None) or "",
            send_stop=not getattr(args, "no_stop", False),
            caller=getattr(args, "caller", None) or cls.caller,
            called=getattr(args, "called", None) or cls.called,
            call_uuid=getattr(args, "call_uuid", None) or "",
        )


@dataclass
class Segment:
    """One stretch of agent audio."""

    start: float  # back-dated: its first frame began FRAME_MS before it arrived
    last_active: float
    start_frame: int
    end_frame: int
    closed: bool = False
    text: str = ""
    heard_at: float = 0.0  # when its first frame arrived


@dataclass
class StepResult:
    """What happened for one step."""

    kind: str
    text: str
    sent_at_ms: float = 0.0
    end_of_speech_ms: float = 0.0
    reply_latency_ms: float | None = None
    reply_text: str = ""
    barge_stop_ms: float | None = None
    ok: bool = False
    # CLOCK_MONOTONIC seconds, comparable with the agent's TURN records on this machine
    end_of_speech_at: float = 0.0
    reply_at: float = 0.0


class _Audio:
    """Synthesises `say` texts with Piper (loaded on first use)."""

    def __init__(self) -> None:
        self._tts: Any = None

    def speech(self, kind: str, value: str) -> bytes:
        if kind in KEY_STEPS or kind in CALL_STEPS:
            return b""  # keys or signalling, not audio
        if kind == "hold":
            value = HOLD_ANNOUNCEMENT
        if kind == "play":
            return read_wav_8k(value)
        if self._tts is None:
            from gateway.providers.piper_tts import PiperTts

            self._tts = PiperTts()
        pcm: bytes = self._tts.synthesize_blocking(value)
        return pcm


def _voiced_bounds(frames: list[bytes]) -> tuple[int, int]:
    """Index of the first and one past the last voiced frame."""
    active = [i for i, f in enumerate(frames) if rms_dbfs(f) > ACTIVE_DBFS]
    if not active:
        return 0, len(frames)
    return active[0], active[-1] + 1


class Softphone:
    """Drives one call (main thread) against the Dialer's pj thread."""

    def __init__(self, uri: str, script: CallScript) -> None:
        self.uri = uri
        self.script = script
        self.recording: list[bytes] = []
        self.segments: list[Segment] = []
        self._open: Segment | None = None
        self.results: list[StepResult] = []
        self.greeting_ms: float | None = None
        self.call: Any = None
        self.t0 = 0.0
        self.log: list[str] = []
        self.transfers: list[Any] = []  # the Dialer's TransferRequests
        self.stream: dict[str, Any] = {}  # a Plivo stream's summary (StreamDialer)
        # Set by SIGUSR1: the `--hold` wait ends early (a test hangs up a caller it kept on
        # the line as soon as it has seen what it needed).
        self.released = threading.Event()

    # -- receive side -----------------------------------------------------------------------
    def pump(self) -> None:
        """Take received frames and update the agent-speech segments."""
        call = self.call
        while True:
            frame = call.inbound.pop()
            if frame is None:
                break
            now = time.monotonic()
            idx = len(self.recording)
            self.recording.append(frame)
            if rms_dbfs(frame) > ACTIVE_DBFS:
                if self._open is None:
                    # Back-date to the frame's start: it arrived FRAME_MS after it began.
                    self._open = Segment(now - FRAME_MS / 1000, now, idx, idx + 1, heard_at=now)
                    self.segments.append(self._open)
                self._open.last_active = now
                self._open.end_frame = idx + 1
        seg = self._open
        if seg is not None and time.monotonic() - seg.last_active >= self.script.gap_s:
            seg.closed = True
            self._open = None

    def wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        """Pump until `cond()` or timeout or the call ended."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if cond():
                return True
            if self.call.ended.is_set() or time.monotonic() >= deadline:
                self.pump()
                return cond()
            time.sleep(0.005)

    def _segment_after(self, t: float) -> Segment | None:
        """The first agent segment heard after `t`.  (Its back-dated start can precede `t`
        when the agent answers within a frame, as it does to a SIP INFO key.)"""
        for seg in self.segments:
            if seg.heard_at > t:
                return seg
        return None

    def _rel(self, t: float) -> float:
        return round((t - self.t0) * 1000.0, 1)

    # -- send side --------------------------------------------------------------------------
    def send(self, pcm: bytes) -> tuple[float, float]:
        """Queue speech; returns (first voiced frame out, end of last voiced frame out)."""
        frames = split_frames(pcm)
        first, last = _voiced_bounds(frames)
        playout = self.call.playout
        base = playout.frames_played + len(playout)
        for f in frames:
            playout.put(f)
        # Wall time of frame k going out = when frames_played passes base + k.
        t_first = t_last = 0.0
        while len(playout) > 0 and not self.call.ended.is_set():
            played = playout.frames_played - base
            now = time.monotonic()
            if not t_first and played > first:
                t_first = now
            if not t_last and played >= last:
                t_last = now + FRAME_MS / 1000
            self.pump()
            time.sleep(0.002)
        now = time.monotonic()
        return (t_first or now), (t_last or now)

    # -- the script -------------------------------------------------------------------------
    def run(self, dialer: Any, clips: list[bytes]) -> int:
        s = self.script
        self.call = dialer.dial(self.uri, s.headers)
        if not self._answered(15):
            self.call.ended.wait(5)
            self.note(f"call failed: {self.call.status_code} {self.call.reason}".strip())
            return 1
        # Answered, even if the far end hung up before we looked (a BYE tens of ms after
        # the 200 OK): the script stops at once and the report says how the call went.
        self.t0 = self.call.confirmed_at
        self.note(f"answered ({self.call.status_code})")
        ok = self.wait(lambda: bool(self.segments), s.turn_timeout_s)
        if not ok:
            self.note("no greeting heard")
        else:
            self.greeting_ms = self._rel(self.segments[0].start)
        next_is_barge = [
            i + 1 < len(s.steps) and s.steps[i + 1][0] in MID_TURN_STEPS
            for i in range(len(s.steps))
        ]
        for i, ((kind, value), clip) in enumerate(zip(s.steps, clips, strict=True)):
            if self.call.ended.is_set():
                break
            res = StepResult(kind, value)
            self.results.append(res)
            if kind in ("barge", "barge-dtmf"):
                self._barge(res, clip, dialer if kind == "barge-dtmf" else None)
            elif kind == "hold":
                self._hold(res, dialer, float(value), clip)
            elif kind in CALL_STEPS:
                self.wait(lambda: self._open is None, s.turn_timeout_s)
                self._call_step(res, dialer)
            else:
                # Speak (or press) once the agent is quiet.
                self.wait(lambda: self._open is None, s.turn_timeout_s)
                if kind == "dtmf":
                    t_first, t_end = self.press(dialer, value)
                else:
                    t_first, t_end = self.send(clip)
                res.sent_at_ms, res.end_of_speech_ms = self._rel(t_first), self._rel(t_end)
                self._await_reply(res, t_end)
            if res.reply_latency_ms is not None and not next_is_barge[i]:
                self.wait(lambda: self._open is None, s.turn_timeout_s * 3)
        if not self.call.ended.is_set():
            self.wait(lambda: self._open is None, s.turn_timeout_s * 3)
            if s.hold_s:
                self.wait(self.released.is_set, s.hold_s)
        if s.vanish:
            return self.finish(dialer, vanish=True)
        if s.no_hangup:
            self.wait(self.call.ended.is_set, s.turn_timeout_s * 3)
        return self.finish(dialer)

    def _answered(self, timeout: float) -> bool:
        """Wait for the answer; False at once when the call is refused (486, 488, ...)."""
        call = self.call
        deadline = time.monotonic() + timeout
        while not call.confirmed.is_set():
            if call.ended.is_set() or time.monotonic() >= deadline:
                return False
            call.ended.wait(0.01)
        return True

    def _await_reply(self, res: StepResult, t_end: float) -> None:
        got = self.wait(lambda: self._segment_after(t_end) is not None, self.script.turn_timeout_s)
        seg = self._segment_after(t_end)
        res.end_of_speech_at = round(t_end, 4)
        if got and seg is not None:
            res.reply_at = round(seg.start, 4)
            res.reply_latency_ms = round(max(0.0, seg.start - t_end) * 1000.0, 1)
            res.ok = True

    def press(self, dialer: Any, digits: str) -> tuple[float, float]:
        """Send keys; returns (first key out, last key out).  RFC 4733 keys go out one
        after another (DTMF_DURATION_MS each); SIP INFO requests go out at once."""
        t_first = time.monotonic()
        dialer.send_dtmf(digits, self.script.dtmf_method, DTMF_DURATION_MS)
        if self.script.dtmf_method == "info":
            # The requests leave at once; the agent may be answering before this returns.
            return t_first, t_first
        return t_first, t_first + (len(digits) - 1) * DTMF_DURATION_MS / 1000.0

    def _barge(self, res: StepResult, clip: bytes, keys_via: Any = None) -> None:
        s = self.script
        target = self._next_turn()  # the agent's turn we interrupt
        if target is None:
            return
        self.wait(lambda: time.monotonic() - target.start >= s.barge_after_s, s.turn_timeout_s)
        if keys_via is not None:
            t_first, t_end = self.press(keys_via, res.text)
        else:
            t_first, t_end = self.send(clip)
        res.sent_at_ms, res.end_of_speech_ms = self._rel(t_first), self._rel(t_end)
        self.wait(lambda: target.closed, s.turn_timeout_s)
        res.barge_stop_ms = round((target.last_active - t_first) * 1000.0, 1)
        self._await_reply(res, t_end)

    def _hold(self, res: StepResult, dialer: Any, seconds: float, announcement: bytes) -> None:
        """Put the agent on hold (part-way into the turn it is playing, or at once when it
        is quiet), play the hold announcement for `seconds`, take it off hold. The reply is
        the agent's audio resuming, if it was talking."""
        s = self.script
        target = self._open
        if target is not None:
            self.wait(lambda: time.monotonic() - target.start >= s.barge_after_s, s.turn_timeout_s)
        t_hold = time.monotonic()
        try:
            dialer.hold()
            for frame in split_frames(announcement):
                self.call.playout.put(frame)
            self.wait(lambda: False, seconds)
            self.call.playout.clear()
            t_back = time.monotonic()
            dialer.unhold()
        except dialer.error as exc:
            self.note(f"hold: {exc}")
            return
        self.note(f"held the agent {round((t_back - t_hold) * 1000)} ms")
        res.sent_at_ms, res.end_of_speech_ms = self._rel(t_hold), self._rel(t_back)
        if target is not None:
            self._await_reply(res, t_back)
        else:
            res.ok = True

    def _call_step(self, res: StepResult, dialer: Any) -> None:
        """Re-INVITE to another codec, or refresh the session by UPDATE; ok once the far end
        accepted (its 2xx arrived)."""
        call = self.call
        t = time.monotonic()
        res.sent_at_ms = res.end_of_speech_ms = self._rel(t)
        answers = len(call.session_expires)
        try:
            if res.kind == "switch-codec":
                dialer.switch_codec(res.text)
            else:
                dialer.refresh()
        except dialer.error as exc:
            self.note(f"{res.kind}: {exc}")
            return
        if res.kind == "switch-codec":
            codec = res.text.upper() + "/"
            res.ok = self.wait(lambda: bool(call.codecs) and call.codecs[-1].startswith(codec), 5)
        else:
            res.ok = self.wait(lambda: len(call.session_expires) > answers, 5)
        if not res.ok:
            self.note(f"{res.kind} {res.text}: no answer from the far end".rstrip())

    def _next_turn(self) -> Segment | None:
        """The agent's turn playing now, or the next one to start."""
        if self._open is None:
            t = time.monotonic()
            self.wait(lambda: self._segment_after(t) is not None, self.script.turn_timeout_s)
        if self._open is None:
            self.note("the agent did not start a turn")
        return self._open

    def finish(self, dialer: Any, vanish: bool = False) -> int:
        """Hang up (unless the agent did), write outputs, return the exit status."""
        if vanish:
            self.note("vanishing without BYE")
            self.report()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0 if self.success() else 1)
        if not self.call.ended.is_set():
            dialer.hangup()
            self.call.ended.wait(5)
        self.transfers = list(dialer.transfers)
        summary = getattr(dialer, "summary", None)
        if summary is not None:
            self.stream = summary()
        for line in getattr(dialer, "notes", ()):
            self.note(line)  # a stream's protocol errors
        for t in self.transfers:
            self.note(f"transfer requested to {t.to}: {t.call.status_code} {t.call.reason}")
        self.pump()
        for seg in self.segments:
            seg.closed = True
        self.report()
        return 0 if self.success() else 1

    def success(self) -> bool:
        """Answered, greeted, and every step answered."""
        return self.greeting_ms is not None and all(r.ok for r in self.results)

    def note(self, line: str) -> None:
        """Remember a status line for the report."""
        self.log.append(line)

    def report(self) -> None:
        """Print the conversation (and JSON if asked); write the recording."""
        s = self.script
        if s.record is not None:
            write_wav(s.record, b"".join(self.recording))
        if s.transcribe:
            self._transcribe()
        ended_by = "caller" if getattr(self.call, "hung_up_locally", False) else "agent"
        if s.vanish:
            ended_by = "caller-vanished"
        events: list[tuple[float, str]] = []
        for seg in self.segments:
            dur = (seg.end_frame - seg.start_frame) * FRAME_MS
            events.append((self._rel(seg.start), f"agent ({dur} ms): {seg.text or '…'}"))
        for r in self.results:
            extra = ""
            if r.reply_latency_ms is not None:
                extra = f" → agent answered {r.reply_latency_ms:.0f} ms after you stopped"
            else:
                extra = " → no answer"
            if r.barge_stop_ms is not None:
                extra += f"; agent audio stopped {r.barge_stop_ms:.0f} ms after you started"
            events.append((r.sent_at_ms, f"you ({r.kind}): {r.text}{extra}"))
        received = list(self.call.dtmf_received)
        for key, method, at in received:
            events.append((self._rel(at), f"agent sent DTMF {key} ({method})"))
        for line in self.log:
            print(f"sipagent call: {line}", file=sys.stderr)
        if self.greeting_ms is not None:
            print(f"greeting heard {self.greeting_ms:.0f} ms after answer")
        for t, text in sorted(events):
            print(f"[{t / 1000:7.2f}s] {text}")
        print(
            f"call ended by {ended_by}" if self.call.ended.is_set() or s.vanish else "call still up"
        )
        if s.json:
            out = {
                "uri": self.uri,
                "status_code": self.call.status_code,
                "answered": bool(self.call.confirmed_at),
                "greeting_ms": self.greeting_ms,
                "ended_by": ended_by,
                "steps": [asdict(r) for r in self.results],
                "segments": [
                    {
                        "start_ms": self._rel(seg.start),
                        # CLOCK_MONOTONIC, comparable with the agent's TURN records
                        "at": round(seg.start, 4),
                        "duration_ms": (seg.end_frame - seg.start_frame) * FRAME_MS,
                        "text": seg.text,
                    }
                    for seg in self.segments
                ],
                "dtmf_received": "".join(key for key, _, _ in received),
                "dtmf_events": [
                    {"key": key, "method": method, "at_ms": self._rel(at)}
                    for key, method, at in received
                ],
                "notes": self.log,
                # The codec after each offer/answer, and the Session-Expires of each 2xx
                # the agent sent to our INVITEs and UPDATEs.
                "codecs": list(self.call.codecs),
                "session_expires": list(self.call.session_expires),
                # REFERs the agent sent, and how the call to each target went.
                "transfers": [
                    {
                        "to": t.to,
                        "status_code": t.call.status_code,
                        "answered": bool(t.call.confirmed_at),
                    }
                    for t in self.transfers
                ],
                "ok": self.success(),
            }
            if self.stream:
                out["stream"] = self.stream  # a Plivo stream's view of the call
            print(json.dumps(out))
        sys.stdout.flush()

    def _transcribe(self) -> None:
        from gateway.providers.pocketsphinx_stt import new_decoder, transcribe

        decoder = new_decoder(_reply_corpus(self.script.expect))
        for seg in self.segments:
            pcm = b"".join(self.recording[seg.start_frame : seg.end_frame])
            seg.text = transcribe(pcm, decoder)
        for r in self.results:
            r.reply_text = ""
        # Attach each reply's text: the segment its latency was measured to.
        for r in self.results:
            if r.reply_latency_ms is None:
                continue
            for seg in self.segments:
                if round(seg.start, 4) == r.reply_at:
                    r.reply_text = seg.text
                    break


def _reply_corpus(path: Path | None) -> str | None:
    """What the agent says, from its playbook: the transcriber's expected text."""
    if path is None:
        return None
    from gateway.providers.scripted import load_playbook
    from gateway.providers.sphinx_bias import corpus, reply_phrases
    from gateway.providers.sphinx_native import dictionary_path

    return corpus(reply_phrases(load_playbook(path)), dictionary_path())[0]


def _dialer(uri: str, script: CallScript) -> Any:
    """The dialer for ``uri``: a Plivo stream's, or SIP's."""
    from gateway.devtools.plivo_stream import StreamDialer, is_stream_uri

    if is_stream_uri(uri):
        return StreamDialer(
            auth_token=script.auth_token,
            extra_headers=script.extra_headers,
            send_stop=script.send_stop,
            caller=script.caller,
            called=script.called,
            call_uuid=script.call_uuid,
        )
    from gateway.sip.dialer import Dialer

    return Dialer(
        codecs=script.codecs, session_expires_s=script.session_expires_s, auth=script.auth
    )


def run_softphone(uri: str, script: CallScript) -> int:
    """Place the call (SIP, or a Plivo stream for ws://, wss:// or an answer_url) and run
    the script; returns the exit status."""
    audio = _Audio()
    try:
        clips = [audio.speech(kind, value) for kind, value in script.steps]
    except (OSError, EOFError, wave.Error, ValueError) as exc:
        print(f"sipagent call: cannot use that audio: {exc}", file=sys.stderr)
        return 2
    dialer = _dialer(uri, script)
    try:
        dialer.start()
    except dialer.error as exc:
        print(f"sipagent call: {exc}", file=sys.stderr)
        return 1
    phone = Softphone(uri, script)
    previous = signal.signal(signal.SIGUSR1, lambda _sig, _frame: phone.released.set())
    rc = 1
    try:
        rc = phone.run(dialer, clips)
        if phone.call is not None and not phone.call.confirmed_at:
            phone.report()
        return rc
    finally:
        signal.signal(signal.SIGUSR1, previous)
        dialer.stop()
        if dialer.alive:
            # The report is out, but the dialer (pjsua2, or the stream's loop) did not shut
            # down in time: leave now rather than let the interpreter's teardown wait on it.
            print("sipagent call: the call's stack did not stop in time", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
