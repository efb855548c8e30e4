"""Call life cycle on the wire: vanishing callers, no input, bad configuration, the demo."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.wire import clean_env, count_lines, place_call, running_agent, uri, wait_for

pytestmark = [pytest.mark.wire, pytest.mark.timeout(300)]


def test_caller_vanishing_without_bye_is_hung_up_after_rtp_timeout(tmp_path: Path) -> None:
    with running_agent(tmp_path, sip__rtp_timeout_s="3") as agent:
        r = place_call(uri(agent), "--say", "Where are you located?", "--vanish")
        assert r["returncode"] == 0, r
        assert r["ended_by"] == "caller-vanished"
        t0 = time.monotonic()
        wait_for(lambda: count_lines(agent, "no RTP for") == 1, 10, "the RTP timeout")
        wait_for(lambda: count_lines(agent, " ended: ") == 1, 40, "the call to be torn down")
        assert time.monotonic() - t0 < 40
        ok = place_call(uri(agent), "--say", "What are your opening hours?")
        assert ok["returncode"] == 0, ok


def test_silent_caller_is_reprompted_then_hung_up(tmp_path: Path) -> None:
    with running_agent(tmp_path, conversation__no_input_timeout_s="2") as agent:
        r = place_call(uri(agent), "--no-hangup", "--timeout", "15")
        assert r["ended_by"] == "agent", r
        kinds = [t["kind"] for t in agent.turns()]
        assert kinds == ["greeting", "reprompt", "goodbye"], kinds
        # Three stretches of agent speech: greeting, re-prompt, goodbye.
        assert len(r["segments"]) == 3, r["segments"]
        gaps = [
            b["start_ms"] - (a["start_ms"] + a["duration_ms"])
            for a, b in zip(r["segments"], r["segments"][1:], strict=False)
        ]
        assert all(1800 <= g <= 3500 for g in gaps), gaps


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(**env),
    )


@pytest.mark.parametrize(
    ("toml", "env", "field"),
    [
        ("[sip]\nlisten_port = 70000\n", {}, "sip.listen_port"),
        ('[providers]\nstt = "whisperx"\n', {}, "providers.stt"),
        ('playbook = "nowhere.toml"\n', {}, "playbook"),
        ('[sip]\ncodecs = ["G729"]\n', {}, "sip.codecs"),
        ("", {"SIPAGENT_VAD__AGGRESSIVENESS": "9"}, "vad.aggressiveness"),
        ("[sip\n", {}, "invalid TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path, toml: str, env: dict[str, str], field: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    proc = _serve(tmp_path, "--config", str(cfg), **env)
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_listen_address_exits_2(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "--listen", "127.0.0.1:notaport")
    assert proc.returncode == 2
    assert "--listen" in proc.stderr


def test_good_config_after_bad_ones_takes_a_call(tmp_path: Path) -> None:
    cfg = tmp_path / "good.toml"
    cfg.write_text('[sip]\ncodecs = ["PCMA", "PCMU"]\nuser = "bakery"\n')
    with running_agent(tmp_path, sip__codecs="PCMA,PCMU", sip__user="bakery") as agent:
        r = place_call(f"sip:bakery@127.0.0.1:{agent.port}", "--say", "Where are you located?")
        assert r["returncode"] == 0, r


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with running_agent(tmp_path) as agent:
        proc = _serve(tmp_path, "--listen", f"127.0.0.1:{agent.port}")
        assert proc.returncode == 1
        assert "cannot listen on udp" in proc.stderr


def test_demo_runs_a_call_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "greeting heard" in out, out
    assert out.count("agent answered") == 2, out
    assert "the call went through" in out, out
    assert "→ hours" in out and "→ address" in out, out
