#!/usr/bin/env python3
"""Stream capacity: how many Plivo audio-stream calls one machine holds with cloud-like providers.

The stream counterpart of `capacity.py` (same fake providers at a peer benchmark's
latencies: STT final 200 ms, LLM first token 150 ms, TTS first byte 80 ms, the TTS a
continuous tone streamed `--tts-speed` times real time; same Piper-rendered questions;
same overhead definition). For each step K it starts `sipagent serve` with
``pool.sip=false`` and ``pool.stream_workers=W`` (`--stream-workers`, default 1) on a free
``stream.listen_port``, with a ``stream.token_secret`` the benchmark knows, and drives K
concurrent calls from `--gen-procs` load-generator processes (`stream_caller.py`: each
holds its share of `PlivoStreamPeer`s, Plivo's side of the stream, on one asyncio loop).
The calls start spread over `--ramp-s`; each waits for the greeting to play, then speaks
`--turns` questions, each after the last reply played out and ~`--think-s` of thought. The
first `--barge-calls` calls speak every question after the first `--barge-after-s` into the
agent's reply instead (barge-in). It stops the server (SIGTERM: drain) and prints:

- calls completed (connected, greeted, every turn answered, no protocol error);
- underrun gaps: the stretches Plivo's playback queue ran dry inside an agent turn, as the
  emulated Plivo played it (count, p99, max): the "gap in what Plivo receives";
- turn overhead = wire latency (the ``media`` event with the caller's last voiced frame
  sent → the tick on which Plivo first played the reply) - end-of-turn wait - mocked
  provider time, p50/p95; the same from the agent's TURN records (its first frame sent);
  "late": replies whose frames the agent's pacer sent > 40 ms apart (TURN max_gap_ms);
- barge-in: the caller's first voiced frame sent → ``clearAudio`` arriving at Plivo, and
  → the end of the last agent frame Plivo played (what the caller heard), p50/p95;
- CPU % of the whole machine in the steady part (all calls greeted, none ended yet), split
  into the server's processes and the load generators; the stream workers' pacer ticks
  more than a frame late and their loop's lateness (a probe the benchmark adds to the
  server processes, see `PROBE`); RSS and PSS of the server per call, and the growth from
  before the first call per call.

`--profile` runs cProfile in the stream workers (from their first call to their exit) and
prints where their time went; it slows them, so take figures from a run without it.
`--experiment` is `capacity.py`'s (what-if patches of the server processes).

Usage: python scripts/bench/stream_capacity.py [--steps 50,100,150,200] [--turns 4] [--json F]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capacity import (  # scripts/bench, beside this file
    NCPU,
    QUESTIONS,
    LineProc,
    Sampler,
    Step,
    add_shared_arguments,
    check_experiments,
    memory_kb,
    mocked_ms,
    nth_event,
    pct,
    process_tree,
    render_clips,
    run_steps,
    server_env,
)

from gateway.devtools.demo import AgentProcess, free_udp_port, free_udp_tcp_port

ROOT = Path(__file__).resolve().parents[2]
CALLER = Path(__file__).resolve().parent / "stream_caller.py"

# Measurement only, in every stream worker (sitecustomize): once a second a line with the
# pacer's ticks that ran more than a frame late (cumulative) and the worst lateness since
# the last line, and how late a 20 ms sleep of the worker's loop woke (p99, max).
PROBE = """
import sys as _sys
if "gateway.pool.child" in _sys.orig_argv:
    import asyncio as _asyncio, json as _json, os as _os, time as _time
    from gateway.stream import call as _stream_call

    async def _bench_report(pacer):
        lags, last = [], _time.monotonic()
        while True:
            due = _time.monotonic() + 0.02
            await _asyncio.sleep(0.02)
            now = _time.monotonic()
            lags.append(max(0.0, now - due))
            if now - last >= 1.0:
                lags.sort()
                line = {
                    "pid": _os.getpid(), "t": round(now, 3), "streams": len(pacer.streams),
                    "late": pacer.late_ticks, "max_late_ms": round(pacer.max_lateness * 1e3, 1),
                    "lag_p99_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1e3, 1),
                    "lag_max_ms": round(lags[-1] * 1e3, 1),
                }
                pacer.max_lateness = 0.0
                # one write(2) of a short line: not torn by another worker's on the pipe
                _os.write(2, ("BENCH pacer " + _json.dumps(line) + "\\n").encode())
                lags, last = [], now

    _bench_pacer_run = _stream_call.Pacer.run

    async def _bench_run(self):
        probe = _asyncio.ensure_future(_bench_report(self))
        try:
            await _bench_pacer_run(self)
        finally:
            probe.cancel()

    _stream_call.Pacer.run = _bench_run
"""

# cProfile of a stream worker's loop thread from its first stream to its exit.
PROFILE = """
import sys as _sys
if "gateway.pool.child" in _sys.orig_argv:
    import atexit as _atexit, cProfile as _cProfile, os as _os
    from gateway.stream import server as _stream_server

    _bench_prof = _cProfile.Profile()
    _bench_on = []
    _bench_converse = _stream_server.StreamWorker._converse

    async def _bench_profiled(self, ws, start):
        if not _bench_on:
            _bench_on.append(True)
            _bench_prof.enable()
        return await _bench_converse(self, ws, start)

    _stream_server.StreamWorker._converse = _bench_profiled

    def _bench_dump():
        if _bench_on:
            _bench_prof.disable()
            _bench_prof.dump_stats(f"{PROFILE_DIR}/worker-{_os.getpid()}.prof")

    _atexit.register(_bench_dump)
"""


# -- one step ------------------------------------------------------------------------------
@dataclass
class StreamStep(Step):
    """What one stream step measured (times in ms unless named otherwise)."""

    gens: int = 0
    gap_at: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    greeting: list[float] = field(default_factory=list)
    barges: int = 0
    barge_clear: list[float] = field(default_factory=list)
    barge_cut: list[float] = field(default_factory=list)
    base_rss_kb: int = 0
    base_pss_kb: int = 0
    pacer: dict[str, float] = field(default_factory=dict)
    gen: dict[str, float] = field(default_factory=dict)
    profile: str = ""

    def barge_met(self, cut_ms: float) -> bool:
        return (
            bool(self.barge_cut)
            and len(self.barge_cut) == self.barges
            and pct(self.barge_cut, 95) <= cut_ms
        )


def stream_env(
    args: argparse.Namespace, workdir: Path, k: int, port: int, secret: str
) -> dict[str, str]:
    """`capacity.server_env` (fake providers, experiments) for a stream-only pool, with the
    probe (and the profiler) in its processes and this tree's code first on the path."""
    site = PROBE
    if args.profile:
        (workdir / "prof").mkdir(exist_ok=True)
        site += PROFILE.replace("{PROFILE_DIR}", str(workdir / "prof"))
    env = server_env(args, workdir, extra_site=site)
    workers = args.stream_workers
    env.update(
        {
            "SIPAGENT_POOL__SIP": "false",
            "SIPAGENT_POOL__STREAM_WORKERS": str(workers),
            "SIPAGENT_STREAM__LISTEN_HOST": "127.0.0.1",
            "SIPAGENT_STREAM__LISTEN_PORT": str(port),
            "SIPAGENT_STREAM__TOKEN_SECRET": secret,
            # SO_REUSEPORT spreads the connections unevenly: room for all on any worker.
            "SIPAGENT_STREAM__MAX_CALLS": str(min(2000, k)),
        }
    )
    if args.send_ahead_ms:
        env["SIPAGENT_STREAM__SEND_AHEAD_MS"] = str(args.send_ahead_ms)
    # The code of the tree this script is in, not whatever `pip install -e` points at:
    # after the sitecustomize directory server_env put first.
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    parts.insert(1 if parts else 0, str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def gen_commands(
    k: int,
    clips: list[Path],
    args: argparse.Namespace,
    url: str,
    secret: str,
    profile_dir: Path | None = None,
) -> list[list[str]]:
    """One command per load generator: calls interleaved over them, so that together they
    start one call every ramp/K seconds; the first `--barge-calls` calls (over all) barge."""
    procs = max(1, min(args.gen_procs, k))
    cmds = []
    for j in range(procs):
        n = len(range(j, k, procs))
        barge = len(range(j, min(args.barge_calls, k), procs))
        cmd = [sys.executable, str(CALLER), "--url", url, "--secret", secret]
        cmd += ["--calls", str(n), "--turns", str(args.turns), "--barge-calls", str(barge)]
        cmd += ["--barge-after-s", str(args.barge_after_s), "--think-s", str(args.think_s)]
        cmd += ["--ramp-s", str(args.ramp_s * n / k), "--phase-s", str(args.ramp_s * j / k)]
        cmd += ["--max-s", str(args.max_call_s), "--seed", str(1000 * k + j)]
        if profile_dir is not None:
            cmd += ["--profile", str(profile_dir / f"gen-{j}.prof")]
        for c in clips:
            cmd += ["--clip", str(c)]
        cmds.append(cmd)
    return cmds


def _tree_memory(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for p in process_tree(pid):
        r, s = memory_kb(p)
        rss += r
        pss += s
    return rss, pss


def run_step(k: int, clips: list[Path], args: argparse.Namespace) -> StreamStep:
    gens_n = max(1, min(args.gen_procs, k))
    res = StreamStep(k, args.stream_workers, gens=gens_n)
    fixed = args.eot_ms + mocked_ms(args)
    secret = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="sipagent-stream-capacity-") as tmp:
        workdir = Path(tmp)
        port = free_udp_tcp_port()
        url = f"ws://127.0.0.1:{port}/stream"
        env = stream_env(args, workdir, k, port, secret)
        server = AgentProcess(free_udp_port(), env=env, cwd=workdir, workers=1, new_session=True)
        gens: list[LineProc] = []
        sampler: Sampler | None = None
        try:
            if not server.wait_ready(120):
                res.notes.append("server did not start: " + " | ".join(server.lines[-5:]))
                return res
            res.base_rss_kb, res.base_pss_kb = _tree_memory(server.proc.pid)
            prof = workdir / "prof" if args.profile else None
            gens = [LineProc(cmd) for cmd in gen_commands(k, clips, args, url, secret, prof)]
            deadline = time.monotonic() + 60
            for g in gens:
                if not g.ready.wait(max(0.1, deadline - time.monotonic())):
                    res.notes.append("a load generator did not start: " + " | ".join(g.err[-3:]))
                    return res
            sampler = Sampler(server.proc.pid, [g.proc.pid for g in gens])
            t_go = time.monotonic()
            for g in gens:
                g.go()
            greeted = nth_event(gens, "greeted ", k, args.ramp_s + 30.0)
            if greeted is None:
                res.notes.append("not every call was greeted")
            else:
                time.sleep(1.0)  # every call in its first turn
                res.rss_kb, res.pss_kb = _tree_memory(server.proc.pid)
            for g in gens:
                g.wait(args.ramp_s + args.max_call_s + 30)
            hangups = [t for g in gens for t, e in g.events if e.startswith("hangup ")]
            t_end = min(hangups) if hangups else time.monotonic()
            t_start = (greeted or t_go + args.ramp_s) + 0.5
            sampler.stop()
            res.cpu = sampler.window(t_start, t_end)
            res.pacer = _pacer_window(server.lines, t_start, t_end)
            whole = _pacer_window(server.lines, t_go, time.monotonic())
            res.pacer.update({f"all_{key}": v for key, v in whole.items()})
        finally:
            if sampler is not None:
                sampler.stop()
            for g in gens:
                g.kill()
            server.stop(60)
        if args.profile:
            for g in gens:
                g.wait(10)  # the profile is written at its exit
            res.profile = "stream workers:\n" + _profile_text(
                workdir / "prof", "worker-*.prof", args.profile_top
            )
            res.profile += "\nload generators:\n" + _profile_text(
                workdir / "prof", "gen-*.prof", args.profile_top
            )
            if args.profile_dir is not None:
                keep = args.profile_dir / f"K{k}"
                keep.mkdir(parents=True, exist_ok=True)
                for f in (workdir / "prof").glob("*.prof"):
                    shutil.copy(f, keep / f.name)
    reports = [r for g in gens for r in g.reports]
    for g in gens:
        if g.proc.returncode not in (0, 1):
            res.notes.append(f"load generator exit {g.proc.returncode}: " + " | ".join(g.err[-3:]))
        for _, e in g.events:
            if e.startswith("gen "):
                info = json.loads(e[4:])
                for key in ("lag_p99_ms", "lag_max_ms"):
                    res.gen[key] = max(res.gen.get(key, 0.0), float(info[key]))
    turns = _turns(server.lines)
    _score_calls(res, reports, fixed)
    res.score_agent(turns, fixed)
    _server_notes(res, server.lines)
    if args.json:
        res.raw_calls, res.raw_turns = reports, turns
    return res


def _turns(lines: list[str]) -> list[dict[str, Any]]:
    """The agent's TURN records (`AgentProcess.turns`, but a line torn by another
    process's write to the shared stderr is skipped rather than fatal)."""
    decoder = json.JSONDecoder()
    out = []
    for line in list(lines):
        if " TURN {" in line:
            try:
                rec, _ = decoder.raw_decode(line.split(" TURN ", 1)[1])
            except ValueError:
                continue
            out.append(rec)
    return out


def _pacer_window(lines: list[str], t0: float, t1: float) -> dict[str, float]:
    """The stream workers' probe lines between t0 and t1: pacer ticks > 1 frame late (all
    workers), the worst lateness, and the loop's 20 ms sleep lateness (worst p99, max)."""
    by_pid: dict[int, list[dict[str, Any]]] = {}
    decoder = json.JSONDecoder()
    for line in list(lines):
        if "BENCH pacer " in line:
            try:
                rec, _ = decoder.raw_decode(line.split("BENCH pacer ", 1)[1])
            except ValueError:
                continue  # torn by another process's write
            by_pid.setdefault(int(rec["pid"]), []).append(rec)
    out = {"late": 0.0, "max_late_ms": 0.0, "lag_p99_ms": 0.0, "lag_max_ms": 0.0, "streams": 0.0}
    for recs in by_pid.values():
        inside = [r for r in recs if t0 <= r["t"] <= t1]
        if not inside:
            continue
        before = [r for r in recs if r["t"] < t0]
        start = before[-1]["late"] if before else 0
        out["late"] += inside[-1]["late"] - start
        out["streams"] += max(r["streams"] for r in inside)
        for key in ("max_late_ms", "lag_p99_ms", "lag_max_ms"):
            out[key] = max(out[key], max(float(r[key]) for r in inside))
    return out


def _score_calls(res: StreamStep, reports: list[dict[str, Any]], fixed_ms: float) -> None:
    late_ticks, max_late = 0, 0.0
    for rep in reports:
        res.completed += bool(rep["ok"])
        for note in rep["notes"] + rep["errors"]:
            res.notes.append(f"call {rep['call_id'][:8]}: {note}")
        if not rep["connected"]:
            res.notes.append(f"call {rep['call_id'][:8]}: {rep['reason']}")
        if rep["greeting_ms"]:
            res.greeting.append(rep["greeting_ms"])
            res.replies += 1
        for at, ms in rep["underruns"]:
            res.gaps.append(ms)
            res.gap_at.append(at)
        for t in rep["turns"]:
            if "latency_ms" in t:
                res.replies += 1
                res.latency.append(t["latency_ms"])
                res.overhead.append(t["latency_ms"] - fixed_ms)
            if t["barge"]:
                res.barges += 1
                if "clear_ms" in t:
                    res.barge_clear.append(t["clear_ms"])
                if "cut_ms" in t:
                    res.barge_cut.append(t["cut_ms"])
        late_ticks += rep["late_ticks"]
        max_late = max(max_late, rep["max_late_ms"])
    res.gen["peer_late_ticks"] = float(late_ticks)
    res.gen["peer_max_late_ms"] = max_late
    missing = res.calls - len(reports)
    if missing:
        res.notes.append(f"{missing} call(s) sent no report")


def _server_notes(res: StreamStep, lines: list[str]) -> None:
    """Server log lines worth a look: errors, and the stream workers' warnings."""
    keys = (
        " ERROR ",
        " CRITICAL ",
        "Traceback",
        "Error in sitecustomize",
        "no playedStream",
        "connection refused",
        "conversation crashed",
        "malformed message skipped",
        "sending audio failed",
    )
    worth = [ln for ln in lines if any(k in ln for k in keys)]
    for ln in worth[:5]:
        res.notes.append("server: " + ln[:200])
    if len(worth) > 5:
        res.notes.append(f"server: {len(worth) - 5} more such lines")


def _profile_text(directory: Path, pattern: str, top: int) -> str:
    """Profiles merged: the functions with the most own time, and the most in all."""
    files = sorted(directory.glob(pattern))
    if not files:
        return "(no profile: did the processes exit normally?)"
    out = io.StringIO()
    stats = pstats.Stats(str(files[0]), stream=out)
    for f in files[1:]:
        stats.add(str(f))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# -- output ---------------------------------------------------------------------------------
HEADER = (
    f"{'calls':>5} {'wrk':>3} {'done':>7} {'gaps':>5} {'gap p99':>7} {'gap max':>7}"
    f" {'ovh p50':>7} {'ovh p95':>7} {'agt p50':>7} {'agt p95':>7} {'late':>4}"
    f" {'clr p50':>7} {'clr p95':>7} {'cut p95':>7}"
    f" {'CPU %':>5} {'agent':>5} {'gen':>5} {'RSS/call':>8} {'+RSS/call':>9}"
)


def fmt_row(r: StreamStep) -> str:
    cpu = r.cpu or {"machine": float("nan"), "agent": float("nan"), "callers": float("nan")}
    gap_p99 = pct(r.gaps, 99) if r.gaps else 0.0
    gap_max = max(r.gaps) if r.gaps else 0.0
    grow = (r.rss_kb - r.base_rss_kb) / 1024 / max(1, r.calls) if r.rss_kb else float("nan")
    return (
        f"{r.calls:5d} {r.workers:3d} {r.completed:3d}/{r.calls:<3d} {len(r.gaps):5d}"
        f" {gap_p99:7.0f} {gap_max:7.0f}"
        f" {pct(r.overhead, 50):7.0f} {pct(r.overhead, 95):7.0f}"
        f" {pct(r.agent_overhead, 50):7.0f} {pct(r.agent_overhead, 95):7.0f}"
        f" {sum(g > 40 for g in r.agent_gap):4d}"
        f" {pct(r.barge_clear, 50):7.0f} {pct(r.barge_clear, 95):7.0f}"
        f" {pct(r.barge_cut, 95):7.0f}"
        f" {cpu['machine']:5.0f} {cpu['agent']:5.0f} {cpu['callers']:5.0f}"
        f" {r.rss_kb / 1024 / max(1, r.calls):6.1f}MB {grow:7.2f}MB"
    )


def fmt_detail(r: StreamStep) -> str:
    cpu = r.cpu or {}
    secs = cpu.get("seconds", 0.0)
    others = max(0.0, cpu["machine"] - cpu["agent"] - cpu["callers"]) if cpu else 0.0

    def share(prefix: str, *roles: str) -> float:
        return sum(cpu.get(prefix + role, 0.0) for role in roles)

    p, g = r.pacer, r.gen
    return (
        f"  K={r.calls}: {r.replies} agent turns heard, {len(r.overhead)} timed; wire latency"
        f" p50 {pct(r.latency, 50):.0f} / p95 {pct(r.latency, 95):.0f} ms; greeting after"
        f" the stream opened p50 {pct(r.greeting, 50):.0f} / p95 {pct(r.greeting, 95):.0f} ms"
        f"\n    barge-in: {r.barges} (clearAudio for {len(r.barge_clear)}); caller's first"
        f" voiced frame → clearAudio p50 {pct(r.barge_clear, 50):.0f} / p95"
        f" {pct(r.barge_clear, 95):.0f} ms, → last agent audio played p50"
        f" {pct(r.barge_cut, 50):.0f} / p95 {pct(r.barge_cut, 95):.0f} ms"
        f"\n    stream workers (steady part): pacer ticks > 20 ms late {p.get('late', 0):.0f},"
        f" worst {p.get('max_late_ms', 0):.0f} ms; loop's 20 ms sleep late p99"
        f" {p.get('lag_p99_ms', 0):.0f} / max {p.get('lag_max_ms', 0):.0f} ms; agent replies"
        f" with frames sent > 40 ms apart {sum(x > 40 for x in r.agent_gap)} of"
        f" {len(r.agent_gap)}; over the whole step (ramp and wind-down too): pacer ticks"
        f" > 20 ms late {p.get('all_late', 0):.0f}, worst {p.get('all_max_late_ms', 0):.0f} ms,"
        f" loop's sleep late max {p.get('all_lag_max_ms', 0):.0f} ms"
        f"\n    load generators: peers' ticks late {g.get('peer_late_ticks', 0):.0f} (worst"
        f" {g.get('peer_max_late_ms', 0):.0f} ms); their loop's 20 ms sleep late p99"
        f" {g.get('lag_p99_ms', 0):.0f} / max {g.get('lag_max_ms', 0):.0f} ms"
        f"\n    CPU window {secs:.0f} s, % of machine: server {cpu.get('agent', 0):.1f}"
        f" (supervisor {share('agent.', 'supervisor'):.1f}, worker loops"
        f" {share('agent.', 'main'):.1f}, worker threads"
        f" {share('agent.', 'pj', 'other', 'clock', 'media'):.1f}), load generators"
        f" {cpu.get('callers', 0):.1f} ({r.gens} processes), other processes {others:.0f},"
        f" steal {cpu.get('steal', 0):.1f}"
        f"\n    server memory: {r.base_rss_kb / 1024:.0f} MB RSS before the calls,"
        f" {r.rss_kb / 1024:.0f} MB with them (PSS {r.base_pss_kb / 1024:.0f} →"
        f" {r.pss_kb / 1024:.0f} MB)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="50,100,150,200", help="concurrent calls per step")
    add_shared_arguments(ap)
    ap.add_argument("--stream-workers", type=int, default=1, help="pool.stream_workers")
    ap.add_argument("--gen-procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--ramp-s", type=float, default=5.0, help="calls start spread over")
    ap.add_argument("--think-s", type=float, default=1.0, help="caller pause before a question")
    ap.add_argument(
        "--barge-calls",
        type=int,
        default=4,
        help="calls that barge in on every reply after the first (0: none)",
    )
    ap.add_argument("--barge-after-s", type=float, default=1.0, help="into the agent's reply")
    ap.add_argument(
        "--send-ahead-ms", type=int, default=0, help="stream.send_ahead_ms (0: its default)"
    )
    ap.add_argument("--profile", action="store_true", help="cProfile the stream workers")
    ap.add_argument("--profile-top", type=int, default=30, help="functions listed")
    ap.add_argument("--profile-dir", type=Path, help="keep the .prof files here (per step)")
    ap.add_argument("--barge-goal-ms", type=float, default=100.0)
    args = ap.parse_args()
    check_experiments(ap, args.experiment)
    steps = [int(x) for x in args.steps.split(",") if x.strip()]
    clips = render_clips(args.clips_dir, QUESTIONS)
    print(
        f"stream capacity: {NCPU} CPUs; {args.stream_workers} stream worker(s),"
        f" {args.gen_procs} load generator(s); mocked STT {args.stt_ms} + LLM {args.llm_ms}"
        f" + TTS {args.tts_ms} ms, end of turn {args.eot_ms} ms, early final"
        f" {args.early_final_ms} ms, TTS {args.tts_speed:g}x real time; {args.turns} turns per"
        f" call, {args.barge_calls} barging calls",
        flush=True,
    )
    t0 = time.monotonic()
    results = run_steps(steps, lambda k: run_step(k, clips, args))
    print(
        "\ngaps = stretches the emulated Plivo's playback queue ran dry inside agent turns;"
        " ovh = wire latency - end-of-turn wait - mocked provider time (ms); agt = the same"
        " from the agent's TURN records; late = agent replies whose frames its pacer sent"
        " > 40 ms apart; clr = barge-in, caller's first voiced frame → clearAudio at Plivo;"
        " cut = → last agent audio Plivo played; CPU = % of the whole machine"
        f" ({NCPU} cores) in the steady part, agent = server processes, gen = load"
        " generators; +RSS/call = the server's growth from before the calls, per call"
    )
    print(HEADER)
    for r in results:
        print(fmt_row(r))
    for r in results:
        print(fmt_detail(r))
    for r in results:
        if r.profile:
            print(f"\nprofile, K={r.calls}: {r.profile}")
    ok = [r.calls for r in results if r.goal_met(args.gap_goal_ms, args.overhead_goal_ms)]
    missed = [r.calls for r in results if r.calls not in ok]
    best = max(ok, default=0)
    also = f"; missed at {', '.join(map(str, missed))}" if missed else ""
    barge_missed = [r.calls for r in results if r.barges and not r.barge_met(args.barge_goal_ms)]
    barge = (
        f"; barge-in (last agent audio ≤ {args.barge_goal_ms:.0f} ms p95 after the caller"
        " spoke): " + (f"missed at {', '.join(map(str, barge_missed))}" if barge_missed else "met")
        if any(r.barges for r in results)
        else ""
    )
    print(
        f"goal (all calls complete, no gap over {args.gap_goal_ms:.0f} ms, overhead p95 ≤"
        f" {args.overhead_goal_ms:.0f} ms): met up to {best} calls{also}{barge}"
        f" (total {time.monotonic() - t0:.0f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0 if best >= max(steps) and not missed and not barge_missed else 1


if __name__ == "__main__":
    sys.exit(main())
