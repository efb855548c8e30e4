"""What every worker does with a conversation, whatever carries the call (SIP or a Plivo
stream): its options, the failure prompts, the turn records and pushed replies. No pjsua2
here: stream workers import this module and never load the SIP stack."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from gateway.audio.pcm import SAMPLE_RATE
from gateway.pipeline.activity import Activity
from gateway.pipeline.session import CallSession, ConversationOptions, Prompts, TurnRecord
from gateway.pipeline.transport import CallMedia
from gateway.pool.outcomes import PushOutcome, PushStatus
from gateway.providers.base import Brain, ProviderError, TtsProvider
from gateway.providers.registry import uses_vendors
from gateway.records.model import CallTurn, SipCallEnd, SipCallStart
from gateway.records.recording import CallRecorder, recording_path
from gateway.records.redact import redact
from sip_config import Settings

log = logging.getLogger("sipagent")


def conversation_options(s: Settings) -> ConversationOptions:
    """Turn-taking options from settings."""
    return ConversationOptions.from_settings(
        s.vad,
        s.conversation,
        s.transfer,
        reply_deadline_s=s.conversation.max_vendor_silence_s if uses_vendors(s) else None,
    )


async def render_prompts(tts: TtsProvider, settings: Settings) -> Prompts:
    """Render the failure prompts once, at start-up, with the configured TTS chain; a TTS
    that cannot render them leaves a short beep, so a failed turn is never silent."""
    c = settings.conversation

    async def render(text: str) -> bytes:
        async def collect() -> bytes:
            return b"".join([chunk async for chunk in tts.synthesize(text)])

        try:
            pcm = await asyncio.wait_for(collect(), 30.0)
        except Exception as exc:
            log.warning("could not render the prompt %r (%s); a beep stands in", text, exc)
            pcm = b""
        return pcm or _beep()

    return Prompts(
        apology_text=c.apology_text,
        apology=await render(c.apology_text),
        goodbye_text=c.failure_goodbye_text,
        goodbye=await render(c.failure_goodbye_text),
    )


def _beep(ms: int = 300, hz: float = 600.0) -> bytes:
    t = np.arange(SAMPLE_RATE * ms // 1000) / SAMPLE_RATE
    return (np.sin(2 * np.pi * hz * t) * 6000).astype("<i2").tobytes()


def redact_turn(rec: TurnRecord) -> TurnRecord:
    """A copy of ``rec`` with PII in the caller's and the agent's words replaced
    (see :mod:`gateway.records.redact`)."""
    return dataclasses.replace(
        rec, user_text=redact(rec.user_text), agent_text=redact(rec.agent_text)
    )


def log_turn(rec: TurnRecord) -> None:
    log.info("TURN %s", json.dumps(rec.as_dict(), separators=(",", ":")))


class WorkerListener(Protocol):
    """Told about calls and registration on the worker's event loop (pool reporting)."""

    def call_started(self, start: SipCallStart) -> None:
        """A call's conversation starts."""

    def call_ended(self, end: SipCallEnd) -> None:
        """A call ended."""

    def leg_changed(self, sip_call_id: str, up: bool) -> None:
        """A call without a conversation (a warm transfer's call to the human) took a call
        slot (``up``) or freed it."""

    def registration_changed(self, registered: bool, status: str) -> None:
        """Registration state changed."""

    def turn_recorded(self, turn: CallTurn) -> None:
        """An agent turn of a call is over (with its timings)."""

    def activity_changed(self, sip_call_id: str, activity: Activity) -> None:
        """What the agent does on a call changed (`CallSession.activity`)."""


def turn_reporter(
    settings: Settings,
    listener: WorkerListener | None,
    call_id: str,
    record_id: Callable[[], str | None],
) -> Callable[[TurnRecord], None]:
    """The one place a turn's words leave the conversation (log line, and the supervisor
    that stores it): redacted here when configured, before either."""

    def report(rec: TurnRecord) -> None:
        if settings.records.redact_pii:
            rec = redact_turn(rec)
        log_turn(rec)
        if listener is not None:
            listener.turn_recorded(CallTurn(call_id, record_id(), rec.as_dict(), time.time()))

    return report


def activity_reporter(
    listener: WorkerListener | None, call_id: str
) -> Callable[[Activity], None] | None:
    """The session's ``on_activity`` for call ``call_id``: passes each change on to
    ``listener`` (None without one: nothing to tell)."""
    if listener is None:
        return None
    return functools.partial(listener.activity_changed, call_id)


def start_recorder(settings: Settings, call: CallMedia, key: str) -> CallRecorder | None:
    """The call's stereo recorder, started, its file named by ``key`` (a CallUUID) in
    ``records.recording_dir``; None when calls are not recorded or the file cannot be
    opened (logged: the call goes on unrecorded)."""
    directory = settings.records.recording_dir
    if directory is None:
        return None
    recorder = CallRecorder(call, recording_path(directory.resolve(), call, key))
    try:
        recorder.start()
    except OSError as exc:
        log.error("call %s: cannot record to %s: %s", call.call_id, recorder.path, exc)
        return None
    return recorder


def push_reply(
    brain: Brain, conversations: Mapping[str, CallSession], call_id: str, payload: object
) -> PushOutcome:
    """Hand a reply the bot pushed to the brain of call `call_id`."""
    if call_id not in conversations:
        return PushOutcome(PushStatus.NO_CALL, "no call with that id is in progress")
    if not isinstance(payload, dict):
        return PushOutcome(PushStatus.MALFORMED, "the reply is not a JSON object")
    try:
        accepted = brain.deliver(call_id, payload)
    except ProviderError as exc:
        if exc.kind == "malformed":
            return PushOutcome(PushStatus.MALFORMED, str(exc))
        return PushOutcome(PushStatus.REFUSED, str(exc))
    if not accepted:
        return PushOutcome(PushStatus.NO_CALL, "the call is over")
    return PushOutcome(PushStatus.ACCEPTED, "accepted")
