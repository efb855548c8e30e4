"""Per-stage timeouts, one retry and a secondary provider for each kind.

Each wrapper implements the same interface as what it wraps, so the conversation does not
know about failover.  A stage that fails *before* it produced anything (no transcript, no
first token, no first audio) is retried once on the primary, then handed to the secondary
(e.g. offline Piper when ElevenLabs is down).  A stage that fails after it started (a TTS
stream cut halfway, an LLM stream dropped after its first words) is not replayed — the
caller already heard part of it — and the error goes up to the conversation, which plays
its apology.  Every failure is logged with the provider and the kind of error; keys never
appear in messages.

Every failure is also counted for the metrics (`gateway.tally`): a vendor error by provider
and kind, and a failover by stage each time a secondary provider is tried.  Retries on the
primary are not failovers (their errors are counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from gateway.providers.base import (
    Brain,
    BrainReply,
    CallContext,
    KeyInput,
    ProviderError,
    ReplyStream,
    SttProvider,
    SttStream,
    TtsProvider,
)
from gateway.tally import TALLY, count_vendor_error, counted

log = logging.getLogger(__name__)


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "no attempt"
    if isinstance(exc, ProviderError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _failure(name: str, exc: Exception, timeout_s: float, waiting_for: str) -> ProviderError:
    """`exc` as a `ProviderError` that names the provider: the failover layer's own
    timeout becomes kind ``"timeout"``, anything that is not a `ProviderError` (a provider
    bug) kind ``"failed"``."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, TimeoutError):
        return ProviderError(name, "timeout", f"no {waiting_for} within {timeout_s:g} s")
    return ProviderError(name, "failed", f"{type(exc).__name__}: {exc}")


def _count(name: str, exc: BaseException) -> None:
    """Count an error a provider raised after it started (it goes up to the turn)."""
    if isinstance(exc, ProviderError):
        count_vendor_error(exc)
    elif isinstance(exc, Exception):
        TALLY.vendor_error(name, "failed")


def _attempts(chain: Sequence[object], retries: int) -> list[int]:
    """Indexes into ``chain``: the primary 1 + retries times, then each secondary once."""
    return [0] * (1 + retries) + list(range(1, len(chain)))


# -- text to speech --------------------------------------------------------------------------


class ResilientTts(TtsProvider):
    """TTS with a first-audio timeout, a retry and secondaries."""

    def __init__(
        self, chain: Sequence[TtsProvider], *, first_audio_timeout_s: float, retries: int = 1
    ) -> None:
        if not chain:
            raise ValueError("at least one TTS provider")
        self.chain = list(chain)
        self.timeout_s = first_audio_timeout_s
        self.retries = retries
        self.name = "+".join(p.name for p in chain)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Audio of the first provider that starts speaking in time."""
        last: BaseException | None = None
        for i in _attempts(self.chain, self.retries):
            provider = self.chain[i]
            if i:
                TALLY.failover("tts")
            chunks = provider.synthesize(text)
            try:
                first = await asyncio.wait_for(anext(chunks), self.timeout_s)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                await _aclose(chunks)
                raise
            except Exception as exc:
                last = _failure(provider.name, exc, self.timeout_s, "first audio")
                count_vendor_error(last)
                log.warning("TTS %s failed before any audio: %s", provider.name, last)
                await _aclose(chunks)
                continue
            try:
                yield first
                async for chunk in chunks:
                    yield chunk
            except Exception as exc:
                _count(provider.name, exc)
                raise
            finally:
                await _aclose(chunks)
            return
        raise counted(
            ProviderError("tts", "failed", f"every TTS provider failed (last: {_why(last)})")
        )

    async def close(self) -> None:
        """Close every provider of the chain."""
        for provider in self.chain:
            await provider.close()


async def _aclose(gen: object) -> None:
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


# -- speech to text --------------------------------------------------------------------------


class _ResilientSttStream(SttStream):
    """Keeps the utterance's audio so a failed recogniser can be replaced without losing
    the caller's words: the next provider gets everything fed so far."""

    def __init__(self, owner: ResilientStt, expect: str | None = None) -> None:
        self.owner = owner
        self.expect = expect  # passed on to each recogniser tried
        self.audio: list[bytes] = []
        self.index = 0  # position in the attempt list
        self.attempts = _attempts(owner.chain, owner.retries)
        self.stream: SttStream | None = None
        self.failed_feed = False
        self.last: ProviderError | None = None  # the latest failure, for the final error

    async def _open(self) -> None:
        while self.index < len(self.attempts):
            provider = self.owner.chain[self.attempts[self.index]]
            if self.attempts[self.index]:
                TALLY.failover("stt")
            try:
                stream = await asyncio.wait_for(
                    provider.open_stream(self.expect), self.owner.timeout_s
                )
                for pcm in self.audio:
                    await stream.feed(pcm)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last = _failure(provider.name, exc, self.owner.timeout_s, "connection")
                count_vendor_error(self.last)
                log.warning("STT %s failed to start: %s", provider.name, self.last)
                self.index += 1
                continue
            self.stream = stream
            return
        self.stream = None

    async def feed(self, pcm: bytes) -> None:
        """Keep and forward the audio; a failing recogniser is replaced at `finish`."""
        self.audio.append(pcm)
        if self.stream is None:
            if not self.failed_feed and self.index == 0:
                await self._open()  # replays the buffer, this frame included
            return
        try:
            await self.stream.feed(pcm)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            provider = self.owner.chain[self.attempts[self.index]]
            self.last = _failure(provider.name, exc, self.owner.timeout_s, "audio accepted")
            count_vendor_error(self.last)
            log.warning("STT %s failed while listening: %s", provider.name, self.last)
            with contextlib.suppress(Exception):
                await self.stream.cancel()
            self.stream = None
            self.failed_feed = True
            self.index += 1

    async def finish(self) -> str:
        """The transcript of the first recogniser that finishes in time."""
        while True:
            if self.stream is None:
                await self._open()
                if self.stream is None:
                    raise counted(
                        ProviderError(
                            "stt", "failed", f"every STT provider failed (last: {_why(self.last)})"
                        )
                    )
            provider = self.owner.chain[self.attempts[self.index]]
            stream, self.stream = self.stream, None
            try:
                return await asyncio.wait_for(stream.finish(), self.owner.timeout_s)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await stream.cancel()
                raise
            except Exception as exc:
                self.last = _failure(provider.name, exc, self.owner.timeout_s, "final transcript")
                count_vendor_error(self.last)
                log.warning("STT %s failed to finish: %s", provider.name, self.last)
                with contextlib.suppress(Exception):
                    await stream.cancel()
                self.index += 1

    def utterance_end(self) -> float | None:
        """The current recogniser's end of the utterance (see `SttStream.utterance_end`)."""
        return None if self.stream is None else self.stream.utterance_end()

    def heard_words(self) -> bool | None:
        """Whether the current recogniser has reported words (None: cannot tell)."""
        return None if self.stream is None else self.stream.heard_words()

    async def cancel(self) -> None:
        """Drop the utterance."""
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.cancel()


class ResilientStt(SttProvider):
    """STT with a final-transcript timeout, a retry and secondaries."""

    def __init__(
        self, chain: Sequence[SttProvider], *, final_timeout_s: float, retries: int = 1
    ) -> None:
        if not chain:
            raise ValueError("at least one STT provider")
        self.chain = list(chain)
        self.timeout_s = final_timeout_s
        self.retries = retries
        self.name = "+".join(p.name for p in chain)

    async def open_stream(self, expect: str | None = None) -> SttStream:
        """A stream that fails over inside itself."""
        return _ResilientSttStream(self, expect)

    async def close(self) -> None:
        """Close every provider of the chain."""
        for provider in self.chain:
            await provider.close()


# -- brain -----------------------------------------------------------------------------------


class _ResilientReply(ReplyStream):
    def __init__(
        self, owner: ResilientBrain, text: str, ctx: CallContext, *, held: bool = False
    ) -> None:
        self.owner = owner
        self.text = text
        self.ctx = ctx
        self.current: ReplyStream | None = None
        self.held = held  # generated ahead, not kept yet (`Brain.prepare_stream`)

    def _open(self, brain: Brain) -> ReplyStream:
        if self.held:
            stream = brain.prepare_stream(self.text, self.ctx)
            if stream is not None:
                return stream
        return brain.respond_stream(self.text, self.ctx)

    def keep(self) -> None:
        self.held = False
        if self.current is not None:
            self.current.keep()

    async def _pieces(self) -> AsyncIterator[str]:
        last: BaseException | None = None
        for i in _attempts(self.owner.chain, self.owner.retries):
            brain = self.owner.chain[i]
            if i:
                TALLY.failover("brain")
            stream = self._open(brain)
            self.current = stream
            pieces = aiter(stream)
            try:
                first = await asyncio.wait_for(anext(pieces), self.owner.timeout_s)
            except StopAsyncIteration:
                self.reply = stream.reply
                return
            except asyncio.CancelledError:
                await stream.aclose()
                raise
            except Exception as exc:
                last = _failure(brain.name, exc, self.owner.timeout_s, "first words")
                count_vendor_error(last)
                log.warning("brain %s failed before its first words: %s", brain.name, last)
                await stream.aclose()
                continue
            try:
                yield first
                async for piece in pieces:
                    yield piece
            except Exception as exc:
                _count(brain.name, exc)
                raise
            self.reply = stream.reply
            return
        raise counted(ProviderError("brain", "failed", f"every brain failed (last: {_why(last)})"))

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def aclose(self) -> None:
        if self.current is not None:
            await self.current.aclose()


def _generates_ahead(brain: Brain) -> bool:
    if isinstance(brain, ResilientBrain):
        return all(_generates_ahead(b) for b in brain.chain)
    return type(brain).prepare_stream is not Brain.prepare_stream


class ResilientBrain(Brain):
    """Brain with a first-words timeout, a retry and secondaries."""

    def __init__(
        self, chain: Sequence[Brain], *, first_token_timeout_s: float, retries: int = 1
    ) -> None:
        if not chain:
            raise ValueError("at least one brain")
        self.chain = list(chain)
        self.timeout_s = first_token_timeout_s
        self.retries = retries
        self.name = "+".join(b.name for b in chain)
        self.streams = chain[0].streams
        self.pushes = chain[0].pushes

    async def greeting(self, ctx: CallContext) -> BrainReply:
        """The primary's greeting (greetings are local in every brain)."""
        return await self.chain[0].greeting(ctx)

    async def no_input(self, ctx: CallContext, attempt: int) -> BrainReply:
        """The primary's re-prompt."""
        return await self.chain[0].no_input(ctx, attempt)

    def respond_stream(self, text: str, ctx: CallContext) -> ReplyStream:
        """Stream of the first brain that starts answering in time."""
        return _ResilientReply(self, text, ctx)

    def prepare_stream(self, text: str, ctx: CallContext) -> ReplyStream | None:
        """`respond_stream` ahead of the turn's end, when every brain of the chain can
        generate ahead (one that cannot would remember a turn that may be dropped)."""
        if not all(_generates_ahead(brain) for brain in self.chain):
            return None
        return _ResilientReply(self, text, ctx, held=True)

    async def respond_keys(self, keys: KeyInput, ctx: CallContext) -> BrainReply:
        """A local primary's own answer to keys (a scripted menu); a streaming primary is
        told in words through the failover stream."""
        if self.streams:
            return await super().respond_keys(keys, ctx)
        return await self.chain[0].respond_keys(keys, ctx)

    def deliver(self, call_id: str, payload: Mapping[str, Any]) -> bool:
        """Pushed replies belong to the primary (the brain the bot talks to)."""
        return self.chain[0].deliver(call_id, payload)

    async def wait_pushed(self, call_id: str, timeout_s: float | None = None) -> BrainReply | None:
        """The primary's next pushed reply."""
        return await self.chain[0].wait_pushed(call_id, timeout_s)

    def observe(self, ctx: CallContext, note: str) -> None:
        """Every brain of the chain may answer the call's next turn: each gets the note."""
        for brain in self.chain:
            brain.observe(ctx, note)

    def forget(self, call_id: str) -> None:
        """Forget the call in every brain of the chain."""
        for brain in self.chain:
            brain.forget(call_id)

    async def close(self) -> None:
        """Close every brain of the chain."""
        for brain in self.chain:
            await brain.close()

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        """Collected `respond_stream`."""
        stream = self.respond_stream(text, ctx)
        parts = [piece async for piece in stream]
        return stream.reply or BrainReply("".join(parts))
