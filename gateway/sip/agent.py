"""The agent's SIP side: an account that answers INVITEs and bridges each call's audio.

Everything here runs on the pj thread. The conversation learns about calls through a
`CallEvents` sink (called on the pj thread; implementations hop to their own loop) and
asks for hang-ups with `AgentUA.hangup(call_id)`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import pjsua2 as pj

from gateway.sip.calls import CallHandle, parse_sip_headers
from gateway.sip.endpoint import BridgePortPool, EndpointOptions, MediaBridgePort, PjThread

log = logging.getLogger(__name__)


class CallEvents(Protocol):
    """Receives call life-cycle events on the pj thread."""

    def call_started(self, handle: CallHandle) -> None:
        """Media is up: the conversation may start."""

    def call_ended(self, handle: CallHandle) -> None:
        """The call is over (any side, any reason)."""

    def registration_changed(self, registered: bool, status: str) -> None:
        """Registration state changed (register mode only); ``status`` says why, e.g.
        ``"200 OK"`` or ``"403 Forbidden: wrong password for agent1"``."""


@dataclass(frozen=True)
class RegistrationOptions:
    """Register the agent's account with a registrar (digest auth)."""

    registrar: str  # host[:port]
    domain: str  # the address-of-record is sip:<username>@<domain>
    username: str
    password: str
    auth_user: str | None = None
    expires_s: int = 300
    first_retry_s: float = 5.0
    max_retry_s: float = 60.0


@dataclass
class AgentOptions:
    """SIP settings of the agent beyond the endpoint's."""

    user: str = "agent"
    rtp_port_start: int = 20000
    rtp_port_range: int = 200
    rtp_timeout_s: float = 30.0
    max_call_s: float = 3600.0
    # INVITEs from other source addresses get 403 before any media or AI work; empty
    # allows every source.
    allow_networks: tuple[str, ...] = ()
    registration: RegistrationOptions | None = None


class _AgentCall(pj.Call):  # type: ignore[misc]
    def __init__(self, ua: AgentUA, acc: Any, call_id: int) -> None:
        super().__init__(acc, call_id)
        self.ua = ua
        self.handle: CallHandle | None = None
        self.port: MediaBridgePort | None = None
        self.started = False
        self.rx_packets = -1
        self.rx_seen_at = time.monotonic()
        self.audio_index = -1

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if self.handle is None:
            return
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.handle.answered_at:
            self.handle.answered_at = time.monotonic()
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            if not self.handle.end_reason:
                self.handle.end_reason = f"{info.lastStatusCode} {info.lastReason}".strip()
            self.ua._call_disconnected(self)

    def onCallMediaState(self, prm: Any) -> None:
        if self.handle is None:
            return
        info = self.getInfo()
        for mi in info.media:
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if mi.status not in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                continue
            audio = self.getAudioMedia(mi.index)
            if self.port is None:
                self.port = self.ua.ports.acquire(self.handle.inbound, self.handle.playout)
            self.audio_index = mi.index
            audio.startTransmit(self.port)
            self.port.startTransmit(audio)
            self.rx_seen_at = time.monotonic()
            if not self.started:
                self.started = True
                self.ua.events.call_started(self.handle)


class _AgentAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, ua: AgentUA) -> None:
        super().__init__()
        self.ua = ua

    def onIncomingCall(self, prm: Any) -> None:
        self.ua._incoming(self, prm)


class AgentUA:
    """Answers calls and connects each to a media bridge port; owns the pj thread."""

    def __init__(self, endpoint: EndpointOptions, options: AgentOptions, events: CallEvents):
        self.endpoint = endpoint
        self.options = options
        self.events = events
        self.pj = PjThread(endpoint, name="pj-agent")
        self.account: _AgentAccount | None = None
        self.calls: dict[int, _AgentCall] = {}
        self.ports = BridgePortPool()
        self.port = endpoint.port
        self.uri = f"sip:{options.user}@{endpoint.host}:{endpoint.port}"
        self.pj.on_started(self._create_account)
        self.pj.on_stopping(self._hangup_all)
        self.pj.on_destroy(self._drop_objects)

    # -- public API (any thread) ------------------------------------------------------------
    def start(self) -> None:
        """Start SIP; raises `SipError` with a readable reason if it cannot listen."""
        self.pj.start()

    def stop(self) -> None:
        """Hang up all calls and stop SIP."""
        self.pj.stop()

    def hangup(self, call_id: int, code: int = 200, reason: str = "") -> None:
        """Hang up a call by id (no-op if it is already gone)."""

        def job() -> None:
            call = self.calls.get(call_id)
            if call is not None and call.handle is not None and reason:
                call.handle.end_reason = reason
            self._hangup(call_id, code)

        self.pj.post(job)

    @property
    def active_calls(self) -> int:
        """Calls currently held (read without locking; a snapshot)."""
        return len(self.calls)

    # -- pj thread --------------------------------------------------------------------------
    def _create_account(self) -> None:
        self.port = self.pj.local_port()
        host = self.endpoint.public_host or self.endpoint.host
        if host in ("", "0.0.0.0", "::"):
            # Bound to every interface: advertise the address pjsip chose for the transport.
            info = self.pj.ep.transportGetInfo(self.pj.transport_id)
            host = str(info.localName).rsplit(":", 1)[0]
        self.uri = f"sip:{self.options.user}@{host}:{self.port}"
        cfg = pj.AccountConfig()
        cfg.idUri = self.uri
        mcfg = cfg.mediaConfig.transportConfig
        mcfg.port = self.options.rtp_port_start
        mcfg.portRange = self.options.rtp_port_range
        if self.endpoint.host not in ("", "0.0.0.0"):
            mcfg.boundAddress = self.endpoint.host
        if self.endpoint.public_host:
            mcfg.publicAddress = self.endpoint.public_host
        acc = _AgentAccount(self)
        acc.create(cfg, True)
        self.account = acc
        self.pj.every(1.0, self._watch_calls)

    def _incoming(self, acc: _AgentAccount, prm: Any) -> None:
        call = _AgentCall(self, acc, prm.callId)
        op = pj.CallOpParam()
        if len(self.calls) >= self.endpoint.max_calls:
            log.warning(
                "call refused: %d calls in progress (max %d)",
                len(self.calls),
                self.endpoint.max_calls,
            )
            op.statusCode = 486
            call.answer(op)
            self.pj.dispose(call)
            return
        info = call.getInfo()
        try:
            headers = parse_sip_headers(str(prm.rdata.wholeMsg))
        except Exception:
            headers = {}
        handle = CallHandle(
            call_id=int(prm.callId),
            sip_call_id=str(info.callIdString),
            remote_uri=str(info.remoteUri),
            local_uri=str(info.localUri),
            headers=headers,
        )
        call.handle = handle
        self.calls[handle.call_id] = call
        log.info("incoming call %s from %s", handle.sip_call_id, handle.remote_uri)
        op.statusCode = 200
        try:
            call.answer(op)
        except pj.Error as exc:
            log.warning("answer failed for %s: %s", handle.sip_call_id, exc.reason)
            op.statusCode = 488 if "SDP" in exc.reason.upper() else 500
            with contextlib.suppress(pj.Error):
                call.hangup(op)

    def _call_disconnected(self, call: _AgentCall) -> None:
        handle = call.handle
        assert handle is not None
        handle.ended_at = time.monotonic()
        self.calls.pop(handle.call_id, None)
        log.info("call %s ended: %s", handle.sip_call_id, handle.end_reason)
        if call.started:
            self.events.call_ended(handle)
        port, call.port = call.port, None
        call.handle = None
        if port is not None:
            self.ports.release(port)
        # Deleted after this callback returns, on this thread.
        self.pj.dispose(call)

    def _hangup(self, call_id: int, code: int) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        op = pj.CallOpParam()
        op.statusCode = code
        try:
            call.hangup(op)
        except pj.Error as exc:
            log.debug("hangup %d: %s", call_id, exc.reason)

    def _drop_objects(self) -> None:
        """Delete pjsua2 objects on this thread, before libDestroy (never after it)."""
        for call in self.calls.values():
            call.port = None
        self.calls.clear()
        self.ports.clear()
        self.account = None

    def _hangup_all(self) -> None:
        for call_id in list(self.calls):
            self._hangup(call_id, 503)

    def _watch_calls(self) -> None:
        """Once a second: hang up calls whose RTP stopped or that ran too long."""
        now = time.monotonic()
        for call_id, call in list(self.calls.items()):
            handle = call.handle
            if handle is None or call.audio_index < 0:
                continue
            try:
                stat = call.getStreamStat(call.audio_index)
                packets = int(stat.rtcp.rxStat.pkt)
            except pj.Error:
                continue
            if packets != call.rx_packets:
                call.rx_packets = packets
                call.rx_seen_at = now
            elif now - call.rx_seen_at >= self.options.rtp_timeout_s:
                log.warning(
                    "call %s: no RTP for %.0f s, hanging up",
                    handle.sip_call_id,
                    now - call.rx_seen_at,
                )
                handle.end_reason = "rtp timeout"
                self._hangup(call_id, 408)
                continue
            if handle.answered_at and now - handle.answered_at >= self.options.max_call_s:
                log.warning("call %s reached the maximum duration", handle.sip_call_id)
                self._hangup(call_id, 200)
