#!/usr/bin/env python3
"""Fuzz at scale: thousands of mutated SIP requests at a `sipagent serve` pool, then one
legitimate call.

It starts `sipagent serve --workers N` (fake providers, allow-list 127.0.0.1/32, no app),
sends `--count` mutated requests (tests/helpers/sipfuzz.py: byte damage, header abuse, broken
request lines, wrong lengths, hostile SDP) spread over the workers' SIP ports, alternating
between an allowed source (127.0.0.1) and a stranger (127.0.0.2), then places a call with
the test softphone and prints: the answers by status, every worker death with its cause,
and whether the call went through.

Usage: python scripts/sip_fuzz.py [--count 5000] [--rate 40] [--seed 1] [--workers 2]
Exit status 0 when the call went through and no worker died.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.devtools.demo import AgentProcess, free_udp_port
from tests.helpers.sipfuzz import fuzz, pool_env, question_call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="mutated requests to send")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sipagent-fuzz-") as tmp:
        workdir = Path(tmp)
        port = free_udp_port()
        pool = AgentProcess(
            port, env=pool_env(workdir, port), cwd=workdir, workers=args.workers, new_session=True
        )
        try:
            if not pool.wait_ready(180):
                print("\n".join(pool.lines[-30:]))
                return 2
            ports = [pool.workers[i][1] for i in sorted(pool.workers)]
            codes: dict[int, int] = {}
            started = time.monotonic()
            per_port = max(1, args.count // len(ports))
            for i, sip_port in enumerate(ports):
                got = fuzz(
                    ("127.0.0.1", sip_port),
                    per_port,
                    seed=args.seed * 100 + i,
                    rate=args.rate / len(ports),
                )
                for code, n in got.items():
                    codes[code] = codes.get(code, 0) + n
            took = time.monotonic() - started
            time.sleep(2.0)  # a worker aborted by the last messages is restarted meanwhile
            deaths = [line for line in pool.lines if ") died (" in line]
            aborts = [line for line in pool.lines if "Assertion" in line]
            report = question_call(ports[0])
        finally:
            pool.stop(30)
    answered = bool(report.get("answered"))
    print(f"sent {per_port * len(ports)} mutated requests in {took:.1f} s (seed {args.seed})")
    print("answers by status: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())))
    print(f"worker deaths: {len(deaths)}")
    for line in deaths + aborts:
        print(f"  {line}")
    print(f"legitimate call afterwards: {'answered' if answered else 'FAILED'}")
    return 0 if answered and not deaths else 1


if __name__ == "__main__":
    sys.exit(main())
