"""The OCS brain: sipagent is the DCS (Dialer Connector Service) of an Ori-style OCS.

In that integration OCS holds the conversation and DCS the telephony: OCS starts calls
through its ``DCS_URL`` and delivers what to say (``text``, with an ``audio_url`` made by
its ``AI_TTS_URL``) to its ``DCS_RESPONSE_URL``.  sipagent plays DCS: the app's
``POST /dcs/calls`` is OCS's ``DCS_URL`` and ``POST /dcs/response`` its
``DCS_RESPONSE_URL`` (see `xml_app.app`); this brain (``providers.brain = "external"``)
sends the caller's side of each call to ``external.ocs_url`` (``OCS_URL``).

Events - ``POST ocs_url``, JSON, with the configured ``headers``:

* Call start (inbound, or answered outbound)::

      {"event": "start", "call_id": "<id>", "call_uuid": "<Plivo CallUUID or ''>",
       "sip_call_id": "<SIP Call-ID>", "from": "+14155550100", "to": "+442071234567",
       "headers": {"X-PH-Customer": "gold"}}

* Each caller turn::

      {"event": "message", "call_id": "<id>", "call_uuid": "...", "sip_call_id": "...",
       "text": "<transcript, maybe empty>", "turn": 1}

* Hang-up (best effort, nothing is waited for)::

      {"event": "end", "call_id": "<id>", "call_uuid": "...", "sip_call_id": "..."}

``call_id`` is the id OCS addresses the call by in ``/dcs/response``: for a call started
through ``/dcs/calls`` (or ``/calls``) the ``call_id`` that request answered, else Plivo's
CallUUID, else the SIP Call-ID.

OCS acknowledges with any 2xx and delivers its reply later to ``/dcs/response``, so every
turn is pending (`BrainReply.pending_s` = ``pending_timeout_s``; the caller hears the
apology when nothing comes in time).  An acknowledgement whose body is a JSON object with
a non-empty ``text``, ``audio_url`` or ``actions`` is taken as the reply itself (the reply
contract of `gateway.providers.webhook_brain`; ``"pending": true`` makes it a holding
line).  At call start the configured ``greeting`` (empty by default: nothing) is spoken
while OCS's welcome is awaited.  Errors are like the webhook brain's, named ``external``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gateway.providers.base import BrainReply, CallContext, ProviderError
from gateway.providers.webhook_brain import BotBrain, BotReply, parse_reply, plivo_headers
from sip_config import Settings

__all__ = ["OcsBrain", "ocs_call_id"]

log = logging.getLogger(__name__)


def ocs_call_id(ctx: CallContext) -> str:
    """The id OCS knows the call by (and pushes replies for)."""
    return ctx.record_id or ctx.call_uuid or ctx.call_id


class OcsBrain(BotBrain):
    """``providers.brain = "external"``: relays the call to an OCS; see the module
    docstring."""

    name = "external"

    def __init__(
        self,
        *,
        ocs_url: str,
        tts_url: str | None = None,
        greeting: str = "",
        **options: Any,
    ) -> None:
        """Configure the brain; nothing connects until the first event.  `options` are
        `BotBrain`'s.

        Raises ``ProviderError(kind="config")`` for unusable settings.
        """
        if not ocs_url:
            raise ProviderError(self.name, "config", "no ocs_url")
        super().__init__(urls={"ocs_url": ocs_url}, tts_url=tts_url, **options)
        self.ocs_url = ocs_url
        self.greeting_text = greeting
        self._ids: dict[str, dict[str, str]] = {}
        self._ending: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"OcsBrain(ocs_url={self.ocs_url!r})"

    def _ids_of(self, ctx: CallContext) -> dict[str, str]:
        ids = {"call_id": ocs_call_id(ctx), "call_uuid": ctx.call_uuid, "sip_call_id": ctx.call_id}
        self._ids[ctx.call_id] = ids
        return ids

    async def _event(self, body: Mapping[str, Any], what: str) -> BotReply | None:
        """POST an event; the reply its acknowledgement carries, or None (pending)."""
        raw = await self._post(self.ocs_url, body, what)
        try:
            payload = json.loads(raw) if raw.strip() else None
        except ValueError:
            return None  # "OK", or any other acknowledgement that is not JSON
        if not isinstance(payload, dict) or not any(
            payload.get(key) for key in ("text", "audio_url", "actions", "end_call")
        ):
            return None
        return parse_reply(payload)

    async def greeting(self, ctx: CallContext) -> BrainReply:
        """Tell OCS the call started; its welcome comes with the acknowledgement or later."""
        self._call(ctx.call_id)
        body = {
            "event": "start",
            **self._ids_of(ctx),
            "from": ctx.from_number or ctx.from_uri,
            "to": ctx.to_number or ctx.to_uri,
            "headers": plivo_headers(ctx),
        }
        bot = await self._event(body, "OCS call start")
        if bot is None:
            return BrainReply(
                text=self.greeting_text, intent="greeting", pending_s=self.pending_timeout_s
            )
        reply = await self._reply_of(bot)
        return reply if reply.intent is not None else replace(reply, intent="greeting")

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        """Send the caller's words to OCS; its answer comes with the acknowledgement or
        later, to ``/dcs/response``."""
        state = self._call(ctx.call_id)
        state.turns += 1
        body = {"event": "message", **self._ids_of(ctx), "text": text, "turn": state.turns}
        bot = await self._event(body, "OCS message")
        if bot is None:
            return BrainReply("", pending_s=self.pending_timeout_s)
        return await self._reply_of(bot)

    def forget(self, call_id: str) -> None:
        """The call is over: tell OCS (in the background) and drop the call's queues."""
        ids = self._ids.pop(call_id, None)
        state = self._calls.get(call_id)
        super().forget(call_id)
        if ids is None or state is None or state.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not state.loop:
            return  # only from the call's own loop (the conversation ending)
        task = running.create_task(self._end(ids))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end(self, ids: Mapping[str, str]) -> None:
        try:
            await self._post(self.ocs_url, {"event": "end", **ids}, "OCS call end")
        except ProviderError as exc:
            log.info("call %s: OCS was not told of the hang-up: %s", ids["sip_call_id"], exc)

    async def close(self) -> None:
        """Let the hang-up events in flight finish (each is bounded by `timeout_s`), then
        close the HTTP client."""
        if self._ending:
            with contextlib.suppress(Exception):
                await asyncio.wait(set(self._ending), timeout=self.timeout_s + 1)
        await super().close()


def build(s: Settings) -> OcsBrain:
    """The provider as the settings configure it (the registry's factory for it)."""
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
