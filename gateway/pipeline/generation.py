"""A streamed reply while it is generated: the brain's text cut into pieces a TTS can
speak, and, for a reply generated ahead of the turn's end, the first piece's audio
synthesised at once so that it is ready when the turn ends.

`Generation` runs the brain's stream in a task of its own from the moment it is made; the
speaker consumes `texts()` and synthesises each piece with `synthesize`. A reply generated
ahead (`ahead=True`) also starts the TTS of its first piece as soon as that piece is cut
and keeps the audio until the speaker asks for it; nothing reaches the call before then.
`close()` stops the brain and any synthesis (barge-in, or a reply generated ahead that the
caller's next words made wrong).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.pipeline import clock
from gateway.pipeline.playout import close_stream
from gateway.providers.base import ReplyStream, TtsProvider
from gateway.providers.textchunks import SentenceCutter

_Audio = asyncio.Queue[bytes | BaseException | None]


class Generation:
    """One reply being generated; see the module docstring."""

    def __init__(self, stream: ReplyStream, tts: TtsProvider, *, ahead: bool = False) -> None:
        self.stream = stream
        self.tts = tts
        self.ahead = ahead
        self.first_token_at = 0.0  # clock.now() of the first text
        self.first_piece_at = 0.0  # ... of the first piece ready to be spoken
        self.first_audio_at = 0.0  # ... of the first audio synthesised ahead
        self._pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self._first: str | None = None  # the piece synthesised ahead
        self._audio: _Audio | None = None  # its audio, until the speaker takes it
        self._synth: asyncio.Task[None] | None = None
        self.producer = asyncio.ensure_future(self._produce())

    async def _produce(self) -> None:
        cutter = SentenceCutter()
        try:
            async for delta in self.stream:
                if not self.first_token_at and delta:
                    self.first_token_at = clock.now()
                for piece in cutter.push(delta):
                    self._put(piece)
            for piece in cutter.flush():
                self._put(piece)
        finally:
            self._pieces.put_nowait(None)

    def _put(self, piece: str) -> None:
        if not self.first_piece_at:
            self.first_piece_at = clock.now()
            if self.ahead:
                self._first = piece
                self._audio = asyncio.Queue()
                self._synth = asyncio.ensure_future(self._synthesize_ahead(piece, self._audio))
        self._pieces.put_nowait(piece)

    async def _synthesize_ahead(self, piece: str, audio: _Audio) -> None:
        chunks = self.tts.synthesize(piece)
        try:
            async for pcm in chunks:
                if not self.first_audio_at:
                    self.first_audio_at = clock.now()
                audio.put_nowait(pcm)
            audio.put_nowait(None)
        except Exception as exc:  # the speaker meets it when it plays this piece
            audio.put_nowait(exc)
        finally:
            await close_stream(chunks)

    async def texts(self) -> AsyncIterator[str]:
        """The reply's pieces as they are cut; the brain's error, if it failed."""
        while (piece := await self._pieces.get()) is not None:
            yield piece
        if self.producer.done() and not self.producer.cancelled():
            self.producer.result()

    def synthesize(self, piece: str) -> AsyncIterator[bytes]:
        """The audio of `piece`: what was synthesised ahead for the first one (and the
        rest of it as it comes), a new synthesis for the others."""
        audio = self._audio
        if audio is not None and piece is self._first:
            self._audio = None
            return _drain(audio)
        return self.tts.synthesize(piece)

    async def wait(self) -> None:
        """Until the brain is done (its error, if it failed)."""
        await self.producer

    async def close(self) -> None:
        """Stop generating: the brain's stream, and any synthesis started ahead."""
        tasks = [t for t in (self.producer, self._synth) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)  # our own cancellation still propagates
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: the turn reports its own failure
        await self.stream.aclose()


async def _drain(audio: _Audio) -> AsyncIterator[bytes]:
    while (item := await audio.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
