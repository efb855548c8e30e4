#!/usr/bin/env python3
"""Turn overhead of the cloud path: Deepgram + OpenAI + ElevenLabs through their official
SDKs, against loopback fakes that add a published peer benchmark's latencies (STT final
200 ms, LLM first token 150 ms, TTS first byte 80 ms) and otherwise behave as the vendors
document (see each fake's docstring for the pages):

- Deepgram in realistic mode: it hears the caller's words by level, sends an interim per
  second of audio (cumulative) and its endpointing / Finalize finals, each 200 ms after
  the audio it covers, with the question the caller said as the punctuated transcript;
- OpenAI streams the reply a token at a time (about 4 characters) at `TOKENS_PER_S` after
  a 150 ms first token;
- ElevenLabs sends its first audio after 80 ms, then generates `TTS_REALTIME_FACTOR` times
  faster than real time.

It runs `sipagent serve` with those providers, places calls with the test softphone (real
SIP and RTP on 127.0.0.1), and prints p50/p95 of each part of a turn and of the overhead:
what a turn costs beyond the end-of-turn wait and the fakes' first-result delays (the
token rate is part of the overhead: the first speakable piece of text needs its tokens).
The agent runs with its default settings: the transcript finalised early in the caller's
pause, the reply generated ahead from it, the end of turn judged by the words.
`--early-final-ms 0` turns the early final off (and with it the rest), so the three delays
add up as in the peer benchmark.  `--env KEY=VALUE` (repeatable) passes a setting to the
agent, to compare settings (e.g. SIPAGENT_CONVERSATION__GENERATE_AHEAD=false).
`--per-turn` prints each turn, with where the agent's end of speech fell against the
caller's.

Usage: python scripts/bench/cloud_overhead.py [--calls 3] [--turns 4] [--early-final-ms MS]
           [--env SIPAGENT_X__Y=value ...] [--per-turn]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from gateway.devtools.demo import AgentProcess, free_udp_port
from sip_config import VadSettings
from tests.fakes.deepgram import FakeDeepgram
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.openai_chat import FakeOpenAi, Text

ROOT = Path(__file__).resolve().parents[2]
STT_MS, LLM_MS, TTS_MS = 200.0, 150.0, 80.0
# Assumptions (the vendors publish no figure): a small chat model's output speed, and how
# much faster than real time streaming TTS generates audio.
TOKENS_PER_S = 50.0
TTS_REALTIME_FACTOR = 4.0
QUESTIONS = [
    "What are your opening hours?",
    "Where are you located?",
    "Do you sell croissants?",
    "Is there parking near the shop?",
]
REPLY = "Sure, I can help with that. We are open from seven until six. Anything else?"


def pct(values: list[float], q: float) -> float:
    """Percentile (linear interpolation)."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def run(
    calls: int,
    turns: int,
    early_final_ms: int | None = None,
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Place the calls one after another; return the caller-side and agent-side samples.
    `settings` are extra environment variables for the agent (they win over the bench's)."""
    wire: list[float] = []
    steps: list[dict[str, Any]] = []
    unanswered = 0
    questions = QUESTIONS[:turns]
    with (
        FakeDeepgram("dg-bench") as dg,
        FakeOpenAi("sk-bench") as oa,
        FakeElevenLabs(
            api_key="xi-bench",
            first_byte_delay_s=TTS_MS / 1000,
            realtime_factor=TTS_REALTIME_FACTOR,
        ) as el,
    ):
        dg.realistic(latency_s=STT_MS / 1000)
        reply = Text(REPLY, first_delay_s=LLM_MS / 1000, tokens_per_s=TOKENS_PER_S)
        oa.default = reply  # one per generation, discarded ones included
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAGENT_")}
        env.update(
            {
                "SIPAGENT_PROVIDERS__STT": "deepgram",
                "SIPAGENT_PROVIDERS__BRAIN": "openai",
                "SIPAGENT_PROVIDERS__TTS": "elevenlabs",
                "SIPAGENT_DEEPGRAM__API_KEY": dg.api_key,
                "SIPAGENT_DEEPGRAM__BASE_URL": dg.url,
                "SIPAGENT_OPENAI__API_KEY": oa.api_key,
                "SIPAGENT_OPENAI__BASE_URL": oa.base_url,
                "SIPAGENT_ELEVENLABS__API_KEY": el.api_key,
                "SIPAGENT_ELEVENLABS__BASE_URL": el.base_url,
                "SIPAGENT_POOL__SPARE": "false",
                "SIPAGENT_APP__ENABLED": "false",
            }
        )
        if early_final_ms is not None:
            env["SIPAGENT_VAD__EARLY_FINAL_MS"] = str(early_final_ms)
        env.update(settings or {})
        # The agent and the softphone run this checkout's code, not whatever the venv's
        # editable install points at (they start in other directories).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        port = free_udp_port()
        with tempfile.TemporaryDirectory() as tmp:
            env["SIPAGENT_RECORDS__URL"] = f"sqlite:///{tmp}/records.db"
            agent = AgentProcess(port, env=env, cwd=Path(tmp), workers=1)
            try:
                if not agent.wait_listening(120):
                    raise SystemExit("agent did not start:\n" + "\n".join(agent.lines[-20:]))
                for n in range(calls):
                    dg.script.clear()
                    dg.script.extend(questions)  # what the caller says, as Deepgram hears it
                    cmd = [sys.executable, "-m", "gateway.cli", "call"]
                    cmd += [f"sip:agent@127.0.0.1:{port}", "--json"]
                    for q in questions:
                        cmd += ["--say", q]
                    out = subprocess.run(
                        cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
                    )
                    line = next(
                        (x for x in reversed(out.stdout.splitlines()) if x.startswith("{")), None
                    )
                    if line is None:
                        unanswered += turns
                        print(f"call {n + 1}: no report\n{out.stderr[-500:]}", file=sys.stderr)
                        continue
                    for step in json.loads(line)["steps"]:
                        steps.append(step)
                        if step["reply_latency_ms"] is None:
                            unanswered += 1
                        else:
                            wire.append(float(step["reply_latency_ms"]))
                    print(f"call {n + 1}/{calls} done", file=sys.stderr)
                    time.sleep(0.5)
            finally:
                agent.stop()
    records = agent.turns()
    replies = [t for t in records if t["kind"] == "reply" and not t["interrupted"]]
    heard = sum(1 for t in replies if t.get("user_text") in questions)
    counts = [t["discarded"] for t in records if "discarded" in t]  # a newer agent's field
    discarded = sum(c for c in counts if isinstance(c, int)) if counts else None
    return {
        "steps": steps,
        "wire": wire,
        "turns": replies,
        "unanswered": unanswered,
        "heard": heard,
        "discarded": discarded,
        "generations": len(oa.streams),
    }


def pair_turns(
    steps: list[dict[str, Any]], turns: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each answered softphone step with the agent turn that answered it: the first reply
    whose end of speech (the agent's VAD) is nearest the step's (both CLOCK_MONOTONIC)."""
    pairs = []
    for step in steps:
        said = step.get("end_of_speech_at") or 0.0
        if step.get("reply_latency_ms") is None or not said:
            continue
        near = [t for t in turns if abs(float(t["end_of_speech_at"]) - said) < 1.0]
        if near:
            pairs.append((step, min(near, key=lambda t: abs(float(t["end_of_speech_at"]) - said))))
    return pairs


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict (SystemExit on one without ``=``)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3, help="calls to place, one at a time")
    ap.add_argument("--turns", type=int, default=4, choices=range(1, 5), help="questions/call")
    ap.add_argument(
        "--early-final-ms",
        type=int,
        default=None,
        help="vad.early_final_ms (default: the agent's; 0: the STT final is asked for at the"
        " end of the turn)",
    )
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the agent, e.g. SIPAGENT_VAD__END_OF_TURN_MS=300 (repeatable)",
    )
    ap.add_argument("--per-turn", action="store_true", help="print each turn's figures")
    args = ap.parse_args()
    settings = parse_env(args.env)
    data = run(args.calls, args.turns, args.early_final_ms, settings)
    turns = data["turns"]
    mocked = STT_MS + LLM_MS + TTS_MS
    eot = [float(t["eot_wait_ms"]) for t in turns]
    stages = ("eot_wait_ms", "stt_ms", "brain_ms", "tts_first_ms", "playout_ms")
    rows: list[tuple[str, list[float]]] = [
        ("agent: end-of-turn wait", eot),
        ("agent: STT final (fake: 200)", [float(t["stt_ms"]) for t in turns]),
        ("agent: LLM first token (fake: 150)", [float(t["brain_ms"]) for t in turns]),
        ("agent: TTS first audio (fake: 80)", [float(t["tts_first_ms"]) for t in turns]),
        ("agent: playout to the wire", [float(t["playout_ms"]) for t in turns]),
        (
            "agent: rest (1st token→text to speak)",
            [float(t["total_ms"]) - sum(float(t[k]) for k in stages) for t in turns],
        ),
        ("agent: total", [float(t["total_ms"]) for t in turns]),
        (
            "agent: overhead beyond the fakes",
            [float(t["total_ms"]) - float(t["eot_wait_ms"]) - mocked for t in turns],
        ),
        ("wire: caller's end of speech → audio", data["wire"]),
    ]
    if data["wire"] and eot:
        wait = float(np.median(eot))
        rows.append(("wire: overhead beyond the fakes", [w - wait - mocked for w in data["wire"]]))
    pairs = pair_turns(data["steps"], turns)
    rows.append(
        (
            "wire: caller's end → agent's end of speech",
            [
                (float(t["end_of_speech_at"]) - float(st["end_of_speech_at"])) * 1000
                for st, t in pairs
            ],
        )
    )
    early = VadSettings().early_final_ms if args.early_final_ms is None else args.early_final_ms
    print(
        f"\ncloud turn latency, {len(turns)} agent turns, {len(data['wire'])} heard,"
        f" {data['unanswered']} unanswered (fakes: STT {STT_MS:.0f}, LLM {LLM_MS:.0f}"
        f" + {TOKENS_PER_S:.0f} tokens/s, TTS {TTS_MS:.0f} ms + {TTS_REALTIME_FACTOR:g}x"
        f" real time; early final {early} ms)"
    )
    if settings:
        print("settings: " + " ".join(f"{k}={v}" for k, v in settings.items()))
    discarded = data["discarded"]
    print(
        f"transcripts as said: {data['heard']}/{len(turns)}; LLM generations:"
        f" {data['generations']}; discarded generations:"
        f" {'n/a (not in the records)' if discarded is None else discarded}"
    )
    ahead = sum(1 for t in turns if t.get("ahead"))
    print(f"replies generated ahead (in the caller's pause) and kept: {ahead}/{len(turns)}")
    if args.per_turn:
        for st, t in pairs:
            lag = (float(t["end_of_speech_at"]) - float(st["end_of_speech_at"])) * 1000
            print(
                f"  {st['text'][:36]:36} wire {st['reply_latency_ms']:6.0f}  agent"
                f" {float(t['total_ms']):6.0f}  eot {float(t['eot_wait_ms']):4.0f}"
                f"  agent's end of speech +{lag:4.0f} ms"
            )
    print(f"{'metric':44} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for label, values in rows:
        if values:
            print(
                f"{label:44} {len(values):4d} {pct(values, 50):8.0f} {pct(values, 95):8.0f}"
                f" {max(values):8.0f}"
            )
    return 0 if data["wire"] and not data["unanswered"] else 1


if __name__ == "__main__":
    sys.exit(main())
