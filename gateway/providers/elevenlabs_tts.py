"""ElevenLabs streaming text-to-speech through the official SDK (`elevenlabs`).

One `POST /v1/text-to-speech/{voice_id}/stream?output_format=pcm_8000` per reply: ElevenLabs
answers with raw 16-bit little-endian mono PCM at 8 kHz, the call side's format, so nothing is
resampled. Audio is yielded as it arrives; closing the iterator (barge-in) closes the HTTP
response, which drops the connection and stops the vendor's stream.

The provider keeps one `AsyncElevenLabs` client (one httpx connection pool) for the process so
consecutive replies reuse the connection; `close()` releases it. Every failure surfaces as a
`ProviderError` whose message never contains the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from elevenlabs import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError
from elevenlabs.core.request_options import RequestOptions

from gateway.providers.base import ProviderError, TtsProvider
from sip_config import Settings, vendor_key

log = logging.getLogger(__name__)

PROVIDER = "elevenlabs"
OUTPUT_FORMAT = "pcm_8000"  # raw s16le mono 8 kHz: the call side's format
DEFAULT_MODEL = "eleven_flash_v2_5"  # Flash models are ElevenLabs' low-latency ones
# The SDK re-chunks the body into pieces of this many bytes (its default is 1024). 640 bytes
# are 40 ms of audio: small enough that the first audio is not held back waiting for more.
_SDK_CHUNK_BYTES = 640
_ERROR_TEXT_MAX = 200


class ElevenLabsTts(TtsProvider):
    """Streaming TTS from ElevenLabs as 8 kHz 16-bit mono PCM.

    `first_byte_timeout_s` bounds the time from sending the request to the first audio;
    `chunk_timeout_s` bounds every later wait for the next piece of audio. Voice settings
    left at ``None`` are not sent (the voice's stored settings apply). `base_url` points
    the client elsewhere than the production API (a loopback fake in tests).
    """

    name = "elevenlabs"

    def __init__(
        self,
        api_key: str,
        voice_id: str,
        model_id: str = DEFAULT_MODEL,
        base_url: str | None = None,
        stability: float | None = None,
        similarity_boost: float | None = None,
        style: float | None = None,
        speed: float | None = None,
        first_byte_timeout_s: float = 2.0,
        chunk_timeout_s: float = 2.0,
        use_speaker_boost: bool | None = None,
    ) -> None:
        if not api_key:
            raise ProviderError(PROVIDER, "config", "api_key is empty")
        if not voice_id:
            raise ProviderError(PROVIDER, "config", "voice_id is empty")
        if not model_id:
            raise ProviderError(PROVIDER, "config", "model_id is empty")
        for field_name, timeout in (
            ("first_byte_timeout_s", first_byte_timeout_s),
            ("chunk_timeout_s", chunk_timeout_s),
        ):
            if not 0.0 < timeout <= 120.0:
                raise ProviderError(
                    PROVIDER, "config", f"{field_name} must be in (0, 120] s, got {timeout}"
                )
        self.voice_id = voice_id
        self.model_id = model_id
        self.first_byte_timeout_s = first_byte_timeout_s
        self.chunk_timeout_s = chunk_timeout_s
        self._api_key = api_key
        # Only the settings given go on the wire: the SDK's `VoiceSettings` model would send
        # the others as explicit nulls, so the body field is set through request options.
        voice_settings = {
            "stability": stability,
            "similarity_boost": similarity_boost,
            "style": style,
            "speed": speed,
            "use_speaker_boost": use_speaker_boost,
        }
        self._voice_settings = {k: v for k, v in voice_settings.items() if v is not None}
        # Our own asyncio timeouts are the real limits; httpx's are a backstop a little
        # longer so that a hung socket can never outlive them.
        backstop = max(first_byte_timeout_s, chunk_timeout_s) + 1.0
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(backstop, connect=first_byte_timeout_s + 1.0)
        )
        self._client = AsyncElevenLabs(api_key=api_key, base_url=base_url, httpx_client=self._http)
        self._request_options: RequestOptions = {"chunk_size": _SDK_CHUNK_BYTES, "max_retries": 0}
        if self._voice_settings:
            self._request_options["additional_body_parameters"] = {
                "voice_settings": self._voice_settings
            }
        self._closed = False

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Stream `text` as PCM chunks of even length; raises `ProviderError` on failure."""
        if self._closed:
            raise ProviderError(PROVIDER, "config", "provider is closed")
        if not text.strip():
            return
        started = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            chunks, first = await self._open(stack, text)
            log.debug(
                "elevenlabs: first audio after %.0f ms (%d chars, model %s)",
                (time.monotonic() - started) * 1000.0,
                len(text),
                self.model_id,
            )
            carry = b""
            chunk = first
            total = 0
            while chunk is not None:
                data = carry + chunk if carry else chunk
                even = len(data) & ~1
                carry = data[even:]
                if even:
                    total += even
                    yield data[:even]
                chunk = await self._next(chunks, self.chunk_timeout_s, "between audio chunks")
            if carry:
                raise ProviderError(
                    PROVIDER, "malformed", f"stream ended with an odd byte count ({total + 1})"
                )
            log.debug(
                "elevenlabs: %d bytes in %.0f ms", total, (time.monotonic() - started) * 1000.0
            )

    async def _open(
        self, stack: contextlib.AsyncExitStack, text: str
    ) -> tuple[AsyncIterator[bytes], bytes | None]:
        """Send the request and wait for the first audio, all within first_byte_timeout_s."""
        deadline = time.monotonic() + self.first_byte_timeout_s
        try:
            async with asyncio.timeout(self.first_byte_timeout_s):
                response = await stack.enter_async_context(
                    self._client.text_to_speech.with_raw_response.stream(
                        self.voice_id,
                        text=text,
                        model_id=self.model_id,
                        output_format=OUTPUT_FORMAT,
                        request_options=self._request_options,
                    )
                )
        except TimeoutError:
            raise ProviderError(
                PROVIDER, "timeout", f"no response within {self.first_byte_timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise self._translate(exc) from None
        content_type = response.headers.get("content-type", "").lower()
        if content_type.startswith(("application/json", "text/")):
            raise ProviderError(
                PROVIDER, "malformed", f"expected audio, got content-type {content_type!r}"
            )
        chunks = response.data
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            stack.push_async_callback(aclose)
        remaining = max(0.001, deadline - time.monotonic())
        first = await self._next(chunks, remaining, "before the first audio")
        return chunks, first

    async def _next(
        self, chunks: AsyncIterator[bytes], timeout_s: float, where: str
    ) -> bytes | None:
        """The next piece of the body, or None at its end."""
        try:
            async with asyncio.timeout(timeout_s):
                return await anext(chunks, None)
        except TimeoutError:
            raise ProviderError(
                PROVIDER, "timeout", f"stream stalled {where} (over {timeout_s:.3g} s)"
            ) from None
        except Exception as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: Exception) -> ProviderError:
        """Map an SDK / httpx exception to a ProviderError (without the API key)."""
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, ApiError):
            status = exc.status_code
            detail = self._redact(_error_detail(exc.body))
            kind = "auth" if status in (401, 403) else "http"
            return ProviderError(PROVIDER, kind, f"HTTP {status}: {detail}", status=status)
        if isinstance(exc, httpx.TimeoutException):
            return ProviderError(PROVIDER, "timeout", f"{type(exc).__name__} from httpx")
        if isinstance(exc, httpx.ConnectError):
            return ProviderError(PROVIDER, "disconnect", "cannot connect to the API")
        if isinstance(exc, httpx.TransportError):
            return ProviderError(
                PROVIDER, "disconnect", f"stream cut before its end ({type(exc).__name__})"
            )
        if isinstance(exc, httpx.HTTPError | ValueError):
            return ProviderError(PROVIDER, "malformed", f"{type(exc).__name__}")
        return ProviderError(PROVIDER, "http", f"unexpected {type(exc).__name__}")

    def _redact(self, message: str) -> str:
        return message.replace(self._api_key, "***")

    async def close(self) -> None:
        """Close the HTTP connection pool; safe to call twice."""
        if not self._closed:
            self._closed = True
            await self._http.aclose()


def _error_detail(body: Any) -> str:
    """The human part of an ElevenLabs error body, e.g. ``{"detail": {"message": ...}}``."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        parts = [str(detail[k]) for k in ("status", "message") if detail.get(k)]
        text = ": ".join(parts) if parts else str(detail)
    else:
        text = str(detail)
    text = " ".join(text.split())
    return text[:_ERROR_TEXT_MAX] if text else "(no body)"


def build(s: Settings) -> ElevenLabsTts:
    """The provider as the settings configure it (the registry's factory for it)."""
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
