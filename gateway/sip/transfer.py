"""Handing a call on, on the SIP side: blind transfer (REFER) and the legs of a warm
transfer (the agent calls the human, then bridges the two calls' audio).

`Transfers` is owned by `gateway.sip.agent.AgentUA`, which delegates `transfer`, `dial`
and `bridge` to it and tells it when a call ends. Those three may be called from any
thread: they post their work to the pj thread and answer with a concurrent Future. Every
other method runs on the pj thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from typing import TYPE_CHECKING

import pjsua2 as pj

from gateway.sip.calls import CallHandle, pj_text
from gateway.sip.endpoint import SipError
from gateway.sip.pjcall import AgentCall

if TYPE_CHECKING:
    from gateway.sip.agent import AgentUA

# The user agent's log lines keep its logger name, wherever they are written.
log = logging.getLogger("gateway.sip.agent")


class Transfers:
    """The REFERs and warm-transfer legs of one user agent's calls."""

    def __init__(self, ua: AgentUA) -> None:
        self.ua = ua

    def transfer(self, call_id: int, uri: str) -> concurrent.futures.Future[tuple[int, str]]:
        """Blind-transfer a call: send REFER to `uri` and resolve the Future with the final
        NOTIFY's (SIP status, reason) from the transferee, e.g. ``(200, "OK")`` when the
        target answered. Status 0 means no NOTIFY decided it: the REFER could not be sent,
        the call is gone or ended first. Does not hang up: the caller decides."""
        fut: concurrent.futures.Future[tuple[int, str]] = concurrent.futures.Future()

        def job() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            call = self.ua.calls.get(call_id)
            if call is None or call.handle is None:
                fut.set_result((0, "the call is over"))
                return
            if call.xfer_result is not None and not call.xfer_result.done():
                fut.set_result((0, "a transfer is already in progress"))
                return
            call.xfer_result = fut
            log.info("call %s: REFER to %s", call.handle.sip_call_id, uri)
            try:
                call.xfer(uri, pj.CallOpParam(True))
            except pj.Error as exc:
                call.xfer_result = None
                fut.set_result((0, f"REFER not sent: {exc.reason.strip()}"))

        self.ua.pj.post(job)
        return fut

    def dial(self, uri: str) -> concurrent.futures.Future[CallHandle]:
        """Place a call from the agent's account (the human's leg of a warm transfer).

        The Future gets the call's `CallHandle` (``bridge_leg=True``) as soon as the INVITE is
        sent, or `SipError` when it cannot be. Its ``answered_at`` is set when it is
        answered, ``ended_at`` and ``end_reason`` (e.g. "486 Busy Here") when it ends; frames
        put in its playout ring are sent once its media is up. The call counts against
        ``max_calls`` and has no conversation; end it with `AgentUA.hangup`."""
        fut: concurrent.futures.Future[CallHandle] = concurrent.futures.Future()
        ua = self.ua

        def job() -> None:
            if not fut.set_running_or_notify_cancel():
                return  # the asker gave up before the pj thread got to it
            if ua.account is None or ua.stopping:
                fut.set_exception(SipError("SIP is not running"))
                return
            if len(ua.calls) >= ua.endpoint.max_calls:
                fut.set_exception(SipError(f"no call slot free (max {ua.endpoint.max_calls})"))
                return
            call = AgentCall(ua, ua.account, pj.PJSUA_INVALID_ID)
            try:
                call.makeCall(uri, pj.CallOpParam(True))
            except pj.Error as exc:
                ua.pj.dispose(call)
                fut.set_exception(SipError(f"cannot call {uri}: {exc.reason.strip()}"))
                return
            info = call.getInfo()
            if not call.isActive():
                ua.pj.dispose(call)
                reason = f"{info.lastStatusCode} {pj_text(info.lastReason)}".strip()
                fut.set_exception(SipError(f"cannot call {uri}: {reason}"))
                return
            handle = CallHandle(
                call_id=int(info.id),
                sip_call_id=pj_text(info.callIdString),
                remote_uri=uri,
                local_uri=pj_text(info.localUri),
                bridge_leg=True,
            )
            call.handle = handle
            ua.calls[handle.call_id] = call
            log.info("outbound call %s to %s", handle.sip_call_id, uri)
            ua.events.leg_changed(handle, True)
            fut.set_result(handle)

        ua.pj.post(job)
        return fut

    def bridge(self, call_a: int, call_b: int, reason: str) -> concurrent.futures.Future[bool]:
        """Connect two calls' audio directly (the agent's media ports leave both); when one
        ends the other is hung up. ``reason`` becomes both calls' end reason. The Future is
        False when either call is gone or has no media."""
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def job() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            a, b = self.ua.calls.get(call_a), self.ua.calls.get(call_b)
            if a is None or b is None or a.audio_index < 0 or b.audio_index < 0:
                fut.set_result(False)
                return
            assert a.handle is not None and b.handle is not None
            a.bridged_to, b.bridged_to = call_b, call_a
            a.handle.end_reason = b.handle.end_reason = reason
            for call in (a, b):
                self.reconnect_bridge(call)
            log.info("bridged call %s with %s", a.handle.sip_call_id, b.handle.sip_call_id)
            fut.set_result(True)

        self.ua.pj.post(job)
        return fut

    def reconnect_bridge(self, call: AgentCall) -> None:
        """Route a bridged call's audio to its partner instead of its media port."""
        calls = self.ua.calls
        other = calls.get(call.bridged_to) if call.bridged_to is not None else None
        if other is None or other.audio_index < 0 or call.audio_index < 0:
            return
        audio = call.getAudioMedia(call.audio_index)
        peer = other.getAudioMedia(other.audio_index)
        if call.port is not None:
            with contextlib.suppress(pj.Error):
                audio.stopTransmit(call.port)
                call.port.stopTransmit(audio)
        audio.startTransmit(peer)

    def call_ended(self, call: AgentCall) -> int | None:
        """A call is over (already out of the user agent's table): settle its REFER, and
        return the call it was bridged to, which must be hung up (never leave half a
        call), if that one is still there."""
        handle = call.handle
        assert handle is not None
        fut, call.xfer_result = call.xfer_result, None
        if fut is not None and not fut.done():
            fut.set_result(
                (0, f"the call ended before the transfer finished ({handle.end_reason})")
            )
        calls = self.ua.calls
        other = calls.get(call.bridged_to) if call.bridged_to is not None else None
        if other is None or other.handle is None:
            return None
        other.bridged_to = None
        return other.handle.call_id
