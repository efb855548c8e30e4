"""Explicit provider registry: config name → factory. Models load here, once per process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.providers.base import Brain, SttProvider, TtsProvider
from gateway.providers.failover import ResilientBrain, ResilientStt, ResilientTts
from sip_config import Settings, vendor_key

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


STT: dict[str, Callable[[Settings], SttProvider]] = {
    "pocketsphinx": _pocketsphinx,
    "deepgram": _deepgram,
    "fake": _fake_stt,
}
TTS: dict[str, Callable[[Settings], TtsProvider]] = {
    "piper": _piper,
    "elevenlabs": _elevenlabs,
    "fake": _fake_tts,
}
BRAINS: dict[str, Callable[[Settings], Brain]] = {
    "scripted": _scripted,
    "openai": _openai,
    "external": _external,
    "webhook": _webhook,
    "fake": _fake_brain,
}


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
    t0 = time.monotonic()
    p = settings.providers
    stt: SttProvider = STT[p.stt](settings)
    tts: TtsProvider = TTS[p.tts](settings)
    brain: Brain = BRAINS[p.brain](settings)
    if p.stt_fallback or p.stt in _CLOUD:
        chain = [stt] + ([STT[p.stt_fallback](settings)] if p.stt_fallback else [])
        stt = ResilientStt(chain, final_timeout_s=p.stt_timeout_s, retries=p.retries)
    if p.tts_fallback or p.tts in _CLOUD:
        tts_chain = [tts] + ([TTS[p.tts_fallback](settings)] if p.tts_fallback else [])
        tts = ResilientTts(tts_chain, first_audio_timeout_s=p.tts_timeout_s, retries=p.retries)
    if p.brain_fallback or p.brain in _CLOUD:
        chain_b = [brain] + ([BRAINS[p.brain_fallback](settings)] if p.brain_fallback else [])
        brain = ResilientBrain(chain_b, first_token_timeout_s=p.brain_timeout_s, retries=p.retries)
    providers = Providers(stt=stt, tts=tts, brain=brain)
    log.info(
        "providers ready in %.1f s: stt=%s tts=%s brain=%s",
        time.monotonic() - t0,
        stt.name or p.stt,
        tts.name or p.tts,
        brain.name or p.brain,
    )
    return providers


_CLOUD = frozenset({"deepgram", "openai", "elevenlabs"})
