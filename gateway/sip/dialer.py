"""A one-call SIP user agent that dials out (the test softphone's SIP side)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pjsua2 as pj

from gateway.sip.calls import OutboundCall
from gateway.sip.endpoint import (
    BridgePortPool,
    EndpointOptions,
    MediaBridgePort,
    PjThread,
    SipError,
    add_sip_headers,
)


@dataclass
class TransferRequest:
    """A REFER the dialed call received, and the call placed to its target (pjsua follows
    a REFER by calling the Refer-To URI and NOTIFYing the outcome back)."""

    to: str
    call: OutboundCall


class _DialCall(pj.Call):  # type: ignore[misc]
    def __init__(self, acc: Any, state: OutboundCall, dialer: Dialer) -> None:
        super().__init__(acc)
        self.state = state
        self.dialer = dialer
        self.port: MediaBridgePort | None = None

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.state.confirmed_at:
            self.state.confirmed_at = time.monotonic()
            self.state.status_code = int(info.lastStatusCode)
            self.state.confirmed.set()
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            if not self.state.confirmed_at:
                self.state.status_code = int(info.lastStatusCode)
            self.state.reason = str(info.lastReason)
            self.state.ended_at = time.monotonic()
            if self.port is not None:
                self.dialer.ports.release(self.port)
                self.port = None
            self.dialer.pj.dispose(self)
            if self.dialer.call is self:
                self.dialer.call = None
            if self in self.dialer.followed:
                self.dialer.followed.remove(self)
            self.state.ended.set()

    def onDtmfDigit(self, prm: Any) -> None:
        method = "info" if int(prm.method) == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
        self.state.dtmf_received.append((str(prm.digit), method, time.monotonic()))

    def onCallTransferRequest(self, prm: Any) -> None:
        # Accept (pjsua's default 202) and follow it with a call object of our own, so the
        # new call's state is visible and its media connected like the first call's.
        target = str(prm.dstUri)
        state = OutboundCall(target)
        follow = _DialCall(self.dialer.account, state, self.dialer)
        self.dialer.followed.append(follow)
        self.dialer.transfers.append(TransferRequest(target, state))
        prm.newCall = follow

    def onCallTsxState(self, prm: Any) -> None:
        # A 2xx the far end sent to our INVITE or UPDATE: note its Session-Expires.
        ev = prm.e.body.tsxState
        tsx = ev.tsx
        if ev.type != pj.PJSIP_EVENT_RX_MSG or tsx.role != pj.PJSIP_ROLE_UAC:
            return
        if tsx.method not in ("INVITE", "UPDATE") or not 200 <= int(tsx.statusCode) < 300:
            return
        value = ""
        for line in str(ev.src.rdata.wholeMsg).split("\r\n")[1:]:
            if not line:
                break  # end of the headers
            name, _, rest = line.partition(":")
            if name.strip().lower() in ("session-expires", "x"):
                value = rest.strip()
                break
        self.state.session_expires.append(value)

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        for mi in info.media:
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status in (
                pj.PJSUA_CALL_MEDIA_ACTIVE,
                pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
            ):
                try:
                    si = self.getStreamInfo(mi.index)
                    self.state.codecs.append(f"{si.codecName}/{si.codecClockRate}")
                except pj.Error:
                    pass
                audio = self.getAudioMedia(mi.index)
                if self.port is None:
                    self.port = self.dialer.ports.acquire(self.state.inbound, self.state.playout)
                audio.startTransmit(self.port)
                self.port.startTransmit(audio)
                self.state.media_up.set()


class Dialer:
    """Owns a pj thread with one account; places one call at a time."""

    # What its operations raise when the SIP stack refuses (the softphone catches it).
    error: ClassVar[type[Exception]] = SipError

    def __init__(
        self,
        codecs: tuple[str, ...] = ("PCMU", "PCMA"),
        session_expires_s: int = 0,
        auth: tuple[str, str] | None = None,
    ) -> None:
        # session_expires_s: ask for RFC 4028 session timers with this interval (>= 90).
        self.session_expires_s = session_expires_s
        # auth: (user, password) answering a digest challenge of any realm.
        self.auth = auth
        self.pj = PjThread(
            EndpointOptions(
                host="127.0.0.1",
                port=0,
                codecs=codecs,
                log_level=0,
                user_agent="sipagent-softphone",
            ),
            name="pj-dialer",
        )
        self.account: Any = None
        self.call: _DialCall | None = None
        # REFERs received, in order, and the calls placed to follow them (still up).
        self.transfers: list[TransferRequest] = []
        self.followed: list[_DialCall] = []
        self.ports = BridgePortPool()
        self.pj.on_started(self._create_account)
        self.pj.on_stopping(self._hangup_followed)
        self.pj.on_destroy(self._drop_objects)

    def _hangup_followed(self) -> None:
        """Before shutdown: end the calls placed for REFERs, so they are disconnected (and
        their objects disposed) before libDestroy, never deleted while still active."""
        for call in list(self.followed):
            op = pj.CallOpParam()
            op.statusCode = 200
            try:
                call.hangup(op)
            except pj.Error:
                self.followed.remove(call)

    def _drop_objects(self) -> None:
        """Delete pjsua2 objects on the pj thread, before libDestroy."""
        self.call = None
        self.followed.clear()
        self.ports.clear()
        self.account = None

    def _create_account(self) -> None:
        port = self.pj.local_port()
        cfg = pj.AccountConfig()
        cfg.idUri = f"sip:caller@127.0.0.1:{port}"
        tc = cfg.mediaConfig.transportConfig
        tc.port = random.randrange(30000, 60000, 2)
        tc.portRange = 200
        tc.boundAddress = "127.0.0.1"
        if self.session_expires_s:
            cfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_ALWAYS
            cfg.callConfig.timerSessExpiresSec = self.session_expires_s
            cfg.callConfig.timerMinSESec = 90
        if self.auth is not None:
            user, password = self.auth
            cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
        acc = pj.Account()
        acc.create(cfg, True)
        self.account = acc

    @property
    def alive(self) -> bool:
        """Whether the pj thread still runs (after `stop`: pjsua2 did not stop in time)."""
        return bool(self.pj.alive)

    def start(self) -> None:
        """Start SIP on a free loopback port."""
        self.pj.start()

    def dial(self, uri: str, headers: dict[str, str] | None = None) -> OutboundCall:
        """Send the INVITE; returns at once with the call's state object."""
        state = OutboundCall(uri)

        def job() -> None:
            call = _DialCall(self.account, state, self)
            op = pj.CallOpParam(True)
            add_sip_headers(op, headers or {})
            self.call = call
            call.makeCall(uri, op)

        self.pj.submit(job).result(10)
        return state

    def hangup(self) -> None:
        """Send BYE/CANCEL for the current call."""

        def job() -> None:
            if self.call is not None:
                self.call.state.hung_up_locally = True
                op = pj.CallOpParam()
                op.statusCode = 603 if not self.call.state.confirmed_at else 200
                self.call.hangup(op)

        self.pj.submit(job).result(10)

    def send_dtmf(self, digits: str, method: str = "rfc4733", duration_ms: int = 160) -> None:
        """Send keypad keys on the current call: RFC 4733 telephone-events ("rfc4733") or
        one SIP INFO per key ("info"). Raises `SipError` when pjsua refuses."""

        def job() -> None:
            if self.call is None:
                raise SipError("no call to send DTMF on")
            prm = pj.CallSendDtmfParam()
            prm.digits = digits
            prm.duration = duration_ms
            prm.method = (
                pj.PJSUA_DTMF_METHOD_SIP_INFO if method == "info" else pj.PJSUA_DTMF_METHOD_RFC2833
            )
            try:
                self.call.sendDtmf(prm)
            except pj.Error as exc:
                raise SipError(f"sending DTMF {digits}: {exc.reason.strip()}") from None

        self.pj.submit(job).result(10)

    def hold(self) -> None:
        """Put the far end on hold: a re-INVITE offering a=sendonly (we may go on sending,
        as a PBX plays music on hold)."""
        self._call_op("hold", lambda call, op: call.setHold(op))

    def unhold(self) -> None:
        """Take the far end off hold: a re-INVITE offering a=sendrecv."""

        def reinvite(call: Any, op: Any) -> None:
            op.opt.flag = pj.PJSUA_CALL_UNHOLD
            call.reinvite(op)

        self._call_op("unhold", reinvite)

    def switch_codec(self, codec: str) -> None:
        """Re-INVITE offering only `codec` ("PCMU" or "PCMA"), so the call changes codec
        mid-way (the offers after it keep to that codec)."""

        def reinvite(call: Any, op: Any) -> None:
            self.pj.set_codecs((codec,))
            call.reinvite(op)

        self._call_op(f"re-INVITE to {codec}", reinvite)

    def refresh(self) -> None:
        """A session refresh by UPDATE without SDP (what a carrier's session timer sends)."""

        def update(call: Any, op: Any) -> None:
            op.opt.flag = pj.PJSUA_CALL_NO_SDP_OFFER
            call.update(op)

        self._call_op("UPDATE", update)

    def _call_op(self, what: str, fn: Callable[[Any, Any], None]) -> None:
        def job() -> None:
            if self.call is None:
                raise SipError(f"no call to {what}")
            try:
                fn(self.call, pj.CallOpParam(True))
            except pj.Error as exc:
                raise SipError(f"{what}: {exc.reason.strip()}") from None

        self.pj.submit(job).result(10)

    def stop(self) -> None:
        """Tear down SIP."""
        self.pj.stop()
