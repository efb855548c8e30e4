#!/usr/bin/env python3
"""The edge's cost: added latency, and the INVITE rates it absorbs with no worker death.

It starts `sipagent serve --edge --workers N` (fake providers) and measures, on the same
pool, through the edge and straight to a worker (the workers take loopback sources):

- INVITE → 200 OK: `--calls` calls placed one at a time (INVITE, 200, ACK, BYE), p50/p95;
- answer → first agent audio: `--greetings` softphone calls, the greeting's delay, p50/p95;
- then floods of INVITEs through the edge (sipp's uac scenario from another loopback
  address, `--rates` per second for `--flood-s` seconds each), counting worker deaths and
  checking that a call still goes through after each.

Usage: python scripts/bench/edge_latency.py [--workers 2] [--calls 200] [--greetings 10]
                                            [--rates 100,300,1000,3000] [--flood-s 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.devtools.demo import AgentProcess, free_udp_port, rtp_base_for
from tests.helpers.sipfuzz import question_call
from tests.helpers.sipraw import RawSip, call, sdp_offer


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def invite_to_ok(target: tuple[str, int], n: int) -> list[float]:
    """Milliseconds from INVITE sent to 200 OK received, one call at a time."""
    out = []
    with RawSip() as sip:
        for i in range(n):
            started = time.perf_counter()
            dialog = call(sip, target, sdp_offer(port=46000 + 2 * (i % 500)))
            out.append((time.perf_counter() - started) * 1000)
            sip.final(dialog.request(sip, "BYE"), target)
            time.sleep(0.03)  # under the workers' 50 new calls a second
    return out


def greeting_ms(uri: str, n: int) -> list[float]:
    """The softphone's answer → first agent audio, `n` calls."""
    out = []
    for _ in range(n):
        proc = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "call", uri, "--json", "--timeout", "5"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if lines and json.loads(lines[-1]).get("greeting_ms") is not None:
            out.append(float(json.loads(lines[-1])["greeting_ms"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--greetings", type=int, default=10)
    parser.add_argument("--rates", default="100,300,1000,3000")
    parser.add_argument("--flood-s", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipagent-edge-bench-") as tmp:
        workdir = Path(tmp)
        port = free_udp_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAGENT_")}
        env.update(
            SIPAGENT_EDGE__ENABLED="true",
            SIPAGENT_EDGE__WORKER_PORT=str(free_udp_port()),
            SIPAGENT_SIP__RTP_PORT_START=str(rtp_base_for(port, 40 * 8)),
            SIPAGENT_SIP__ALLOW_NETWORKS="127.0.0.0/8",
            SIPAGENT_PROVIDERS__STT="fake",
            SIPAGENT_PROVIDERS__TTS="fake",
            SIPAGENT_PROVIDERS__BRAIN="fake",
            SIPAGENT_APP__ENABLED="false",
            SIPAGENT_RECORDS__URL=f"sqlite:///{workdir / 'records.db'}",
            SIPAGENT_POOL__DRAIN_TIMEOUT_S="2",
            # The workers' own new-call limit is not what is measured here.
            SIPAGENT_SIP__MAX_NEW_CALLS_PER_S="50",
            # The flood's answered calls are dropped with their source (pike blocks its
            # BYEs too): they hold slots until their RTP stops.
            SIPAGENT_SIP__RTP_TIMEOUT_S="5",
        )
        pool = AgentProcess(port, env=env, cwd=workdir, workers=args.workers, new_session=True)
        try:
            if not pool.wait_ready(120):
                print("\n".join(pool.lines[-30:]))
                return 2
            edge = ("127.0.0.1", port)
            worker = ("127.0.0.1", pool.workers[0][1])
            # Interleaved blocks, so that the machine's other load falls on both alike.
            via_edge: list[float] = []
            direct: list[float] = []
            for _ in range(max(1, args.calls // 20)):
                via_edge += invite_to_ok(edge, 20)
                direct += invite_to_ok(worker, 20)
            greet_edge = greeting_ms(f"sip:agent@127.0.0.1:{port}", args.greetings)
            greet_direct = greeting_ms(f"sip:agent@127.0.0.1:{worker[1]}", args.greetings)
            floods = []
            for rate in [int(r) for r in args.rates.split(",") if r]:
                before = sum(") died (" in ln for ln in pool.lines)
                started = time.monotonic()
                subprocess.run(
                    [
                        *("sipp", "-sn", "uac", f"127.0.0.1:{port}", "-s", "agent"),
                        *("-i", "127.0.0.2", "-p", "0", "-mp", str(free_udp_port())),
                        *("-r", str(rate), "-m", str(int(rate * args.flood_s)), "-d", "100"),
                        *("-nostdin", "-timeout", f"{int(args.flood_s) + 10}s"),
                        "-recv_timeout",
                        "2000",
                    ],
                    cwd=workdir,
                    capture_output=True,
                    timeout=args.flood_s + 60,
                )
                took = time.monotonic() - started
                time.sleep(1.0)
                died = sum(") died (" in ln for ln in pool.lines) - before
                ended = time.monotonic()
                while True:
                    after = question_call(port)
                    if after.get("answered") or time.monotonic() - ended > 60:
                        break
                    time.sleep(1.0)
                waited = time.monotonic() - ended
                back = f"after {waited:.0f} s" if after.get("answered") else "never"
                floods.append((rate, took, died, back))
        finally:
            pool.stop(30)

    def line(name: str, values: list[float]) -> str:
        return (
            f"{name:<28} p50 {statistics.median(values):6.1f} ms  p95 {pct(values, 95):6.1f} ms"
            f"  (n={len(values)})"
        )

    print(f"sipagent serve --edge --workers {args.workers} (fake providers)")
    print(line("INVITE -> 200, via the edge", via_edge))
    print(line("INVITE -> 200, direct", direct))
    added50 = statistics.median(via_edge) - statistics.median(direct)
    added95 = pct(via_edge, 95) - pct(direct, 95)
    print(f"{'  added by the edge':<28} p50 {added50:6.1f} ms  p95 {added95:6.1f} ms")
    if greet_edge and greet_direct:
        print(line("answer -> agent audio, edge", greet_edge))
        print(line("answer -> agent audio, direct", greet_direct))
    for rate, took, died, back in floods:
        print(
            f"flood {rate:>5}/s for {args.flood_s:g} s (sipp took {took:.1f} s): worker deaths"
            f" {died}; a new call answered {back}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
