"""The provider registry: the one map from a configured name to a factory and to what the
rest of the gateway needs to know about it. Models load here, once per process.

Each provider is declared by the settings section that holds its options (a `ProviderSpec`
in sip_config/providers.py: kind, name, ``"module:function"`` factory, traits), and its
module has the factory. So adding a provider is its module and its settings section; the
settings take their known names, the check for API keys, the failover layer, the silence
deadline and the pool's default size all read the specs through this module.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from gateway.providers.base import Brain, SttProvider, TtsProvider
from sip_config import Settings, vendor_key
from sip_config.providers import Kind, ProviderSpec, provider_specs

log = logging.getLogger(__name__)


PROVIDERS: Final[tuple[ProviderSpec, ...]] = provider_specs()
"""Every provider, as the settings sections declare them."""
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


def factory(provider: ProviderSpec) -> Callable[[Settings], Any]:
    """The function that builds `provider` (its module is imported now)."""
    module, _, function = provider.factory.partition(":")
    build = getattr(importlib.import_module(module), function, None)
    if not callable(build):
        raise LookupError(f"{provider.kind} provider {provider.name!r}: no {provider.factory}")
    return build  # type: ignore[no-any-return]


def _build(kind: Kind, name: str, settings: Settings) -> Any:
    return factory(spec(kind, name))(settings)


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
