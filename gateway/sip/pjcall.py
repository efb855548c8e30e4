"""`AgentCall`, the agent's pjsua2 ``Call``: what pjsua2 tells it about one call (state,
media, SDP, keys, transfer progress) and what it does to that one call (send keys, watch
its RTP and its duration).

Everything here runs on the pj thread: pjsua2 calls the callbacks there, and the user
agent (`CallOwner`, i.e. `gateway.sip.agent.AgentUA`) calls the rest from there. The
conversation sees the call only through its `CallHandle`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any, Protocol

import pjsua2 as pj

from gateway.sip.calls import CallHandle, outbound_outcome, pj_text
from gateway.sip.endpoint import BridgePortPool, MediaBridgePort

# The user agent's log lines keep its logger name, wherever they are written.
log = logging.getLogger("gateway.sip.agent")

_KEYS = frozenset("0123456789*#ABCD")


def sdp_without_signature(sdp: str) -> str:
    """An SDP of ours without what names the SIP stack: ``s=pjmedia`` becomes ``s=-`` and
    pjsua's ``a=X-nat`` line goes."""
    lines = sdp.split("\r\n")
    out = [
        "s=-" if line == "s=pjmedia" else line for line in lines if not line.startswith("a=X-nat:")
    ]
    return "\r\n".join(out)


def dtmf_method_name(method: int) -> str:
    """ "rfc4733" or "info" for a pjsua DTMF method number."""
    return "info" if method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"


class CallOwner(Protocol):
    """The user agent that holds an `AgentCall` (pj thread)."""

    @property
    def ports(self) -> BridgePortPool:
        """Where the call's media bridge port comes from."""

    def start_conversation(self, handle: CallHandle) -> None:
        """Media is up (and a call we placed is answered): the conversation may start."""

    def reconnect_bridge(self, call: AgentCall) -> None:
        """A bridged call's media was renegotiated: route its audio to its partner again."""

    def call_disconnected(self, call: AgentCall) -> None:
        """The call is over: release it (its `handle` is still set)."""


class AgentCall(pj.Call):  # type: ignore[misc]
    """One call of the agent's account, answered or placed; ``handle`` is None until the
    user agent takes it and again once it is over."""

    def __init__(self, owner: CallOwner, acc: Any, call_id: int) -> None:
        super().__init__(acc, call_id)
        self.owner = owner
        self.handle: CallHandle | None = None
        self.port: MediaBridgePort | None = None
        self.started = False
        self.rx_packets = -1
        self.rx_seen_at = time.monotonic()
        self.audio_index = -1
        # The REFER in progress: resolved with the final NOTIFY's (status, reason).
        self.xfer_result: concurrent.futures.Future[tuple[int, str]] | None = None
        # The call whose audio this one is bridged to (warm transfer).
        self.bridged_to: int | None = None

    def onCallTransferStatus(self, prm: Any) -> None:
        # NOTIFY sipfrag progress of our REFER (the REFER's own 202 comes as a non-final
        # 202 too): only the final one decides.
        code = int(prm.statusCode)
        reason = pj_text(prm.reason).strip()
        sip_call_id = self.handle.sip_call_id if self.handle is not None else "?"
        log.info(
            "call %s: transfer status %d %s%s",
            sip_call_id,
            code,
            reason,
            " (final)" if prm.finalNotify else "",
        )
        if not prm.finalNotify:
            return
        fut, self.xfer_result = self.xfer_result, None
        if fut is not None and not fut.done():
            fut.set_result((code, reason))

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if self.handle is None:
            return
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.handle.answered_at:
            self.handle.mark_answered(time.monotonic())
            self._maybe_start()
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            if not self.handle.end_reason:
                reason = pj_text(info.lastReason)
                self.handle.end_reason = f"{info.lastStatusCode} {reason}".strip()
            if self.handle.outbound and not self.handle.outcome:
                self.handle.outcome = outbound_outcome(
                    bool(self.handle.answered_at), int(info.lastStatusCode)
                )
            self.owner.call_disconnected(self)

    def onCallSdpCreated(self, prm: Any) -> None:
        # pjmedia names itself in the session name and adds a=X-nat, which only pjsua
        # sends: a scanner that reads the SDP learns nothing from "s=-" and no X-nat.
        sdp = str(prm.sdp.wholeSdp)
        neutral = sdp_without_signature(sdp)
        if neutral != sdp:
            prm.sdp.wholeSdp = neutral

    def onDtmfDigit(self, prm: Any) -> None:
        # RFC 4733 telephone-events (once per key, at its start) and SIP INFO
        # application/dtmf-relay (answered 200 by pjsua). Only queue the key here: never
        # hang up or call into pjsua from a DTMF callback.
        if self.handle is None:
            return
        key = str(prm.digit).strip().upper()
        if len(key) == 1 and key in _KEYS:
            self.handle.keys.push(key, dtmf_method_name(int(prm.method)))

    def _maybe_start(self) -> None:
        """Start the conversation once media is connected and, for a call we placed, the
        callee has answered (early media must not get the greeting)."""
        handle = self.handle
        if handle is None or self.started or self.port is None:
            return
        if handle.outbound and not handle.answered_at:
            return
        self.started = True
        if not handle.bridge_leg:  # the human's leg of a warm transfer has no conversation
            self.owner.start_conversation(handle)

    def onCallMediaState(self, prm: Any) -> None:
        # The first offer/answer and every re-INVITE or UPDATE after it (hold, unhold, a
        # codec change, a session refresh): pjsua may have rebuilt the stream, so the media
        # port is connected again each time.
        if self.handle is None:
            return
        info = self.getInfo()
        for mi in info.media:
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if mi.status == pj.PJSUA_CALL_MEDIA_NONE and mi.dir == pj.PJMEDIA_DIR_NONE:
                self._set_hold(True)  # a=inactive: no stream at all for now
                continue
            if mi.status not in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                continue
            self._set_hold(mi.status == pj.PJSUA_CALL_MEDIA_REMOTE_HOLD)
            self._note_codec(mi.index)
            audio = self.getAudioMedia(mi.index)
            self.audio_index = mi.index
            if self.bridged_to is not None:
                self.owner.reconnect_bridge(self)  # media renegotiated while bridged
                continue
            if self.port is None:
                self.port = self.owner.ports.acquire(self.handle.inbound, self.handle.playout)
                self.port.held = self.handle.on_hold
            self.audio_index = mi.index
            audio.startTransmit(self.port)
            self.port.startTransmit(audio)
            self.rx_seen_at = time.monotonic()
            self._maybe_start()

    def _set_hold(self, held: bool) -> None:
        handle = self.handle
        if handle is None or handle.on_hold == held:
            return
        handle.on_hold = held
        if self.port is not None:
            self.port.held = held
        log.info("call %s: %s", handle.sip_call_id, "on hold" if held else "taken off hold")

    def _note_codec(self, index: int) -> None:
        handle = self.handle
        try:
            si = self.getStreamInfo(index)
            codec = f"{si.codecName}/{si.codecClockRate}"
        except pj.Error:
            return
        if handle is not None and codec != handle.codec:
            if handle.codec:
                log.info("call %s: codec %s -> %s", handle.sip_call_id, handle.codec, codec)
            handle.codec = codec

    def send_dtmf(self, digits: str, duration_ms: int) -> None:
        """Send keypad keys: RFC 4733 telephone-events, or SIP INFO (application/dtmf-relay)
        when the call negotiated no telephone-event."""
        assert self.handle is not None
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.duration = duration_ms
        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
        try:
            self.sendDtmf(prm)
            log.info("call %s: sent DTMF %s (rfc4733)", self.handle.sip_call_id, digits)
            return
        except pj.Error as exc:
            log.debug("RFC 4733 DTMF not possible: %s", exc.reason.strip())
        prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO
        try:
            self.sendDtmf(prm)
            log.info("call %s: sent DTMF %s (info)", self.handle.sip_call_id, digits)
        except pj.Error as exc:
            log.warning(
                "call %s: sending DTMF %s failed: %s",
                self.handle.sip_call_id,
                digits,
                exc.reason.strip(),
            )

    def overdue(
        self, now: float, ring_timeout_s: float, rtp_timeout_s: float, max_call_s: float
    ) -> int | None:
        """The user agent's once-a-second watch: the status to hang up with when a call we
        placed rang unanswered too long (487), its RTP stopped (408) or it ran too long
        (200); None while it may go on."""
        handle = self.handle
        if (
            handle is not None
            and handle.outbound
            and not handle.answered_at
            and now - handle.dialed_at >= ring_timeout_s
        ):
            log.info("outbound call %s: no answer, cancelling", handle.sip_call_id)
            handle.outcome = "no-answer"
            handle.end_reason = f"no answer in {ring_timeout_s:g} s"
            return 487
        if handle is None or self.audio_index < 0:
            return None
        try:
            stat = self.getStreamStat(self.audio_index)
            packets = int(stat.rtcp.rxStat.pkt)
        except pj.Error:
            return None
        if packets != self.rx_packets:
            self.rx_packets = packets
            self.rx_seen_at = now
        elif now - self.rx_seen_at >= rtp_timeout_s:
            log.warning(
                "call %s: no RTP for %.0f s, hanging up",
                handle.sip_call_id,
                now - self.rx_seen_at,
            )
            handle.end_reason = "rtp timeout"
            return 408
        if handle.answered_at and now - handle.answered_at >= max_call_s:
            log.warning("call %s reached the maximum duration", handle.sip_call_id)
            if not handle.end_reason:
                handle.end_reason = "max duration"
            return 200
        return None
