#!/usr/bin/env python3
"""Capacity: how many conversing calls one machine holds with cloud-like providers.

For each step K it starts `sipagent serve --workers ceil(K/4)` with the "fake" providers
given the latencies of a published peer benchmark (STT final 200 ms, LLM first token 150 ms,
TTS first byte 80 ms; the TTS streams a continuous tone `--tts-speed` times faster than real
time), then drives K concurrent calls from ceil(K/4) load-generator processes
(`capacity_caller.py`, 4 pjsua2 calls each) that speak real speech (questions rendered once
with Piper) for `--turns` turns per call. It stops the server (SIGTERM: drain) and prints:

- calls completed (answered, greeted, every turn answered);
- underrun gaps: silent frames inside the agent's replies as the callers hear them (count,
  p99 and max length; PLC is off in the callers, so a late RTP packet is a gap too);
- turn overhead = wire latency (caller's end of speech → first agent audio) − end-of-turn
  wait − mocked provider time, p50/p95; also the agent's own view from its TURN records;
- CPU % of the whole machine in the steady part (all calls up, none ended yet), split into
  the server's processes and the load generators;
- RSS (and PSS, which counts shared pages once) of the server's processes per call.

Usage: python scripts/bench/capacity.py [--steps 8,16,32,48,64] [--turns 4]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CALLER = Path(__file__).resolve().parent / "capacity_caller.py"
QUESTIONS = [
    "What are your opening hours?",
    "Where are you located?",
    "Do you sell croissants?",
    "Are you open on Sunday?",
    "I would like to order a birthday cake.",
    "Is there parking near the shop?",
]
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def pct(values: list[float], q: float) -> float:
    """Percentile (linear interpolation); NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


# -- speech clips ---------------------------------------------------------------------------
def render_clips(directory: Path, questions: list[str]) -> list[Path]:
    """8 kHz WAVs of the questions, rendered with Piper once and cached in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [
        directory / f"q-{hashlib.sha1(q.encode()).hexdigest()[:12]}.wav" for q in questions
    ]
    missing = [(q, p) for q, p in zip(questions, paths, strict=True) if not p.exists()]
    if missing:
        from gateway.audio.pcm import write_wav
        from gateway.providers.piper_tts import PiperTts

        print(f"rendering {len(missing)} question(s) with Piper into {directory}", file=sys.stderr)
        tts = PiperTts()
        for q, p in missing:
            tmp = p.with_suffix(".tmp")
            write_wav(tmp, tts.synthesize_blocking(q))
            tmp.replace(p)
    return paths


# -- /proc sampling -------------------------------------------------------------------------
def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # guest time is already inside user/nice
    return total - idle, total


def _proc_ticks(pid: int) -> int:
    """utime + stime of a process, in jiffies (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in kB (0 if it is gone)."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


@dataclass
class Sample:
    """CPU counters at one moment."""

    at: float
    busy: int
    total: int
    agent: int
    callers: int


class Sampler:
    """Samples machine and per-group CPU every `interval` seconds on a thread."""

    def __init__(self, agent_pid: int, caller_pids: list[int], interval: float = 0.5) -> None:
        self.agent_pid = agent_pid
        self.caller_pids = caller_pids
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _take(self) -> Sample:
        busy, total = _machine_ticks()
        agent = sum(_proc_ticks(p) for p in process_tree(self.agent_pid))
        callers = sum(_proc_ticks(p) for p in self.caller_pids)
        return Sample(time.monotonic(), busy, total, agent, callers)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._take())
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def window(self, t0: float, t1: float) -> dict[str, float] | None:
        """CPU use between the first sample after t0 and the last before t1, in % of the
        whole machine (all cores = 100)."""
        inside = [s for s in self.samples if t0 <= s.at <= t1]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        dt = b.at - a.at
        cap = dt * CLK_TCK * NCPU
        return {
            "seconds": dt,
            "machine": 100.0 * (b.busy - a.busy) / max(1, b.total - a.total),
            "agent": 100.0 * (b.agent - a.agent) / cap,
            "callers": 100.0 * (b.callers - a.callers) / cap,
        }


# -- the server -----------------------------------------------------------------------------
def free_port_block(n: int, start: int = 15000, end: int = 19900) -> int:
    """First port of `n` consecutive free UDP ports on 127.0.0.1."""
    base = start
    while base + n < end:
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            base += n + 1
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free UDP ports")


class Server:
    """`sipagent serve` with fake providers; its stderr lines are collected."""

    def __init__(self, workers: int, env: dict[str, str], workdir: Path) -> None:
        self.base = free_port_block(workers + 1)
        cmd = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--listen",
            f"127.0.0.1:{self.base}",
            "--workers",
            str(workers),
        ]
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.ports: dict[int, int] = {}
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=workdir,  # no stray .env
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("sipagent: worker ") and " listening on udp " in line:
                words = line.split()
                with contextlib.suppress(ValueError, IndexError):
                    index = int(words[2])
                    addr = words[words.index("udp") + 1]
                    self.ports[index] = int(addr.rsplit(":", 1)[1])
            elif line.startswith("sipagent: ready:"):
                self.ready.set()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.wait(0.2):
                return True
            if self.proc.poll() is not None:
                return False
        return False

    def uri(self, index: int) -> str:
        return f"sip:agent@127.0.0.1:{self.ports.get(index, self.base + index)}"

    def turns(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            if " TURN {" in line:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line.split(" TURN ", 1)[1]))
        return out

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain), SIGKILL the whole group if it does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
        self._reader.join(2)
        return int(self.proc.returncode)


# -- the load generators --------------------------------------------------------------------
class CallerProc:
    """One `capacity_caller.py` process (up to 4 calls)."""

    def __init__(self, uris: list[str], clips: list[Path], args: argparse.Namespace, seed: int):
        cmd = [sys.executable, str(CALLER), *uris, "--turns", str(args.turns)]
        cmd += ["--seed", str(seed), "--stagger-ms", str(args.stagger_ms)]
        cmd += ["--max-s", str(args.max_call_s)]
        for c in clips:
            cmd += ["--clip", str(c)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.ready = threading.Event()
        self.reports: list[dict[str, Any]] = []
        self.events: list[tuple[float, str]] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line == "ready":
                self.ready.set()
            elif line.startswith("call "):
                self.reports.append(json.loads(line[5:]))
            elif line:
                self.events.append((time.monotonic(), line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))

    def go(self) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write("go\n")
        stdin.flush()

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        for t in self._threads:
            t.join(2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# -- one step ------------------------------------------------------------------------------
@dataclass
class StepResult:
    """What one step measured."""

    calls: int
    workers: int
    completed: int = 0
    gaps: list[float] = field(default_factory=list)
    replies: int = 0
    overhead: list[float] = field(default_factory=list)
    agent_overhead: list[float] = field(default_factory=list)
    agent_gap: list[float] = field(default_factory=list)
    cpu: dict[str, float] | None = None
    rss_kb: int = 0
    pss_kb: int = 0
    interarrival: list[float] = field(default_factory=list)
    jb_empty: int = 0
    rx_loss: int = 0
    ipdv_max: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw_calls: list[dict[str, Any]] = field(default_factory=list)
    raw_turns: list[dict[str, Any]] = field(default_factory=list)

    def goal_met(self, gap_ms: float, overhead_ms: float) -> bool:
        return (
            self.completed == self.calls
            and all(g <= gap_ms for g in self.gaps)
            and bool(self.overhead)
            and pct(self.overhead, 95) <= overhead_ms
        )


def server_env(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAGENT_")}
    env.update(
        {
            "SIPAGENT_PROVIDERS__STT": "fake",
            "SIPAGENT_PROVIDERS__TTS": "fake",
            "SIPAGENT_PROVIDERS__BRAIN": "fake",
            "SIPAGENT_PROVIDERS__FAKE_STT_FINAL_MS": str(args.stt_ms),
            "SIPAGENT_PROVIDERS__FAKE_LLM_FIRST_TOKEN_MS": str(args.llm_ms),
            "SIPAGENT_PROVIDERS__FAKE_TTS_FIRST_BYTE_MS": str(args.tts_ms),
            "SIPAGENT_PROVIDERS__FAKE_TTS_SPEED": str(args.tts_speed),
            "SIPAGENT_VAD__END_OF_TURN_MS": str(args.eot_ms),
            "SIPAGENT_VAD__EARLY_FINAL_MS": str(args.early_final_ms),
            "SIPAGENT_APP__ENABLED": "false",
            "SIPAGENT_RECORDS__URL": f"sqlite:///{workdir / 'records.db'}",
            "SIPAGENT_LOG_LEVEL": "INFO",
            "SIPAGENT_SIP__RTP_PORT_START": "20000",
        }
    )
    if args.no_spare:
        env["SIPAGENT_POOL__SPARE"] = "false"
    return env


def mocked_ms(args: argparse.Namespace) -> float:
    """Provider time on the critical path after the caller stops: with early finals the
    STT final starts `early_final_ms` into the pause, overlapping the end-of-turn wait."""
    if args.early_final_ms:
        stt_end = max(0.0, args.early_final_ms + args.stt_ms - args.eot_ms)
    else:
        stt_end = float(args.stt_ms)
    return stt_end + args.llm_ms + args.tts_ms


def run_step(k: int, clips: list[Path], args: argparse.Namespace) -> StepResult:
    workers = math.ceil(k / 4)
    res = StepResult(k, workers)
    fixed = args.eot_ms + mocked_ms(args)
    with tempfile.TemporaryDirectory(prefix="sipagent-capacity-") as tmp:
        workdir = Path(tmp)
        server = Server(workers, server_env(args, workdir), workdir)
        callers: list[CallerProc] = []
        sampler: Sampler | None = None
        try:
            if not server.wait_ready(120):
                res.notes.append("server did not start: " + " | ".join(server.lines[-5:]))
                return res
            for j in range(workers):
                n = min(4, k - 4 * j)
                callers.append(CallerProc([server.uri(j)] * n, clips, args, seed=1000 * k + j))
            deadline = time.monotonic() + 60
            for c in callers:
                if not c.ready.wait(max(0.1, deadline - time.monotonic())):
                    res.notes.append("a caller did not start: " + " | ".join(c.err[-3:]))
                    return res
            sampler = Sampler(server.proc.pid, [c.proc.pid for c in callers])
            t_go = time.monotonic()
            for c in callers:
                c.go()
                time.sleep(args.stagger_ms * 4 / 1000.0)
            # Memory once every call is up.
            mem_at = _wait_events(callers, "answered", k, 30.0)
            time.sleep(3.0)  # greeting under way everywhere
            for pid in process_tree(server.proc.pid):
                rss, pss = memory_kb(pid)
                res.rss_kb += rss
                res.pss_kb += pss
            for c in callers:
                c.wait(args.max_call_s + 30)
            hangups = [t for c in callers for t, e in c.events if e.startswith("hangup")]
            t_end = min(hangups) if hangups else time.monotonic()
            t_start = (mem_at or t_go) + 2.5
            sampler.stop()
            res.cpu = sampler.window(t_start, t_end)
        finally:
            if sampler is not None:
                sampler.stop()
            for c in callers:
                c.kill()
            server.stop()
        reports = [r for c in callers for r in c.reports]
        for c in callers:
            if c.proc.returncode not in (0, 1):
                res.notes.append(f"caller exit {c.proc.returncode}: " + " | ".join(c.err[-3:]))
        _score_callers(res, reports, fixed)
        _score_agent(res, server.turns(), fixed)
        if args.json:
            res.raw_calls, res.raw_turns = reports, server.turns()
    return res


def _wait_events(callers: list[CallerProc], kind: str, n: int, timeout: float) -> float | None:
    """Time of the n-th `kind` event over all callers (None on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = sorted(t for c in callers for t, e in c.events if e.startswith(kind))
        if len(times) >= n:
            return times[n - 1]
        if all(c.proc.poll() is not None for c in callers):
            return None
        time.sleep(0.1)
    return None


def _score_callers(res: StepResult, reports: list[dict[str, Any]], fixed_ms: float) -> None:
    for rep in reports:
        res.completed += bool(rep["ok"])
        for note in rep["notes"]:
            res.notes.append(f"{rep['uri']}: {note}")
        replies = [rep["greeting"]] if rep["greeting"] else []
        replies += [t for t in rep["turns"] if "latency_ms" in t]
        for r in replies:
            res.replies += 1
            res.gaps += r["gaps_ms"]
            res.interarrival.append(r["max_interarrival_ms"])
        for t in rep["turns"]:
            if "latency_ms" in t:
                res.overhead.append(t["latency_ms"] - fixed_ms)
        st = rep.get("stats") or {}
        res.jb_empty += int(st.get("jb_empty", 0))
        res.rx_loss += int(st.get("rx_loss", 0))
        if "rx_ipdv_max_ms" in st:
            res.ipdv_max.append(float(st["rx_ipdv_max_ms"]))
    missing = res.calls - len(reports)
    if missing:
        res.notes.append(f"{missing} call(s) sent no report")


def _score_agent(res: StepResult, turns: list[dict[str, Any]], fixed_ms: float) -> None:
    for t in turns:
        if t["kind"] == "reply" and not t["interrupted"] and t["total_ms"]:
            # total_ms runs from the VAD's end of speech; subtract what was mocked and waited.
            res.agent_overhead.append(float(t["total_ms"]) - fixed_ms)
        if not t["interrupted"] and t["max_gap_ms"]:
            res.agent_gap.append(float(t["max_gap_ms"]))


# -- output ---------------------------------------------------------------------------------
HEADER = (
    f"{'calls':>5} {'wrk':>3} {'done':>7} {'gaps':>5} {'gap p99':>7} {'gap max':>7}"
    f" {'ovh p50':>7} {'ovh p95':>7} {'agt p50':>7} {'agt p95':>7}"
    f" {'CPU %':>5} {'agent':>5} {'callr':>5} {'RSS/call':>8} {'PSS/call':>8}"
)


def fmt_row(r: StepResult) -> str:
    cpu = r.cpu or {"machine": float("nan"), "agent": float("nan"), "callers": float("nan")}
    gap_p99 = pct(r.gaps, 99) if r.gaps else 0.0
    gap_max = max(r.gaps) if r.gaps else 0.0
    return (
        f"{r.calls:5d} {r.workers:3d} {r.completed:3d}/{r.calls:<3d} {len(r.gaps):5d}"
        f" {gap_p99:7.0f} {gap_max:7.0f}"
        f" {pct(r.overhead, 50):7.0f} {pct(r.overhead, 95):7.0f}"
        f" {pct(r.agent_overhead, 50):7.0f} {pct(r.agent_overhead, 95):7.0f}"
        f" {cpu['machine']:5.0f} {cpu['agent']:5.0f} {cpu['callers']:5.0f}"
        f" {r.rss_kb / 1024 / max(1, r.calls):6.1f}MB {r.pss_kb / 1024 / max(1, r.calls):6.1f}MB"
    )


def fmt_detail(r: StepResult) -> str:
    secs = r.cpu["seconds"] if r.cpu else 0.0
    return (
        f"  K={r.calls}: {r.replies} replies heard, {len(r.overhead)} turns timed;"
        f" caller clock inter-arrival p99 {pct(r.interarrival, 99):.0f} ms"
        f" max {max(r.interarrival, default=0):.0f} ms;"
        f" caller jitter-buffer empty {r.jb_empty}, RTP loss {r.rx_loss},"
        f" IPDV max p95 {pct(r.ipdv_max, 95):.0f} ms;"
        f" agent pop-to-pop gap p99 {pct(r.agent_gap, 99):.0f} ms;"
        f" CPU window {secs:.0f} s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="8,16,32,48,64", help="concurrent calls per step")
    ap.add_argument("--turns", type=int, default=4, help="caller utterances per call")
    ap.add_argument("--stt-ms", type=int, default=200, help="mocked STT final latency")
    ap.add_argument("--llm-ms", type=int, default=150, help="mocked LLM first token")
    ap.add_argument("--tts-ms", type=int, default=80, help="mocked TTS first byte")
    ap.add_argument(
        "--tts-speed", type=float, default=2.0, help="fake TTS streams N× real time (0: at once)"
    )
    ap.add_argument("--eot-ms", type=int, default=400, help="vad.end_of_turn_ms")
    ap.add_argument(
        "--early-final-ms",
        type=int,
        default=0,
        help="vad.early_final_ms (0: STT finalises at end of turn, all mocked time is serial)",
    )
    ap.add_argument("--stagger-ms", type=float, default=5.0, help="between call starts")
    ap.add_argument("--max-call-s", type=float, default=120.0, help="callers give up after")
    ap.add_argument("--no-spare", action="store_true", help="pool.spare = false")
    ap.add_argument("--gap-goal-ms", type=float, default=40.0)
    ap.add_argument("--overhead-goal-ms", type=float, default=60.0)
    ap.add_argument("--clips-dir", type=Path, default=Path(tempfile.gettempdir()) / "sipagent-bench")
    ap.add_argument("--json", type=Path, help="also write the raw step results here")
    args = ap.parse_args()
    steps = [int(x) for x in args.steps.split(",") if x.strip()]
    clips = render_clips(args.clips_dir, QUESTIONS)
    print(
        f"capacity: {NCPU} CPUs; mocked STT {args.stt_ms} + LLM {args.llm_ms} + TTS"
        f" {args.tts_ms} ms, end of turn {args.eot_ms} ms, early final {args.early_final_ms} ms,"
        f" TTS {args.tts_speed:g}× real time; {args.turns} turns per call",
        flush=True,
    )
    results: list[StepResult] = []
    t0 = time.monotonic()
    for k in steps:
        ts = time.monotonic()
        r = run_step(k, clips, args)
        results.append(r)
        print(f"step K={k}: {time.monotonic() - ts:.0f} s", file=sys.stderr, flush=True)
        for note in r.notes[:8]:
            print(f"  note: {note}", file=sys.stderr)
    print(
        "\ngaps = silent stretches inside agent replies heard by the callers;"
        " ovh = wire latency − end-of-turn wait − mocked provider time (ms);"
        " agt = the same from the agent's TURN records; CPU = % of the whole machine"
        f" ({NCPU} cores) in the steady part, agent = server processes, callr = load generators"
    )
    print(HEADER)
    for r in results:
        print(fmt_row(r))
    for r in results:
        print(fmt_detail(r))
    ok = [r.calls for r in results if r.goal_met(args.gap_goal_ms, args.overhead_goal_ms)]
    best = max(ok, default=0)
    print(
        f"goal (all calls complete, no gap over {args.gap_goal_ms:.0f} ms, overhead p95 ≤"
        f" {args.overhead_goal_ms:.0f} ms): met up to {best} calls"
        f" (total {time.monotonic() - t0:.0f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0 if best >= max(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
