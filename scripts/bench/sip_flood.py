#!/usr/bin/env python3
"""SIP flood: how long the pool's SIP ports go unbound while it is flooded or crash-looping.

It starts `sipagent serve --workers N` (fake providers, allow-list 127.0.0.1/32, no app)
and, for `--seconds`, sends INVITEs with SDP at `--rate` a second to worker 0's SIP port
(the one a trunk's primary origination URI names; `--spread` spreads them over every
worker): from a stranger (127.0.0.2, refused with 403) by default, with `--allowed` as
calls from the allowed source that are hung up at once (INVITE, 200, ACK, BYE). With
`--kill-every S` it also kills worker 0's process (SIGKILL) every S seconds, a crash loop
whatever its cause. A watcher reads /proc/net/udp every 5 ms and measures, per SIP port,
every stretch during which no socket was bound to it. It prints the answers by status,
worker deaths, the longest unbound stretch per port and whether a call goes through
afterwards.

Usage: python scripts/bench/sip_flood.py [--rate 100] [--seconds 20] [--workers 2]
                                          [--allowed] [--kill-every 1.0]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import contextlib

from gateway.devtools.demo import AgentProcess, free_udp_port
from tests.helpers.sipfuzz import pool_env, question_call
from tests.helpers.sipraw import RawSip, call, sdp_offer


def bound_udp_ports() -> set[int]:
    """Local ports of every UDP socket on the machine (IPv4)."""
    ports: set[int] = set()
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            local = line.split()[1]
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class Watcher(threading.Thread):
    """Measures the stretches during which each port had no socket bound."""

    def __init__(self, ports: list[int], step_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.step_s = step_s
        self.longest = dict.fromkeys(ports, 0.0)
        self.gaps: dict[int, list[float]] = {p: [] for p in ports}
        self._down_since: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.monotonic()
            bound = bound_udp_ports()
            for port in self.ports:
                if port not in bound:
                    self._down_since.setdefault(port, now)
                    self.longest[port] = max(self.longest[port], now - self._down_since[port])
                elif port in self._down_since:
                    self.gaps[port].append(now - self._down_since.pop(port))
            time.sleep(self.step_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def flood(ports: list[int], rate: float, seconds: float, allowed: bool) -> dict[int, int]:
    """INVITEs at `rate` a second over `ports`; returns the final answers by status."""
    sip = RawSip("127.0.0.1" if allowed else "127.0.0.2")
    codes: dict[int, int] = {}
    start = time.monotonic()
    sent = 0
    done = threading.Event()

    def count_answers() -> None:  # the stranger's answers, read as they come
        while not done.is_set():
            for resp in sip.receive(0.1):
                if resp.code >= 200:
                    codes[resp.code] = codes.get(resp.code, 0) + 1

    reader = threading.Thread(target=count_answers, daemon=True)
    if not allowed:
        reader.start()
    try:
        while time.monotonic() - start < seconds:
            target = ("127.0.0.1", ports[sent % len(ports)])
            if allowed:
                try:
                    dialog = call(sip, target, sdp_offer(), timeout=0.5)
                    sip.send(dialog.request(sip, "BYE"), target)
                    code = 200
                except AssertionError as exc:
                    words = str(exc).split()
                    code = int(words[2]) if len(words) > 2 and words[2].isdigit() else 0
                codes[code] = codes.get(code, 0) + 1
            else:
                sip.send(sip.request("INVITE", target, body=sdp_offer()), target)
            sent += 1
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
        time.sleep(1.0)
    finally:
        done.set()
        if reader.is_alive():
            reader.join(2)
        sip.close()
    return codes


def killer(pool: AgentProcess, every_s: float, stop: threading.Event) -> None:
    """SIGKILL worker 0's current process every `every_s` seconds."""
    while not stop.wait(every_s):
        pid = pool.workers.get(0, (0, 0))[0]
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="INVITEs per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--allowed", action="store_true", help="calls from the allowed source")
    parser.add_argument("--kill-every", type=float, default=0.0, help="kill worker 0 every S s")
    parser.add_argument("--spread", action="store_true", help="flood every worker, not worker 0")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sipagent-flood-") as tmp:
        workdir = Path(tmp)
        port = free_udp_port()
        pool = AgentProcess(
            port, env=pool_env(workdir, port), cwd=workdir, workers=args.workers, new_session=True
        )
        stop = threading.Event()
        try:
            if not pool.wait_ready(180):
                print("\n".join(pool.lines[-30:]))
                return 2
            ports = [pool.workers[i][1] for i in sorted(pool.workers)]
            watcher = Watcher(ports)
            watcher.start()
            kill = threading.Thread(target=killer, args=(pool, args.kill_every, stop), daemon=True)
            if args.kill_every > 0:
                kill.start()
            codes = flood(
                ports if args.spread else ports[:1], args.rate, args.seconds, args.allowed
            )
            stop.set()
            time.sleep(2.0)
            watcher.stop()
            deaths = [line for line in pool.lines if ") died (" in line]
            report = question_call(ports[0])
        finally:
            stop.set()
            pool.stop(30)
    source = "allowed source, calls hung up at once" if args.allowed else "stranger (refused)"
    where = "every worker" if args.spread else "worker 0"
    print(f"{args.rate:g} INVITE/s to {where} for {args.seconds:g} s from the {source}")
    if args.kill_every > 0:
        print(f"worker 0 killed every {args.kill_every:g} s")
    print("final answers by status: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())))
    print(f"worker deaths: {len(deaths)}")
    for p in ports:
        gaps = " ".join(f"{g * 1000:.0f}" for g in sorted(watcher.gaps[p]))
        print(
            f"SIP port {p}: unbound {len(watcher.gaps[p])} time(s),"
            f" longest {watcher.longest[p] * 1000:.0f} ms" + (f" (ms: {gaps})" if gaps else "")
        )
    print(f"call afterwards: {'answered' if report.get('answered') else 'FAILED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
