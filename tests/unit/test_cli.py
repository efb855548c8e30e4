"""Tests for gateway.cli: the argument parser and the configuration errors of `main`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import gateway.pool.supervisor
from gateway import cli
from gateway.cli import build_parser, main
from sip_config import Settings
from xml_app.pool_app import start_pool_app


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty working directory (no .env), no SIPAGENT_* variables, and no SIP ever started."""
    for name in list(os.environ):
        if name.upper().startswith("SIPAGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def no_sip(settings: Settings, workers: int | None = None, start_app: object = None) -> int:
        raise AssertionError("the pool would have started")

    monkeypatch.setattr(gateway.pool.supervisor, "run_supervisor", no_sip)


# -- parser -----------------------------------------------------------------------------------


def test_call_keeps_steps_in_order_as_tuples() -> None:
    args = build_parser().parse_args(
        ["call", "sip:agent@127.0.0.1:5060", "--say", "a", "--play", "b.wav", "--barge", "c"]
    )
    assert args.command == "call"
    assert args.uri == "sip:agent@127.0.0.1:5060"
    assert args.steps == [("say", "a"), ("play", "b.wav"), ("barge", "c")]
    assert args.func is cli.cmd_call


def test_call_steps_interleave_and_repeat() -> None:
    args = build_parser().parse_args(
        [
            "call",
            "sip:agent@127.0.0.1:5070",
            "--barge",
            "stop please",
            "--say",
            "what are your opening hours",
            "--barge",
            "wait",
            "--play",
            "/tmp/x.wav",
            "--say",
            "bye",
        ]
    )
    assert args.steps == [
        ("barge", "stop please"),
        ("say", "what are your opening hours"),
        ("barge", "wait"),
        ("play", "/tmp/x.wav"),
        ("say", "bye"),
    ]


def test_call_defaults() -> None:
    args = build_parser().parse_args(["call", "sip:agent@127.0.0.1:5060"])
    assert args.steps is None
    assert args.barge_after == 1.5
    assert args.timeout == 20.0
    assert args.hold == 0.0
    assert args.codecs == "PCMU,PCMA"
    assert args.record is None
    assert (args.transcribe, args.json, args.no_hangup, args.vanish, args.verbose) == (
        False,
        False,
        False,
        False,
        False,
    )


def test_call_options_are_typed() -> None:
    args = build_parser().parse_args(
        [
            "call",
            "sip:a@127.0.0.1",
            "--barge-after",
            "0.25",
            "--record",
            "out.wav",
            "--timeout",
            "3",
            "--codecs",
            "PCMA",
            "--json",
            "-v",
        ]
    )
    assert args.barge_after == 0.25
    assert args.record == Path("out.wav")
    assert args.timeout == 3.0
    assert args.codecs == "PCMA"
    assert args.json is True
    assert args.verbose is True


def test_serve_and_demo_parse() -> None:
    serve = build_parser().parse_args(["serve", "--config", "agent.toml", "--listen", ":5070"])
    assert serve.config == Path("agent.toml")
    assert serve.listen == ":5070"
    assert serve.func is cli.cmd_serve
    demo = build_parser().parse_args(["demo", "--port", "5099"])
    assert demo.port == 5099
    assert demo.config is None
    assert demo.func is cli.cmd_demo


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["call"],
        ["nonsense"],
        ["call", "sip:a@b", "--barge-after", "soon"],
        ["demo", "--port", "x"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "usage: sipagent" in capsys.readouterr().err


# -- main: configuration errors return 2 before any SIP starts ---------------------------------


@pytest.mark.parametrize("listen", ["bad", "127.0.0.1:99999", "::1:5060", "host:port", " "])
def test_serve_bad_listen_returns_2(listen: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", listen]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("sipagent: configuration error: --listen: ")
    assert captured.out == ""


def test_serve_empty_listen_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", ""]) == 2
    assert "--listen: empty value" in capsys.readouterr().err


def test_serve_bad_listen_message_names_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", "127.0.0.1:99999"]) == 2
    assert "port must be between 1 and 65535 (got 99999)" in capsys.readouterr().err


def test_serve_missing_config_file_returns_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "agent.toml"
    assert main(["serve", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert "config file not found" in err
    assert str(missing) in err


def test_serve_invalid_env_port_returns_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPAGENT_SIP__LISTEN_PORT", "70000")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "sip.listen_port" in err
    assert "70000" in err


def test_serve_invalid_config_file_value_returns_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[vad]\naggressiveness = 9\n", encoding="utf-8")
    assert main(["serve", "--config", str(config)]) == 2
    assert "vad.aggressiveness" in capsys.readouterr().err


def test_serve_listen_overrides_reach_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """With valid settings `serve` hands them to the supervisor (stubbed here: no SIP)."""
    seen: dict[str, Any] = {}

    def fake_run_supervisor(settings: Settings, workers: int | None, start_app: object) -> int:
        seen["settings"] = settings
        seen["workers"] = workers
        seen["start_app"] = start_app
        return 7

    monkeypatch.setattr(gateway.pool.supervisor, "run_supervisor", fake_run_supervisor)
    monkeypatch.setattr(cli, "_setup_logging", lambda level: None)
    monkeypatch.setenv("SIPAGENT_SIP__LISTEN_PORT", "5080")  # --listen beats the environment
    assert main(["serve", "--listen", "127.0.0.2:5099", "--workers", "3"]) == 7
    settings = seen["settings"]
    assert isinstance(settings, Settings)
    assert settings.sip.listen_host == "127.0.0.2"
    assert settings.sip.listen_port == 5099
    assert seen["workers"] == 3
    assert seen["start_app"] is start_pool_app  # the answer_url app, for app.enabled


@pytest.mark.parametrize("workers", ["0", "-2", "many"])
def test_serve_bad_workers_exits_2(workers: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--workers", workers])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_call_with_an_unreadable_wav_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"this is not a wav file")
    assert main(["call", "sip:agent@127.0.0.1:9", "--play", str(bad)]) == 2
    assert "cannot use that audio" in capsys.readouterr().err
    assert main(["call", "sip:agent@127.0.0.1:9", "--play", str(tmp_path / "missing.wav")]) == 2
