"""The registry wires the settings' timeouts into the cloud providers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.providers.elevenlabs_tts import ElevenLabsTts
from gateway.providers.failover import ResilientBrain, ResilientTts
from gateway.providers.ocs_brain import OcsBrain
from gateway.providers.openai_brain import OpenAiBrain
from gateway.providers.registry import (
    PROVIDERS,
    build_providers,
    loads_models,
    missing_keys,
    spec,
    uses_vendors,
)
from gateway.providers.webhook_brain import WebhookBrain
from sip_config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SIPAGENT_* variables or vendor keys, and no stray .env."""
    for name in list(os.environ):
        if name.upper().startswith("SIPAGENT_") or name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def test_a_stall_mid_stream_is_bounded_by_the_stage_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stalled stream after the first audio or words is dead air on the call: the
    # per-stage timeout bounds it, not a fixed 10 s.
    for key, value in {
        "PROVIDERS__STT": "fake",
        "PROVIDERS__TTS": "elevenlabs",
        "PROVIDERS__BRAIN": "openai",
        "PROVIDERS__TTS_TIMEOUT_S": "0.7",
        "PROVIDERS__BRAIN_TIMEOUT_S": "0.9",
        "ELEVENLABS__API_KEY": "xi-test",
        "OPENAI__API_KEY": "sk-test",
    }.items():
        monkeypatch.setenv(f"SIPAGENT_{key}", value)
    providers = build_providers(load_settings(env_file=None))
    try:
        assert isinstance(providers.tts, ResilientTts)
        tts = providers.tts.chain[0]
        assert isinstance(tts, ElevenLabsTts)
        assert (tts.first_byte_timeout_s, tts.chunk_timeout_s) == (0.7, 0.7)
        assert isinstance(providers.brain, ResilientBrain)
        brain = providers.brain.chain[0]
        assert isinstance(brain, OpenAiBrain)
        assert (brain.first_token_timeout_s, brain.stream_timeout_s) == (0.9, 0.9)
    finally:
        asyncio.run(providers.close())


def test_the_bot_brains_are_built_from_their_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    """``external`` is the OCS integration (sipagent as its DCS), ``webhook`` the
    request/response bot; each takes its own section."""
    for name in ("OCS_URL", "AI_TTS_URL", "DCS_URL", "DCS_RESPONSE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OCS_URL", "http://127.0.0.1:9/ocs")
    monkeypatch.setenv("AI_TTS_URL", "http://127.0.0.1:9/tts")
    base = {"providers": {"stt": "fake", "tts": "fake"}}
    ocs = build_providers(
        load_settings(
            env_file=None,
            overrides={
                **base,
                "providers": {**base["providers"], "brain": "external"},
                "external": {"pending_timeout_s": 12, "greeting": "Hi."},
            },
        )
    )
    monkeypatch.delenv("AI_TTS_URL")
    webhook = build_providers(
        load_settings(
            env_file=None,
            overrides={
                "providers": {**base["providers"], "brain": "webhook"},
                "webhook": {"start_url": "http://b/s", "turn_url": "http://b/t"},
            },
        )
    )
    try:
        assert isinstance(ocs.brain, OcsBrain) and ocs.brain.name == "external"
        assert (ocs.brain.ocs_url, ocs.brain.tts_url) == (
            "http://127.0.0.1:9/ocs",
            "http://127.0.0.1:9/tts",
        )
        assert (ocs.brain.pending_timeout_s, ocs.brain.greeting_text) == (12, "Hi.")
        assert isinstance(webhook.brain, WebhookBrain) and webhook.brain.name == "webhook"
        assert (webhook.brain.start_url, webhook.brain.turn_url) == ("http://b/s", "http://b/t")
        assert webhook.brain.reply_url is None  # no push token
    finally:
        asyncio.run(ocs.close())
        asyncio.run(webhook.close())


def test_what_the_gateway_knows_of_each_provider_comes_from_its_registry_entry() -> None:
    """The registry is the one list: names, API keys, failover, deadlines, pool size."""
    for entry in PROVIDERS:
        assert spec(entry.kind, entry.name) is entry
        if entry.api_key:
            # Its settings section holds the key (else <NAME>_API_KEY).
            assert "api_key" in type(getattr(Settings(), entry.name)).model_fields
    offline = load_settings(None, env_file=None)
    assert loads_models(offline) and not uses_vendors(offline)
    cloud = load_settings(
        None,
        env_file=None,
        overrides={
            "providers": {"stt": "deepgram", "tts": "fake", "brain": "fake"},
            "deepgram": {"api_key": "k"},
        },
    )
    assert uses_vendors(cloud) and not loads_models(cloud) and missing_keys(cloud) == []
    with pytest.raises(ConfigError, match=r"openai\.api_key: required .* OPENAI_API_KEY"):
        load_settings(None, env_file=None, overrides={"providers": {"brain_fallback": "openai"}})


def test_every_declared_provider_has_its_factory() -> None:
    """The sections declare each provider's factory as "module:function": each resolves to a
    function of the provider's module, and the names are unique per kind."""
    from gateway.providers.registry import factory

    assert len({(p.kind, p.name) for p in PROVIDERS}) == len(PROVIDERS)
    for provider in PROVIDERS:
        build = factory(provider)
        assert callable(build), provider
        assert build.__module__ == provider.factory.partition(":")[0], provider


def test_the_names_are_listed_shipped_first_then_the_fakes() -> None:
    from gateway.providers.registry import names

    assert names("stt") == ("pocketsphinx", "deepgram", "fake")
    assert names("tts") == ("piper", "elevenlabs", "fake")
    assert names("brain") == ("scripted", "openai", "external", "webhook", "fake")
    assert names("brain", shipped_only=True) == ("scripted", "openai", "external", "webhook")
