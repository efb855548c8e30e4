#!/usr/bin/env python3
"""Turn latency on the wire: end of caller speech → first agent audio.

Starts `sipagent serve` (offline pipeline unless --config says otherwise), places calls
with the test softphone (a separate pjsua2 process), asks the demo playbook's questions, and
prints p50/p95 of:

- on the wire: the softphone's end of its last voiced frame → first agent audio it hears
  (both on the caller's side of the RTP path, CLOCK_MONOTONIC);
- the agent's parts: end-of-turn wait, STT final, brain, TTS first audio, playout (first
  chunk queued → first frame handed to the media clock), and their total.

Usage: python scripts/bench/turn_latency.py [--calls 4] [--concurrent 1] [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.devtools.demo import AgentProcess, free_udp_port

QUESTIONS = [
    "What are your opening hours?",
    "Where are you located?",
    "Do you sell croissants?",
    "Are you open on Sunday?",
    "I would like to order a birthday cake.",
    "Is there parking near the shop?",
]


def pct(values: list[float], q: float) -> float:
    """Percentile (linear interpolation)."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def _call_cmd(port: int) -> list[str]:
    cmd = [sys.executable, "-m", "gateway.cli", "call", f"sip:agent@127.0.0.1:{port}", "--json"]
    for q in QUESTIONS:
        cmd += ["--say", q]
    return cmd


def run(calls: int, concurrent: int, config: Path | None) -> dict[str, Any]:
    """Place the calls, `concurrent` at a time; return the samples."""
    port = free_udp_port()
    agent = AgentProcess(port, config)
    wire: list[float] = []
    failures = 0
    try:
        if not agent.wait_listening(120):
            raise SystemExit("agent did not start:\n" + "\n".join(agent.lines[-20:]))
        done = 0
        while done < calls:
            batch = []
            for _ in range(min(concurrent, calls - done)):
                batch.append(
                    subprocess.Popen(
                        _call_cmd(port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                    )
                )
                time.sleep(0.7)  # stagger: callers do not all speak at the same instant
            for proc in batch:
                out, err = proc.communicate(timeout=300)
                done += 1
                line = next((x for x in reversed(out.splitlines()) if x.startswith("{")), None)
                if line is None:
                    failures += len(QUESTIONS)
                    print(f"call {done}: no report\n{err[-500:]}", file=sys.stderr)
                    continue
                report = json.loads(line)
                for step in report["steps"]:
                    if step["reply_latency_ms"] is None:
                        failures += 1
                    else:
                        wire.append(step["reply_latency_ms"])
                print(f"call {done}/{calls}: {len(report['steps'])} turns", file=sys.stderr)
    finally:
        agent.stop()
    turns = [t for t in agent.turns() if t["kind"] == "reply" and not t["interrupted"]]
    return {"wire": wire, "turns": turns, "failures": failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=4, help="calls to place (6 turns each)")
    ap.add_argument("--concurrent", type=int, default=1, help="calls in progress at once (1-4)")
    ap.add_argument("--config", type=Path, help="agent settings file")
    ap.add_argument("--goal-ms", type=float, default=800.0, help="p50 goal on the wire")
    args = ap.parse_args()
    data = run(args.calls, args.concurrent, args.config)
    rows: list[tuple[str, list[float]]] = [("on the wire (caller side)", data["wire"])]
    parts = [
        ("agent: end-of-turn wait", "eot_wait_ms"),
        ("agent: STT final", "stt_ms"),
        ("agent: brain", "brain_ms"),
        ("agent: TTS first audio", "tts_first_ms"),
        ("agent: playout", "playout_ms"),
        ("agent: total", "total_ms"),
        ("agent: longest gap in reply audio", "max_gap_ms"),
    ]
    for label, key in parts:
        rows.append((label, [float(t[key]) for t in data["turns"]]))
    print(
        f"\nturn latency, {len(data['wire'])} turns, {data['failures']} unanswered,"
        f" {args.concurrent} call(s) at a time"
    )
    print(f"{'metric':36} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for label, values in rows:
        if values:
            print(
                f"{label:36} {len(values):4d} {pct(values, 50):8.0f} {pct(values, 95):8.0f}"
                f" {max(values):8.0f}"
            )
    if data["wire"]:
        p50 = pct(data["wire"], 50)
        verdict = "met" if p50 <= args.goal_ms else "NOT met"
        print(f"goal p50 ≤ {args.goal_ms:.0f} ms on the wire: {verdict} ({p50:.0f} ms)")
    return 0 if data["wire"] and not data["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
