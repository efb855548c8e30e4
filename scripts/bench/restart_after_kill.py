#!/usr/bin/env python3
"""Restart after `kill -9`: how soon a new `sipagent serve` answers a call when the old
supervisor was killed a moment before.

It starts `sipagent serve --workers N` (the offline pipeline, or the fake providers with
`--fake`), kills its supervisor with SIGKILL, starts a new one on the same ports and
records at once, and sends an INVITE every 50 ms until one is answered (then hangs up).
It prints when the old workers were gone, when the new pool was ready and when the first
call was answered, each from the kill.

Usage: python scripts/bench/restart_after_kill.py [--workers 2] [--fake]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.devtools.demo import AgentProcess, free_udp_port, rtp_base_for
from tests.helpers.sipraw import RawSip, call, sdp_offer


def children(pid: int) -> set[int]:
    """Child processes of `pid`."""
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out |= {int(p) for p in f.read().split()}
    return out


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fake", action="store_true", help="fake providers (no models)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipagent-restart-") as tmp:
        workdir = Path(tmp)
        port = free_udp_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAGENT_")}
        env.update(
            SIPAGENT_SIP__RTP_PORT_START=str(rtp_base_for(port, 40 * 8)),
            SIPAGENT_APP__ENABLED="false",
            SIPAGENT_RECORDS__URL=f"sqlite:///{workdir / 'records.db'}",
        )
        if args.fake:
            env.update(
                SIPAGENT_PROVIDERS__STT="fake",
                SIPAGENT_PROVIDERS__TTS="fake",
                SIPAGENT_PROVIDERS__BRAIN="fake",
            )
        first = AgentProcess(port, env=env, cwd=workdir, workers=args.workers, new_session=True)
        second: AgentProcess | None = None
        try:
            if not first.wait_ready(300):
                print("\n".join(first.lines[-30:]))
                return 2
            workers = children(first.proc.pid)
            killed = time.monotonic()
            os.kill(first.proc.pid, signal.SIGKILL)
            second = AgentProcess(port, env=env, cwd=workdir, workers=args.workers)
            gone = 0.0
            while not gone:
                if not any(alive(p) for p in workers):
                    gone = time.monotonic() - killed
                time.sleep(0.005)
            answered = 0.0
            with RawSip() as sip:
                while not answered and second.proc.poll() is None:
                    try:
                        dialog = call(sip, ("127.0.0.1", port), sdp_offer(), timeout=0.05)
                    except AssertionError:
                        continue
                    answered = time.monotonic() - killed
                    sip.send(dialog.request(sip, "BYE"), ("127.0.0.1", port))
            second.wait_ready(60)
            ready = next(
                (ln for ln in second.lines if ln.startswith("sipagent: ready:")), "not ready"
            )
        finally:
            for proc in (first, second):
                if proc is not None:
                    proc.stop(30)
    kind = "fake providers" if args.fake else "offline pipeline"
    print(f"sipagent serve --workers {args.workers} ({kind}), supervisor killed with SIGKILL:")
    print(f"  old workers gone after {gone * 1000:.0f} ms")
    if answered:
        print(f"  first call answered by the new serve {answered:.2f} s after the kill")
    else:
        print("  the new serve never answered: " + " | ".join(second.lines[-5:] if second else []))
    print(f"  ({ready})")
    return 0 if answered else 1


if __name__ == "__main__":
    sys.exit(main())
