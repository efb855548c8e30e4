"""Offline speech-to-text: pocketsphinx with its bundled en-US model.

Decoders are created once per process (one per concurrent call, plus a spare) and lent to
one utterance at a time. Audio is decoded while the caller speaks, so at the end of the
turn only the last few frames and the final search remain.

pocketsphinx holds the GIL while it decodes (measured: a 3 s buffer blocks other Python
threads for ~0.5 s), and so would stall the media clock thread. It is therefore fed in
small chunks (`CHUNK_MS`), which keeps each hold to a few milliseconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
from typing import Any

from gateway.audio.pcm import SAMPLE_RATE, Resampler
from gateway.providers.base import SttProvider, SttStream

log = logging.getLogger(__name__)

MODEL_RATE = 16000
CHUNK_MS = 60
_CHUNK_BYTES = SAMPLE_RATE * 2 * CHUNK_MS // 1000


def _new_decoder() -> Any:
    from pocketsphinx import Decoder

    return Decoder(samprate=MODEL_RATE, loglevel="FATAL")


class PocketsphinxStream(SttStream):
    """One utterance on a borrowed decoder."""

    def __init__(self, provider: PocketsphinxStt, decoder: Any) -> None:
        self._provider = provider
        self._decoder: Any | None = decoder
        self._resampler = Resampler(SAMPLE_RATE, MODEL_RATE)
        self._buf = bytearray()
        self._inflight: asyncio.Future[None] | None = None
        self._finishing: asyncio.Future[str] | None = None
        decoder.start_utt()

    def _decode(self, pcm16k: bytes) -> None:
        assert self._decoder is not None
        if pcm16k:
            self._decoder.process_raw(pcm16k, False, False)

    async def _run(self, pcm8k: bytes, last: bool = False) -> None:
        loop = asyncio.get_running_loop()
        data = self._resampler.process(pcm8k, last=last)
        await loop.run_in_executor(self._provider.executor, self._decode, data)

    async def feed(self, pcm: bytes) -> None:
        """Queue audio; decoding runs in the background, one chunk at a time."""
        if self._decoder is None or self._finishing is not None:
            return
        self._buf += pcm
        if len(self._buf) >= _CHUNK_BYTES and (self._inflight is None or self._inflight.done()):
            if self._inflight is not None:
                self._inflight.result()
            chunk = bytes(self._buf)
            self._buf.clear()
            self._inflight = asyncio.ensure_future(self._run(chunk))

    async def finish(self) -> str:
        """Decode what is left and return the hypothesis.

        The work runs as its own task: cancelling the caller does not interrupt a decode
        in progress, and the decoder goes back to the pool only once it is idle.
        """
        if self._decoder is None:
            return ""
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish())
        return await asyncio.shield(self._finishing)

    async def _finish(self) -> str:
        try:
            if self._inflight is not None:
                await self._inflight
            rest = bytes(self._buf)
            self._buf.clear()
            # Feed the remainder in small pieces for the same GIL reason as above.
            for i in range(0, max(len(rest), 1), _CHUNK_BYTES):
                piece = rest[i : i + _CHUNK_BYTES]
                await self._run(piece, last=i + _CHUNK_BYTES >= len(rest))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._provider.executor, self._end)
        finally:
            self._release()

    def _end(self) -> str:
        assert self._decoder is not None
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return str(hyp.hypstr).strip() if hyp is not None else ""

    async def cancel(self) -> None:
        """Drop the utterance; the decoder goes back to the pool after any decode finishes."""
        if self._finishing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._finishing)
            return
        if self._decoder is None:
            return
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(inflight)
        decoder = self._decoder
        try:
            decoder.end_utt()
        except Exception:
            log.debug("end_utt on cancel failed", exc_info=True)
        self._release()

    def _release(self) -> None:
        if self._decoder is not None:
            self._provider.give_back(self._decoder)
            self._decoder = None


class PocketsphinxStt(SttProvider):
    """Pool of pocketsphinx decoders shared by the calls of one process."""

    name = "pocketsphinx"

    def __init__(self, decoders: int = 2) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="sphinx"
        )
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(decoders):
            self._pool.put(_new_decoder())

    def give_back(self, decoder: Any) -> None:
        """Return a decoder to the pool."""
        self._pool.put(decoder)

    async def open_stream(self) -> PocketsphinxStream:
        """Borrow a decoder (creating one more if all are busy) and start an utterance."""
        try:
            decoder = self._pool.get_nowait()
        except queue.Empty:
            log.warning("all pocketsphinx decoders busy; loading another")
            decoder = await asyncio.get_running_loop().run_in_executor(self.executor, _new_decoder)
        return PocketsphinxStream(self, decoder)

    def transcribe_blocking(self, pcm8k: bytes) -> str:
        """Transcribe a whole 8 kHz utterance at once (tools and tests)."""
        decoder = self._pool.get()
        try:
            data = Resampler(SAMPLE_RATE, MODEL_RATE).process(pcm8k, last=True)
            decoder.start_utt()
            decoder.process_raw(data, False, True)
            decoder.end_utt()
            hyp = decoder.hyp()
            return str(hyp.hypstr).strip() if hyp is not None else ""
        finally:
            self._pool.put(decoder)

    async def close(self) -> None:
        """Stop the decoding threads."""
        self.executor.shutdown(wait=False, cancel_futures=True)
