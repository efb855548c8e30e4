"""`sipagent call` on a Plivo stream: which options go with which kind of call, and what
reaches the softphone (no call is placed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gateway.devtools.softphone
from gateway.cli import main
from gateway.devtools.softphone import CallScript


@pytest.fixture(autouse=True)
def placed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, CallScript]]:
    """No SIPAGENT_* variables, and `run_softphone` only records what it was given."""
    for name in list(os.environ):
        if name.upper().startswith("SIPAGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[str, CallScript]] = []

    def record(uri: str, script: CallScript) -> int:
        calls.append((uri, script))
        return 0

    monkeypatch.setattr(gateway.devtools.softphone, "run_softphone", record)
    return calls


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--put-on-hold", "2"], "--put-on-hold"),
        (["--switch-codec", "PCMA"], "--switch-codec"),
        (["--refresh"], "--refresh"),
        (["--dtmf-method", "info"], "--dtmf-method info"),
        (["--codecs", "PCMA"], "--codecs"),
        (["--session-expires", "90"], "--session-expires"),
        (["--auth", "u:p"], "--auth"),
    ],
)
@pytest.mark.parametrize("target", [["ws://127.0.0.1:8090/s"], ["--answer-url", "http://h/a"]])
def test_sip_only_options_are_refused_on_a_stream(
    target: list[str],
    extra: list[str],
    flag: str,
    capsys: pytest.CaptureFixture[str],
    placed: list[tuple[str, CallScript]],
) -> None:
    assert main(["call", *target, "--say", "hi", *extra]) == 2
    assert f"{flag} is SIP only: not on a Plivo stream" in capsys.readouterr().err
    assert placed == []


@pytest.mark.parametrize(
    "extra",
    [["--auth-token", "t"], ["--extra-headers", "a=1"], ["--no-stop"], ["--from", "+1"]],
)
def test_stream_options_are_refused_on_a_sip_call(
    extra: list[str], capsys: pytest.CaptureFixture[str], placed: list[tuple[str, CallScript]]
) -> None:
    assert main(["call", "sip:agent@127.0.0.1:5060", *extra]) == 2
    assert f"{extra[0]} is for a Plivo stream" in capsys.readouterr().err
    assert placed == []


@pytest.mark.parametrize(
    "argv",
    [["call", "http://h/answer"], ["call", "--answer-url", "ws://h/s"]],
)
def test_answer_urls_go_with_answer_url(
    argv: list[str], capsys: pytest.CaptureFixture[str], placed: list[tuple[str, CallScript]]
) -> None:
    assert main(argv) == 2
    assert "sipagent call:" in capsys.readouterr().err
    assert placed == []


def test_a_stream_call_reaches_the_softphone_with_its_options(
    monkeypatch: pytest.MonkeyPatch, placed: list[tuple[str, CallScript]]
) -> None:
    url = "wss://bot.example/stream?call=c1"
    argv = ["call", url, "--say", "hi", "--dtmf", "12", "--barge", "wait", "--no-stop"]
    assert main([*argv, "--extra-headers", "a=1", "--header", "X-A:1"]) == 0
    uri, script = placed[-1]
    assert uri == url and script.steps == [("say", "hi"), ("dtmf", "12"), ("barge", "wait")]
    assert (script.extra_headers, script.send_stop, script.headers) == ("a=1", False, {"X-A": "1"})
    assert script.auth_token == ""
    monkeypatch.setenv("SIPAGENT_APP__AUTH_TOKEN", "from-env")
    assert main(["call", url]) == 0
    assert placed[-1][1].auth_token == "from-env"
    assert main(["call", url, "--auth-token", "flag"]) == 0
    assert placed[-1][1].auth_token == "flag"
    answer = ["call", "--answer-url", "https://app.example/answer", "--from", "+1", "--to", "+2"]
    assert main(answer) == 0
    uri, script = placed[-1]
    assert uri == "https://app.example/answer" and (script.caller, script.called) == ("+1", "+2")
