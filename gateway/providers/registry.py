"""Explicit provider registry: config name → factory. Models load here, once per process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.providers.base import Brain, SttProvider, TtsProvider
from sip_config import Settings

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


STT: dict[str, Callable[[Settings], SttProvider]] = {
    "pocketsphinx": _pocketsphinx,
    "fake": _fake_stt,
}
TTS: dict[str, Callable[[Settings], TtsProvider]] = {"piper": _piper, "fake": _fake_tts}
BRAINS: dict[str, Callable[[Settings], Brain]] = {"scripted": _scripted, "fake": _fake_brain}


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


def build_providers(settings: Settings) -> Providers:
    """Create (and load the models of) the configured providers."""
    t0 = time.monotonic()
    p = settings.providers
    providers = Providers(
        stt=STT[p.stt](settings), tts=TTS[p.tts](settings), brain=BRAINS[p.brain](settings)
    )
    log.info(
        "providers ready in %.1f s: stt=%s tts=%s brain=%s",
        time.monotonic() - t0,
        p.stt,
        p.tts,
        p.brain,
    )
    return providers
