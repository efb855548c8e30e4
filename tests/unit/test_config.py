"""Tests for sip_config: sources, priorities, validation messages and --listen parsing."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.providers.registry import names
from sip_config import (
    ConfigError,
    Settings,
    bundled_playbook_path,
    load_settings,
    parse_listen,
    vendor_key,
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run every test in an empty directory with no SIPAGENT_* variables set."""
    for name in list(os.environ):
        if name.upper().startswith("SIPAGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(*args: Any, **kwargs: Any) -> str:
    """Call load_settings expecting a ConfigError; return its message."""
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)
    return str(info.value)


# --- defaults and sources ---------------------------------------------------------------


def test_defaults_with_nothing_set() -> None:
    settings = load_settings()
    sip = settings.sip
    assert (sip.listen_host, sip.listen_port, sip.public_host) == ("127.0.0.1", 5060, None)
    assert sip.user == "agent"
    assert sip.codecs == ["PCMU", "PCMA"]
    assert sip.max_calls == 4
    assert (sip.rtp_port_start, sip.rtp_port_range, sip.rtp_timeout_s) == (20000, 200, 30.0)
    assert sip.user_agent == ""  # neutral: no User-Agent header
    vad = settings.vad
    assert vad.aggressiveness == 2
    assert (vad.min_speech_ms, vad.end_of_turn_ms, vad.barge_in_min_speech_ms) == (120, 400, 80)
    assert (vad.preroll_ms, vad.max_utterance_s) == (200, 20.0)
    assert settings.conversation.no_input_timeout_s == 8.0
    assert settings.conversation.max_call_s == 3600
    providers = settings.providers
    assert (providers.stt, providers.tts, providers.brain) == ("pocketsphinx", "piper", "scripted")
    assert providers.piper_length_scale == 1.0
    assert settings.log_level == "INFO"
    assert settings.playbook == bundled_playbook_path()


def test_bundled_playbook_path_is_inside_gateway_package() -> None:
    spec = importlib.util.find_spec("gateway")
    assert spec is not None and spec.origin is not None
    expected = Path(spec.origin).parent / "playbooks" / "demo.toml"
    assert bundled_playbook_path() == expected


def test_the_shipped_providers_come_from_the_registry() -> None:
    assert names("stt", shipped_only=True) == ("pocketsphinx", "deepgram")
    assert names("tts", shipped_only=True) == ("piper", "elevenlabs")
    assert names("brain", shipped_only=True) == ("scripted", "openai", "external", "webhook")
    with pytest.raises(ConfigError, match="unknown TTS provider; known: piper, elevenlabs, fake"):
        load_settings(None, env_file=None, overrides={"providers": {"tts": "polly"}})
    with pytest.raises(ConfigError, match="unknown STT provider"):
        load_settings(None, env_file=None, overrides={"providers": {"stt": " "}})
    p = load_settings(None, env_file=None, overrides={"providers": {"stt_fallback": " "}}).providers
    assert p.stt_fallback is None


def test_toml_file_values(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "book.toml", "")
    config = write(
        tmp_path / "conf" / "sipagent.toml",
        """
        playbook = "book.toml"
        log_level = "debug"

        [sip]
        listen_host = "0.0.0.0"
        listen_port = 5080
        public_host = "203.0.113.7"
        codecs = ["pcma"]
        max_calls = 2

        [vad]
        end_of_turn_ms = 600

        [conversation]
        no_input_timeout_s = 5.5

        [providers]
        stt = "fake"
        piper_length_scale = 1.2
        """.replace("\n        ", "\n"),
    )
    settings = load_settings(config)
    assert settings.sip.listen_host == "0.0.0.0"
    assert settings.sip.listen_port == 5080
    assert settings.sip.public_host == "203.0.113.7"
    assert settings.sip.codecs == ["PCMA"]
    assert settings.sip.max_calls == 2
    assert settings.vad.end_of_turn_ms == 600
    assert settings.vad.min_speech_ms == 120  # untouched keys keep their defaults
    assert settings.conversation.no_input_timeout_s == 5.5
    assert settings.providers.stt == "fake"
    assert settings.providers.piper_length_scale == 1.2
    assert settings.log_level == "DEBUG"
    # Relative playbook paths are resolved against the TOML file's directory, not the cwd.
    assert settings.playbook == tmp_path / "conf" / "book.toml"


def test_config_file_accepts_str(tmp_path: Path) -> None:
    write(tmp_path / "c.toml", "[sip]\nlisten_port = 5090\n")
    assert load_settings("c.toml").sip.listen_port == 5090


def test_env_overrides_toml_and_nested_values_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "c.toml", '[sip]\nlisten_host = "0.0.0.0"\nlisten_port = 5080\n')
    monkeypatch.setenv("SIPAGENT_SIP__LISTEN_PORT", "5070")
    monkeypatch.setenv("SIPAGENT_VAD__AGGRESSIVENESS", "3")
    settings = load_settings(config)
    assert settings.sip.listen_port == 5070
    assert settings.sip.listen_host == "0.0.0.0"
    assert settings.vad.aggressiveness == 3


def test_env_playbook_and_log_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    book = write(tmp_path / "pb.toml", "")
    monkeypatch.setenv("SIPAGENT_PLAYBOOK", str(book))
    monkeypatch.setenv("SIPAGENT_LOG_LEVEL", "warning")
    settings = load_settings()
    assert settings.playbook == book
    assert settings.log_level == "WARNING"


def test_overrides_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "c.toml", '[sip]\nuser = "bot"\n')
    monkeypatch.setenv("SIPAGENT_SIP__LISTEN_PORT", "5070")
    monkeypatch.setenv("SIPAGENT_SIP__LISTEN_HOST", "10.0.0.1")
    settings = load_settings(config, overrides={"sip": {"listen_port": 6000}})
    assert settings.sip.listen_port == 6000
    assert settings.sip.listen_host == "10.0.0.1"
    assert settings.sip.user == "bot"


def test_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        tmp_path / ".env",
        "UNRELATED_VARIABLE=1\nSIPAGENT_SIP__LISTEN_PORT=5999\nSIPAGENT_PROVIDERS__TTS=fake\n",
    )
    config = write(tmp_path / "c.toml", "[sip]\nlisten_port = 5080\nmax_calls = 3\n")
    settings = load_settings(config)
    assert settings.sip.listen_port == 5999  # .env beats TOML
    assert settings.sip.max_calls == 3
    assert settings.providers.tts == "fake"
    # The real environment beats .env.
    monkeypatch.setenv("SIPAGENT_SIP__LISTEN_PORT", "5070")
    assert load_settings(config).sip.listen_port == 5070


def test_dotenv_file_explicit_path_and_disabled(tmp_path: Path) -> None:
    write(tmp_path / ".env", "SIPAGENT_SIP__LISTEN_PORT=5999\n")
    other = write(tmp_path / "elsewhere" / "custom.env", "SIPAGENT_SIP__LISTEN_PORT=5111\n")
    assert load_settings(env_file=other).sip.listen_port == 5111
    assert load_settings(env_file=None).sip.listen_port == 5060
    assert load_settings(env_file=tmp_path / "absent.env").sip.listen_port == 5060


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PCMA,PCMU", ["PCMA", "PCMU"]),
        ("pcmu", ["PCMU"]),
        (" pcma , Pcmu ", ["PCMA", "PCMU"]),
        ('["PCMA"]', ["PCMA"]),
    ],
)
def test_codecs_from_env_string(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("SIPAGENT_SIP__CODECS", raw)
    assert load_settings().sip.codecs == expected


def test_codecs_from_override_string() -> None:
    assert load_settings(overrides={"sip": {"codecs": "PCMA,PCMU"}}).sip.codecs == ["PCMA", "PCMU"]


def test_fake_providers_accepted() -> None:
    settings = load_settings(
        overrides={"providers": {"stt": "fake", "tts": "fake", "brain": "fake"}}
    )
    assert (settings.providers.stt, settings.providers.tts, settings.providers.brain) == (
        "fake",
        "fake",
        "fake",
    )


def test_ipv6_listen_host_accepted() -> None:
    assert load_settings(overrides={"sip": {"listen_host": "::1"}}).sip.listen_host == "::1"
    assert load_settings(overrides={"sip": {"listen_host": "[::1]"}}).sip.listen_host == "::1"
    assert load_settings(overrides={"sip": {"listen_host": "pbx.local"}}).sip.listen_host == (
        "pbx.local"
    )


# --- errors -------------------------------------------------------------------------------


def test_port_out_of_range_in_toml(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[sip]\nlisten_port = 70000\n")
    message = config_error(config)
    assert message == "sip.listen_port: Input should be less than or equal to 65535 (got 70000)"


def test_bad_port_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAGENT_SIP__LISTEN_PORT", "http")
    message = config_error()
    assert message.startswith("sip.listen_port: ")
    assert "valid integer" in message
    assert "'http'" in message


def test_port_zero() -> None:
    message = config_error(overrides={"sip": {"listen_port": 0}})
    assert message == "sip.listen_port: Input should be greater than or equal to 1 (got 0)"


def test_max_calls_five() -> None:
    message = config_error(overrides={"sip": {"max_calls": 5}})
    assert message.startswith("sip.max_calls: must be at most 4")
    assert "pjsua2" in message
    assert "(got 5)" in message


def test_unknown_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAGENT_PROVIDERS__STT", "whisper")
    message = config_error()
    assert message.startswith("providers.stt: unknown STT provider")
    assert "pocketsphinx" in message and "fake" in message
    assert "'whisper'" in message


def test_unknown_tts_and_brain_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"providers": {"tts": "espeak", "brain": "gpt"}})
    error = info.value
    assert len(error.problems) == 2
    assert error.problems[0].startswith(
        "providers.tts: unknown TTS provider; known: piper, elevenlabs, fake"
    )
    assert "'espeak'" in error.problems[0]
    assert error.problems[1].startswith("providers.brain: unknown brain provider")
    assert "scripted" in error.problems[1] and "'gpt'" in error.problems[1]
    assert str(error) == "\n".join(error.problems)


def test_missing_playbook_from_toml(tmp_path: Path) -> None:
    config = write(tmp_path / "conf" / "c.toml", 'playbook = "nope.toml"\n')
    message = config_error(config)
    assert message == f"playbook: file not found: {tmp_path / 'conf' / 'nope.toml'}"


def test_missing_playbook_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAGENT_PLAYBOOK", "/nonexistent/dir/x.toml")
    assert config_error() == "playbook: file not found: /nonexistent/dir/x.toml"


def test_playbook_directory_rejected(tmp_path: Path) -> None:
    message = config_error(overrides={"playbook": str(tmp_path)})
    assert message == f"playbook: not a regular file: {tmp_path}"


def test_unknown_key_in_toml(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[sip]\nlisen_port = 5070\n")
    assert config_error(config) == "sip.lisen_port: unknown setting"


def test_unknown_top_level_key_in_toml(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", 'loglevel = "DEBUG"\n')
    assert config_error(config) == "loglevel: unknown setting"


def test_unknown_nested_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAGENT_VAD__AGRESSIVENESS", "1")
    assert config_error() == "vad.agressiveness: unknown setting"


def test_unknown_prefixed_key_in_dotenv(tmp_path: Path) -> None:
    write(tmp_path / ".env", "SIPAGENT_LOGLEVEL=DEBUG\n")
    assert config_error() == "loglevel: unknown setting"


@pytest.mark.parametrize(
    "field", ["min_speech_ms", "end_of_turn_ms", "barge_in_min_speech_ms", "preroll_ms"]
)
def test_ms_must_be_multiple_of_10(field: str) -> None:
    message = config_error(overrides={"vad": {field: 125}})
    assert message.startswith(f"vad.{field}: must be a multiple of 10 ms")
    assert "20 ms frames" in message
    assert "(got 125)" in message


def test_bad_toml(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[sip\nlisten_port = 5070\n")
    message = config_error(config)
    assert message.startswith(f"config file {config}: invalid TOML: ")
    assert "line 1" in message


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert config_error(missing) == f"config file not found: {missing}"


def test_config_file_is_directory(tmp_path: Path) -> None:
    assert config_error(tmp_path) == f"config file {tmp_path}: not a regular file"


@pytest.mark.parametrize(
    ("section", "values", "field", "needle"),
    [
        ("sip", {"listen_host": ""}, "sip.listen_host", "must not be empty"),
        ("sip", {"listen_host": "bad host!"}, "sip.listen_host", "'bad host!'"),
        ("sip", {"listen_host": "10.0.0.300"}, "sip.listen_host", "not a valid IP address"),
        ("sip", {"public_host": "under_score"}, "sip.public_host", "'under_score'"),
        ("sip", {"user": "a b"}, "sip.user", "'a b'"),
        ("sip", {"codecs": []}, "sip.codecs", "at least one codec"),
        ("sip", {"codecs": "PCMU,PCMU"}, "sip.codecs", "PCMU is listed twice"),
        ("sip", {"codecs": ["PCMU", "G722"]}, "sip.codecs[1]", "'G722'"),
        ("sip", {"max_calls": 0}, "sip.max_calls", "(got 0)"),
        ("sip", {"rtp_port_start": 80}, "sip.rtp_port_start", "(got 80)"),
        ("sip", {"rtp_port_range": 4}, "sip.rtp_port_range", "(got 4)"),
        ("sip", {"rtp_port_start": 65000, "rtp_port_range": 600}, "sip.rtp_port_range", "65535"),
        ("sip", {"rtp_timeout_s": 0}, "sip.rtp_timeout_s", "(got 0)"),
        ("sip", {"user_agent": "x\r\ny"}, "sip.user_agent", "control characters"),
        ("vad", {"aggressiveness": 4}, "vad.aggressiveness", "(got 4)"),
        ("vad", {"end_of_turn_ms": 90}, "vad.end_of_turn_ms", "(got 90)"),
        ("vad", {"max_utterance_s": 121}, "vad.max_utterance_s", "(got 121)"),
        ("conversation", {"no_input_timeout_s": 0.5}, "conversation.no_input_timeout_s", "0.5"),
        ("conversation", {"max_call_s": 5}, "conversation.max_call_s", "(got 5)"),
        ("providers", {"piper_length_scale": 3}, "providers.piper_length_scale", "(got 3)"),
        ("records", {"lease_s": 0}, "records.lease_s", "(got 0)"),
        ("records", {"lease_s": 7200}, "records.lease_s", "(got 7200)"),
        ("records", {"gateway_id": "gw\n1"}, "records.gateway_id", "control characters"),
        ("records", {"gateway_id": "g" * 201}, "records.gateway_id", "200"),
    ],
)
def test_invalid_section_values(
    section: str, values: dict[str, Any], field: str, needle: str
) -> None:
    message = config_error(overrides={section: values})
    assert message.startswith(f"{field}: ")
    assert needle in message


def test_records_gateway_id_and_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    records = load_settings().records
    assert (records.gateway_id, records.lease_s) == ("", 30.0)  # serve derives the id
    monkeypatch.setenv("SIPAGENT_RECORDS__GATEWAY_ID", " edge-1:5070 ")
    monkeypatch.setenv("SIPAGENT_RECORDS__LEASE_S", "12.5")
    records = load_settings().records
    assert (records.gateway_id, records.lease_s) == ("edge-1:5070", 12.5)


def test_invalid_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAGENT_LOG_LEVEL", "verbose")
    message = config_error()
    assert message.startswith("log_level: ")
    assert "'VERBOSE'" in message


def test_every_bad_field_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "c.toml", "[sip]\nlisten_port = 70000\n[vad]\npreroll_ms = 15\n")
    monkeypatch.setenv("SIPAGENT_SIP__MAX_CALLS", "5")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    fields = sorted(problem.split(":", 1)[0] for problem in info.value.problems)
    assert fields == ["sip.listen_port", "sip.max_calls", "vad.preroll_ms"]


def test_malformed_json_in_env_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPAGENT_SIP", "{not json")
    assert config_error().startswith("sip: cannot parse value from environment")


def test_settings_class_is_usable_directly() -> None:
    assert Settings(_env_file=None).sip.listen_port == 5060  # type: ignore[call-arg]


# --- parse_listen -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:5070", ("0.0.0.0", 5070)),
        ("127.0.0.1:5060", ("127.0.0.1", 5060)),
        ("pbx.example.com:5080", ("pbx.example.com", 5080)),
        ("[::1]:5070", ("::1", 5070)),
        ("[2001:db8::5]:65535", ("2001:db8::5", 65535)),
        (":5070", ("127.0.0.1", 5070)),
        ("5070", ("127.0.0.1", 5070)),
        (" 5070 ", ("127.0.0.1", 5070)),
    ],
)
def test_parse_listen_ok(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "empty"),
        ("localhost", "missing port"),
        ("host:", "port must be a number"),
        ("host:http", "'http'"),
        ("1.2.3.4:0", "(got 0)"),
        ("1.2.3.4:70000", "(got 70000)"),
        ("::1:5060", "brackets"),
        ("[::1]", "missing ':PORT'"),
        ("[::1:5060", "missing ']'"),
        ("[not-v6]:5060", "'not-v6' is not an IPv6 address"),
        ("bad_host:5060", "'bad_host'"),
    ],
)
def test_parse_listen_errors(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(value)
    assert str(info.value).startswith("--listen: ")
    assert needle in str(info.value)


def test_parse_listen_result_feeds_overrides() -> None:
    host, port = parse_listen("[::1]:5072")
    settings = load_settings(overrides={"sip": {"listen_host": host, "listen_port": port}})
    assert (settings.sip.listen_host, settings.sip.listen_port) == ("::1", 5072)


def test_cloud_provider_needs_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    with pytest.raises(ConfigError) as exc:
        load_settings(None, env_file=None, overrides={"providers": {"tts": "elevenlabs"}})
    assert str(exc.value) == (
        "elevenlabs.api_key: required when a provider is 'elevenlabs' (or set ELEVENLABS_API_KEY)"
    )
    monkeypatch.setenv("ELEVENLABS_API_KEY", "from-env")
    s = load_settings(None, env_file=None, overrides={"providers": {"tts": "elevenlabs"}})
    assert vendor_key(s, "elevenlabs") == "from-env"
    assert "from-env" not in repr(s)


def test_fallback_providers_are_checked_by_name() -> None:
    with pytest.raises(ConfigError, match=r"providers\.tts_fallback: unknown TTS provider"):
        load_settings(None, env_file=None, overrides={"providers": {"tts_fallback": "espeak"}})
    s = load_settings(
        None, env_file=None, overrides={"providers": {"tts_fallback": "Piper", "stt_fallback": ""}}
    )
    assert (s.providers.tts_fallback, s.providers.stt_fallback) == ("piper", None)


def _clear_bot_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OCS_URL", "AI_TTS_URL", "DCS_URL", "DCS_RESPONSE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_external_brain_is_the_ocs_integration_and_needs_ocs_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_bot_env(monkeypatch)
    with pytest.raises(ConfigError, match=r"external\.ocs_url: required .* \(or set OCS_URL\)"):
        load_settings(None, env_file=None, overrides={"providers": {"brain": "external"}})
    monkeypatch.setenv("OCS_URL", "http://127.0.0.1:9/ocs")
    monkeypatch.setenv("AI_TTS_URL", "http://127.0.0.1:9/tts")
    s = load_settings(None, env_file=None, overrides={"providers": {"brain": "external"}})
    assert s.external.url("ocs_url") == "http://127.0.0.1:9/ocs"
    assert s.external.url("ai_tts_url") == "http://127.0.0.1:9/tts"
    assert s.external.greeting == "" and s.external.pending_timeout_s == 10.0
    with pytest.raises(ConfigError, match=r"external\.ocs_url: .*http"):
        load_settings(None, env_file=None, overrides={"external": {"ocs_url": "ftp://x/y"}})


def test_webhook_brain_needs_a_turn_url(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_bot_env(monkeypatch)
    with pytest.raises(ConfigError, match=r"webhook\.turn_url: required"):
        load_settings(None, env_file=None, overrides={"providers": {"brain": "webhook"}})
    s = load_settings(
        None,
        env_file=None,
        overrides={
            "providers": {"brain": "webhook"},
            "webhook": {"turn_url": "http://127.0.0.1:9/turn", "push_token": "t"},
        },
    )
    assert (s.webhook.turn_url, s.webhook.start_url) == ("http://127.0.0.1:9/turn", None)
    assert "'t'" not in repr(s.webhook)


def test_the_old_external_keys_say_what_to_use_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_bot_env(monkeypatch)
    config = write(
        tmp_path / "old.toml",
        """
[providers]
brain = "external"

[external]
dcs_url = "http://bot.example/start"
dcs_response_url = "http://bot.example/turn"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(config, env_file=None)
    message = str(info.value)
    assert message.startswith("external: dcs_url, dcs_response_url: no longer here"), message
    assert "dcs_url -> webhook.start_url" in message
    assert "dcs_response_url -> webhook.turn_url" in message
    assert "providers.brain = 'webhook'" in message and "external.ocs_url" in message
    # The same keys through the environment.
    monkeypatch.setenv("SIPAGENT_EXTERNAL__DCS_RESPONSE_URL", "http://bot.example/turn")
    with pytest.raises(ConfigError, match=r"dcs_response_url -> webhook\.turn_url"):
        load_settings(None, env_file=None)


def test_the_old_dcs_environment_variables_are_an_error_for_the_bot_brains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_bot_env(monkeypatch)
    monkeypatch.setenv("DCS_RESPONSE_URL", "http://bot.example/turn")
    # Other brains never read them.
    load_settings(None, env_file=None)
    webhook = {"providers": {"brain": "webhook"}, "webhook": {"turn_url": "http://b/t"}}
    for overrides in (webhook, {"providers": {"brain": "external"}}):
        monkeypatch.setenv("OCS_URL", "http://127.0.0.1:9/ocs")
        with pytest.raises(ConfigError) as info:
            load_settings(None, env_file=None, overrides=overrides)
        message = str(info.value)
        assert "DCS_RESPONSE_URL (environment): no longer read" in message, message
        assert "webhook.turn_url" in message and "/dcs/response" in message
        assert "DCS_URL (environment)" not in message
    monkeypatch.delenv("DCS_RESPONSE_URL")
    monkeypatch.setenv("AI_TTS_URL", "http://tts.example/")
    with pytest.raises(ConfigError, match=r"AI_TTS_URL \(environment\): .* webhook\.tts_url"):
        load_settings(None, env_file=None, overrides=webhook)
    load_settings(None, env_file=None, overrides={"providers": {"brain": "external"}})
