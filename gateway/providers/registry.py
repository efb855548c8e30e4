"""The provider registry: the one map from a configured name to a factory and to what the
rest of the gateway needs to know about it. Models load here, once per process.

Adding a provider is its module, its settings section (for its options), and one
`ProviderSpec` in `PROVIDERS`: the settings take their known names, the check for API
keys, the failover layer, the silence deadline and the pool's default size all read it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.providers.base import Brain, SttProvider, TtsProvider
from sip_config import Settings, vendor_key

Kind = Literal["stt", "tts", "brain"]

log = logging.getLogger(__name__)


def _pocketsphinx(s: Settings) -> SttProvider:
    from gateway.providers.pocketsphinx_stt import PocketsphinxStt

    # One decoder per call this process can hold: a call's pieces reach the decoding process
    # in order (an early final's "end" before the next piece's "start"), so a call never
    # needs two at once. Each decoder costs ~100 MB of RSS in that process.
    return PocketsphinxStt(decoders=s.sip.max_calls)


def _piper(s: Settings) -> TtsProvider:
    from gateway.providers.piper_tts import PiperTts

    return PiperTts(length_scale=s.providers.piper_length_scale)


def _scripted(s: Settings) -> Brain:
    from gateway.providers.scripted import ScriptedBrain, load_playbook

    assert s.playbook is not None
    return ScriptedBrain(load_playbook(s.playbook))


def _fake_stt(s: Settings) -> SttProvider:
    from gateway.providers.fake import FakeStt

    return FakeStt(final_delay_s=s.providers.fake_stt_final_ms / 1000.0)


def _fake_tts(s: Settings) -> TtsProvider:
    from gateway.providers.fake import FakeTts

    p = s.providers
    return FakeTts(first_byte_delay_s=p.fake_tts_first_byte_ms / 1000.0, speed=p.fake_tts_speed)


def _fake_brain(s: Settings) -> Brain:
    from gateway.providers.fake import FakeBrain

    return FakeBrain(first_token_delay_s=s.providers.fake_llm_first_token_ms / 1000.0)


def _deepgram(s: Settings) -> SttProvider:
    from gateway.providers.deepgram_stt import DeepgramStt

    d = s.deepgram
    return DeepgramStt(
        api_key=vendor_key(s, "deepgram"),
        base_url=d.base_url,
        model=d.model,
        language=d.language,
        endpointing_ms=d.endpointing_ms,
        utterance_end_ms=d.utterance_end_ms,
        final_timeout_s=s.providers.stt_timeout_s,
        warm_sockets=s.sip.max_calls,
    )


def _elevenlabs(s: Settings) -> TtsProvider:
    from gateway.providers.elevenlabs_tts import ElevenLabsTts

    e = s.elevenlabs
    return ElevenLabsTts(
        api_key=vendor_key(s, "elevenlabs"),
        voice_id=e.voice_id,
        model_id=e.model_id,
        base_url=e.base_url,
        stability=e.stability,
        similarity_boost=e.similarity_boost,
        style=e.style,
        speed=e.speed,
        first_byte_timeout_s=s.providers.tts_timeout_s,
        # A stream that stops mid-reply is dead air on the call: give up as soon as on a
        # first audio that does not come (the apology follows).
        chunk_timeout_s=s.providers.tts_timeout_s,
    )


def _openai(s: Settings) -> Brain:
    from gateway.providers.openai_brain import HttpTool, OpenAiBrain

    o = s.openai
    return OpenAiBrain(
        api_key=vendor_key(s, "openai"),
        system_prompt=o.system_prompt,
        greeting=o.greeting,
        model=o.model,
        base_url=o.base_url,
        temperature=o.temperature,
        first_token_timeout_s=s.providers.brain_timeout_s,
        # Likewise a stream that stalls after its first words (was a fixed 10 s).
        stream_timeout_s=s.providers.brain_timeout_s,
        transfer_target=o.transfer_target or s.transfer.target,
        transfer_line=o.transfer_line,
        http_tools=[
            HttpTool(t.name, t.description, dict(t.parameters), t.url, t.timeout_s) for t in o.tools
        ],
    )


def _external(s: Settings) -> Brain:
    from gateway.providers.ocs_brain import OcsBrain

    e = s.external
    ocs_url = e.url("ocs_url")
    assert ocs_url is not None  # checked when the settings were loaded
    return OcsBrain(
        ocs_url=ocs_url,
        tts_url=e.url("ai_tts_url"),
        greeting=e.greeting,
        headers=dict(e.headers),
        timeout_s=e.timeout_s,
        pending_timeout_s=e.pending_timeout_s,
    )


def _webhook(s: Settings) -> Brain:
    from gateway.providers.webhook_brain import WebhookBrain

    w = s.webhook
    assert w.turn_url is not None  # checked when the settings were loaded
    return WebhookBrain(
        start_url=w.start_url,
        turn_url=w.turn_url,
        tts_url=w.tts_url,
        greeting=w.greeting,
        headers=dict(w.headers),
        timeout_s=w.timeout_s,
        pending_timeout_s=w.pending_timeout_s,
        reply_url=w.reply_url if w.push_token else None,
    )


@dataclass(frozen=True)
class ProviderSpec:
    """One provider the settings may name."""

    kind: Kind
    name: str
    build: Callable[[Settings], Any]
    # A vendor over the network: wrapped in the failover layer, and a reply it owes has a
    # deadline (conversation.max_vendor_silence_s).
    cloud: bool = False
    # Needs an API key: ``<name>.api_key`` in the settings, or ``<NAME>_API_KEY``.
    api_key: bool = False
    # Loads speech models in every worker process (about a core per 4 busy calls).
    local_models: bool = False
    # False: for tests and benchmarks only ("fake"); not listed as shipped.
    shipped: bool = True


PROVIDERS: Final[tuple[ProviderSpec, ...]] = (
    ProviderSpec("stt", "pocketsphinx", _pocketsphinx, local_models=True),
    ProviderSpec("stt", "deepgram", _deepgram, cloud=True, api_key=True),
    ProviderSpec("stt", "fake", _fake_stt, shipped=False),
    ProviderSpec("tts", "piper", _piper, local_models=True),
    ProviderSpec("tts", "elevenlabs", _elevenlabs, cloud=True, api_key=True),
    ProviderSpec("tts", "fake", _fake_tts, shipped=False),
    ProviderSpec("brain", "scripted", _scripted),
    ProviderSpec("brain", "openai", _openai, cloud=True, api_key=True),
    ProviderSpec("brain", "external", _external),
    ProviderSpec("brain", "webhook", _webhook),
    ProviderSpec("brain", "fake", _fake_brain, shipped=False),
)
_BY_NAME: Final = {(p.kind, p.name): p for p in PROVIDERS}


def names(kind: Kind, *, shipped_only: bool = False) -> tuple[str, ...]:
    """The names of the `kind` providers, in registry order."""
    return tuple(p.name for p in PROVIDERS if p.kind == kind and (p.shipped or not shipped_only))


def spec(kind: Kind, name: str) -> ProviderSpec:
    """The provider `name` of `kind`; KeyError when there is none."""
    return _BY_NAME[(kind, name)]


def _configured(settings: Settings) -> list[ProviderSpec]:
    """The providers the settings use: primaries, then fallbacks."""
    p = settings.providers
    chosen: list[tuple[Kind, str | None]] = [
        ("stt", p.stt),
        ("tts", p.tts),
        ("brain", p.brain),
        ("stt", p.stt_fallback),
        ("tts", p.tts_fallback),
        ("brain", p.brain_fallback),
    ]
    return [spec(kind, name) for kind, name in chosen if name]


def uses_vendors(settings: Settings) -> bool:
    """True when a cloud provider (or a failover chain) is in use."""
    p = settings.providers
    primaries = (spec("stt", p.stt), spec("tts", p.tts), spec("brain", p.brain))
    return any(s.cloud for s in primaries) or any(
        (p.stt_fallback, p.tts_fallback, p.brain_fallback)
    )


def loads_models(settings: Settings) -> bool:
    """True when a primary STT or TTS runs its models in the worker processes."""
    p = settings.providers
    return spec("stt", p.stt).local_models or spec("tts", p.tts).local_models


def missing_keys(settings: Settings) -> list[str]:
    """One problem per provider in use whose API key is set nowhere."""
    seen: set[str] = set()
    missing: list[str] = []
    for s in _configured(settings):
        if s.api_key and s.name not in seen and not vendor_key(settings, s.name):
            seen.add(s.name)
            env = f"{s.name.upper()}_API_KEY"
            missing.append(
                f"{s.name}.api_key: required when a provider is '{s.name}' (or set {env})"
            )
    return missing


def _build(kind: Kind, name: str, settings: Settings) -> Any:
    return spec(kind, name).build(settings)


@dataclass
class Providers:
    """The providers one worker process uses for all its calls."""

    stt: SttProvider
    tts: TtsProvider
    brain: Brain

    async def close(self) -> None:
        """Release process-wide resources."""
        await self.stt.close()
        await self.tts.close()
        await self.brain.close()


def build_providers(settings: Settings) -> Providers:
    """Create (and load the models of) the configured providers.

    A kind with a fallback (``providers.*_fallback``) or a cloud primary is wrapped in its
    failover layer (timeouts, ``providers.retries`` retries, then the fallback); the
    offline providers alone are used as they are.
    """
    from gateway.providers.failover import ResilientBrain, ResilientStt, ResilientTts

    t0 = time.monotonic()
    p = settings.providers
    stt: SttProvider = _build("stt", p.stt, settings)
    tts: TtsProvider = _build("tts", p.tts, settings)
    brain: Brain = _build("brain", p.brain, settings)
    if p.stt_fallback or spec("stt", p.stt).cloud:
        chain = [stt] + ([_build("stt", p.stt_fallback, settings)] if p.stt_fallback else [])
        stt = ResilientStt(chain, final_timeout_s=p.stt_timeout_s, retries=p.retries)
    if p.tts_fallback or spec("tts", p.tts).cloud:
        tts_chain = [tts] + ([_build("tts", p.tts_fallback, settings)] if p.tts_fallback else [])
        tts = ResilientTts(tts_chain, first_audio_timeout_s=p.tts_timeout_s, retries=p.retries)
    if p.brain_fallback or spec("brain", p.brain).cloud:
        fallback = [_build("brain", p.brain_fallback, settings)] if p.brain_fallback else []
        brain = ResilientBrain(
            [brain, *fallback], first_token_timeout_s=p.brain_timeout_s, retries=p.retries
        )
    providers = Providers(stt=stt, tts=tts, brain=brain)
    log.info(
        "providers ready in %.1f s: stt=%s tts=%s brain=%s",
        time.monotonic() - t0,
        stt.name or p.stt,
        tts.name or p.tts,
        brain.name or p.brain,
    )
    return providers
