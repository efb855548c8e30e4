"""The agent's SIP side: an account that answers INVITEs and bridges each call's audio.

Everything here runs on the pj thread. The conversation learns about calls through a
`CallEvents` sink (called on the pj thread; implementations hop to their own loop) and
asks for hang-ups with `AgentUA.hangup(call_id)` and blind transfers (REFER) with
`AgentUA.transfer(call_id, uri)`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import pjsua2 as pj

from gateway.sip.calls import CallHandle, outbound_outcome, parse_sip_headers, pj_text
from gateway.sip.digest import DigestCredentials, DigestServer
from gateway.sip.endpoint import (
    BridgePortPool,
    EndpointOptions,
    MediaBridgePort,
    PjThread,
    SipError,
    add_sip_headers,
)
from gateway.sip.guard import GuardError, SipGuard
from gateway.sip.screen import CHALLENGED, Refusal, Screen, ScreenState

log = logging.getLogger(__name__)


class CallEvents(Protocol):
    """Receives call life-cycle events on the pj thread."""

    def call_started(self, handle: CallHandle) -> None:
        """Media is up: the conversation may start."""

    def call_ended(self, handle: CallHandle) -> None:
        """The call is over (any side, any reason)."""

    def leg_changed(self, handle: CallHandle, up: bool) -> None:
        """A call the agent placed with `AgentUA.dial` (no conversation of its own: the
        human's leg of a warm transfer) took a call slot (``up``) or gave it back."""

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
    # While draining, new INVITEs get 503 with this Retry-After (seconds).
    drain_retry_after_s: int = 30
    # An outbound call not answered this long is cancelled (outcome "no-answer").
    ring_timeout_s: float = 30.0
    # New INVITEs let through to pjsua per second (and at once); more get 503. Each one
    # binds two media sockets of the 64-slot select ioqueue for at least 0.5 s.
    new_calls_per_s: float = 10.0
    # The calls the agent places go through this SIP URI (the edge); None: straight out.
    outbound_proxy: str | None = None
    # RTP is bound to this address (None: the SIP address) and advertised in SDP as
    # media_public_host (None: the endpoint's public host, else the bound address).
    media_host: str | None = None
    media_public_host: str | None = None
    # New calls must carry these digest credentials (sip.inbound_auth); None: no challenge.
    inbound_auth: DigestCredentials | None = None


# -- pure helpers (no pjsua2) -------------------------------------------------------------------
IpNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(items: Iterable[str]) -> tuple[IpNetwork, ...]:
    """Parse allow-list entries ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32").

    Host bits are ignored ("10.1.2.3/8" is 10.0.0.0/8), as the settings validator does.
    Raises ValueError naming the bad entry.
    """
    out: list[IpNetwork] = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network") from None
    return tuple(out)


def source_ip(source: str) -> IpAddress | None:
    """The IP address of a source as pjsip prints it: "ip:port", "[v6]:port" or a bare
    address; None when it is not an IP address."""
    text = source.strip()
    if text.startswith("["):
        host = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        host = text.split(":", 1)[0]
    else:
        host = text  # a bare IPv4 or IPv6 address
    host = host.split("%", 1)[0]  # drop an IPv6 zone id
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def source_allowed(source: str, networks: tuple[IpNetwork, ...]) -> bool:
    """Whether a request from `source` ("ip:port") may pass the allow-list.

    An empty list allows everything; an unparsable source is refused. An IPv4-mapped IPv6
    source (::ffff:192.0.2.7) is matched against the IPv4 networks too.
    """
    if not networks:
        return True
    addr = source_ip(source)
    if addr is None:
        return False
    candidates: list[IpAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    return any(a in net for a in candidates for net in networks if a.version == net.version)


def sdp_without_signature(sdp: str) -> str:
    """An SDP of ours without what names the SIP stack: ``s=pjmedia`` becomes ``s=-`` and
    pjsua's ``a=X-nat`` line goes."""
    lines = sdp.split("\r\n")
    out = [
        "s=-" if line == "s=pjmedia" else line for line in lines if not line.startswith("a=X-nat:")
    ]
    return "\r\n".join(out)


def pjsua_port_range(ports: int) -> int:
    """pjsua's ``portRange`` that keeps RTP and RTCP inside ``ports`` ports from the start.

    pjsua puts RTP on start, start+2, ... while the port is at most start+portRange
    (inclusive) and RTCP one above, so portRange = ports - 2 keeps the top RTCP port at
    start+ports-1 (with portRange = ports, worker i's last RTP/RTCP pair was worker
    i+1's first). 0 would mean "no limit" to pjsua: at least 2.
    """
    return max(2, ports - 2)


def pjsua_media_ports(start: int, port_range: int) -> set[int]:
    """Every port pjsua may bind for RTP and RTCP with this start and ``portRange``."""
    rtp = range(start, start + port_range + 1, 2)
    return {p for port in rtp for p in (port, port + 1)}


class RetryBackoff:
    """Delays between registration attempts: `first`, then doubling, capped at `cap`."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next_delay(self) -> float:
        """The delay before the next attempt (advances the backoff)."""
        delay = min(self._next, self.cap)
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        """After a success: the next failure is retried after `first` again."""
        self._next = self.first


def _secs(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def registration_status(
    code: int,
    reason: str,
    *,
    registrar: str,
    username: str,
    expires: int = 0,
    retry_in: float | None = None,
) -> str:
    """A one-line account of a REGISTER outcome for logs and `registration_changed`.

    >>> registration_status(200, "OK", registrar="r", username="a", expires=300)
    '200 OK, expires in 300 s'
    """
    head = f"{code} {reason.strip()}".strip() if code > 0 else (reason.strip() or "error")
    if 200 <= code < 300:
        if expires > 0:
            return f"{head}, expires in {expires} s"
        return f"{head}, unregistered"
    if code in (401, 403, 407):
        why = (
            f"the registrar rejected the credentials of {username}"
            " (check registration.accounts password)"
        )
    elif code == 404:
        why = (
            f"the registrar does not know {username}"
            " (check registration.accounts username and registration.domain)"
        )
    elif code == 408:
        why = f"registrar {registrar} did not answer"
    elif code <= 0:
        why = f"cannot send REGISTER to registrar {registrar}"
    elif code in (502, 503, 504):
        why = f"registrar {registrar} is unreachable or unavailable"
    else:
        why = f"registrar {registrar} refused the registration"
    text = f"{head}: {why}"
    if retry_in is not None:
        text += f", retrying in {_secs(retry_in)} s"
    return text


_KEYS = frozenset("0123456789*#ABCD")


def dtmf_method_name(method: int) -> str:
    """ "rfc4733" or "info" for a pjsua DTMF method number."""
    return "info" if method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"


class _RefusalLog:
    """One WARNING per refused source per `window_s`; repeats are counted, not logged."""

    def __init__(self, window_s: float = 60.0, max_sources: int = 1024) -> None:
        self.window_s = window_s
        self.max_sources = max_sources
        self._seen: dict[str, tuple[float, int]] = {}

    def note(self, key: str, now: float) -> int | None:
        """None: stay quiet; otherwise log now (returns how many were suppressed before)."""
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if len(self._seen) >= self.max_sources:
            self._seen.clear()  # a scan from many sources: forget, stay bounded
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0


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
            self.handle.answered_at = time.monotonic()
            self._maybe_start()
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            if not self.handle.end_reason:
                reason = pj_text(info.lastReason)
                self.handle.end_reason = f"{info.lastStatusCode} {reason}".strip()
            if self.handle.outbound and not self.handle.outcome:
                self.handle.outcome = outbound_outcome(
                    bool(self.handle.answered_at), int(info.lastStatusCode)
                )
            self.ua._call_disconnected(self)

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
            self.ua.events.call_started(handle)

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
                self.ua._reconnect_bridge(self)  # media renegotiated while bridged
                continue
            if self.port is None:
                self.port = self.ua.ports.acquire(self.handle.inbound, self.handle.playout)
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


class _AgentAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, ua: AgentUA) -> None:
        super().__init__()
        self.ua = ua

    def onIncomingCall(self, prm: Any) -> None:
        self.ua._incoming(self, prm)

    def onRegState(self, prm: Any) -> None:
        self.ua._reg_state(prm)


class AgentUA:
    """Answers calls and connects each to a media bridge port; owns the pj thread.

    In register mode (``options.registration``) the account registers
    ``sip:<username>@<domain>`` with digest credentials, pjsua refreshes it before it
    expires, and failures are retried by this class with exponential backoff (pjsua's own
    retry has a fixed interval and is switched off). Calls in progress are never dropped
    because of a registration failure.
    """

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
        try:
            self._networks = parse_networks(options.allow_networks)
        except ValueError as exc:
            raise SipError(f"sip.allow_networks: {exc}") from None
        self._refusals = _RefusalLog()
        self._accepting = True
        # Registration state: written on the pj thread, read anywhere (snapshots).
        self.registered = False
        self.registration_status = "" if options.registration is None else "not registered yet"
        reg = options.registration
        self._backoff = RetryBackoff(
            reg.first_retry_s if reg else 5.0, reg.max_retry_s if reg else 60.0
        )
        self._retry_at: float | None = None
        self._reg_results = 0  # onRegState calls so far
        self._stopping = False
        if reg is not None:
            self.uri = f"sip:{reg.username}@{reg.domain}"
        # Every request meets the guard before pjsua2 (see gateway/sip/guard.py).
        self.screen = Screen(
            lambda source: source_allowed(source, self._networks),
            new_calls_per_s=options.new_calls_per_s,
            auth=DigestServer(options.inbound_auth) if options.inbound_auth else None,
        )
        self.guard = SipGuard(self._screen_request, self._screen_response)
        self.pj.on_init(self.guard.install)
        self.pj.on_started(self._create_account)
        self.pj.on_stopping(self._stop_accepting)
        self.pj.on_stopping(self._stop_registration)
        self.pj.on_stopping(self._hangup_all)
        self.pj.on_destroy(self._drop_objects)

    # -- public API (any thread) ------------------------------------------------------------
    def start(self) -> None:
        """Start SIP; raises `SipError` with a readable reason if it cannot listen."""
        self.pj.start()

    def stop(self) -> None:
        """Unregister (best effort, bounded), hang up all calls and stop SIP."""
        self.pj.stop()

    def hangup(self, call_id: int, code: int = 200, reason: str = "") -> None:
        """Hang up a call by id (no-op if it is already gone)."""

        def job() -> None:
            call = self.calls.get(call_id)
            if call is not None and call.handle is not None and reason:
                call.handle.end_reason = reason
            self._hangup(call_id, code)

        self.pj.post(job)

    def refuse_new_calls(self) -> None:
        """Before stopping: new INVITEs get 503 from now on (any thread)."""
        self.pj.post(self._stop_accepting)

    def hangup_all(self, reason: str) -> None:
        """Refuse new calls and hang up every call (BYE / CANCEL) at once; any thread."""

        def job() -> None:
            self._accepting = False
            for call in self.calls.values():
                if call.handle is not None and not call.handle.end_reason:
                    call.handle.end_reason = reason
            self._hangup_all()

        self.pj.post(job)

    def send_dtmf(self, call_id: int, digits: str, duration_ms: int = 160) -> None:
        """Send keypad keys on a call (no-op if it is gone): RFC 4733 telephone-events,
        or SIP INFO (application/dtmf-relay) when the call negotiated no telephone-event."""

        def job() -> None:
            call = self.calls.get(call_id)
            if call is None or call.handle is None:
                return
            self._send_dtmf(call, digits, duration_ms)

        self.pj.post(job)

    def make_call(
        self, uri: str, headers: dict[str, str], ref: str | None = None
    ) -> concurrent.futures.Future[str]:
        """Place a call to ``uri`` with extra INVITE ``headers`` (queued to the pj thread).

        The Future holds the call's SIP Call-ID once the INVITE is sent, or a `SipError`
        saying why it was not (no free call slot, draining, a bad URI).  Once answered the
        call takes the inbound path: `CallEvents.call_started` when media is up (the
        conversation greets first), and `CallEvents.call_ended` in every case, answered or
        not, with ``handle.outcome`` set.  ``ref`` is the requester's id for the call.
        """
        return self.pj.submit(lambda: self._make_call(uri, dict(headers), ref))

    def transfer(self, call_id: int, uri: str) -> concurrent.futures.Future[tuple[int, str]]:
        """Blind-transfer a call: send REFER to `uri` and resolve the Future with the final
        NOTIFY's (SIP status, reason) from the transferee, e.g. ``(200, "OK")`` when the
        target answered. Status 0 means no NOTIFY decided it: the REFER could not be sent,
        the call is gone or ended first. Does not hang up: the caller decides."""
        fut: concurrent.futures.Future[tuple[int, str]] = concurrent.futures.Future()

        def job() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            call = self.calls.get(call_id)
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

        self.pj.post(job)
        return fut

    def dial(self, uri: str) -> concurrent.futures.Future[CallHandle]:
        """Place a call from the agent's account (the human's leg of a warm transfer).

        The Future gets the call's `CallHandle` (``bridge_leg=True``) as soon as the INVITE is
        sent, or `SipError` when it cannot be. Its ``answered_at`` is set when it is
        answered, ``ended_at`` and ``end_reason`` (e.g. "486 Busy Here") when it ends; frames
        put in its playout ring are sent once its media is up. The call counts against
        ``max_calls`` and has no conversation; end it with `hangup`."""
        fut: concurrent.futures.Future[CallHandle] = concurrent.futures.Future()

        def job() -> None:
            if not fut.set_running_or_notify_cancel():
                return  # the asker gave up before the pj thread got to it
            if self.account is None or self._stopping:
                fut.set_exception(SipError("SIP is not running"))
                return
            if len(self.calls) >= self.endpoint.max_calls:
                fut.set_exception(SipError(f"no call slot free (max {self.endpoint.max_calls})"))
                return
            call = _AgentCall(self, self.account, pj.PJSUA_INVALID_ID)
            try:
                call.makeCall(uri, pj.CallOpParam(True))
            except pj.Error as exc:
                self.pj.dispose(call)
                fut.set_exception(SipError(f"cannot call {uri}: {exc.reason.strip()}"))
                return
            info = call.getInfo()
            if not call.isActive():
                self.pj.dispose(call)
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
            self.calls[handle.call_id] = call
            log.info("outbound call %s to %s", handle.sip_call_id, uri)
            self.events.leg_changed(handle, True)
            fut.set_result(handle)

        self.pj.post(job)
        return fut

    def bridge(self, call_a: int, call_b: int, reason: str) -> concurrent.futures.Future[bool]:
        """Connect two calls' audio directly (the agent's media ports leave both); when one
        ends the other is hung up. ``reason`` becomes both calls' end reason. The Future is
        False when either call is gone or has no media."""
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def job() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            a, b = self.calls.get(call_a), self.calls.get(call_b)
            if a is None or b is None or a.audio_index < 0 or b.audio_index < 0:
                fut.set_result(False)
                return
            assert a.handle is not None and b.handle is not None
            a.bridged_to, b.bridged_to = call_b, call_a
            a.handle.end_reason = b.handle.end_reason = reason
            for call in (a, b):
                self._reconnect_bridge(call)
            log.info("bridged call %s with %s", a.handle.sip_call_id, b.handle.sip_call_id)
            fut.set_result(True)

        self.pj.post(job)
        return fut

    def _reconnect_bridge(self, call: _AgentCall) -> None:
        """Route a bridged call's audio to its partner instead of its media port."""
        other = self.calls.get(call.bridged_to) if call.bridged_to is not None else None
        if other is None or other.audio_index < 0 or call.audio_index < 0:
            return
        audio = call.getAudioMedia(call.audio_index)
        peer = other.getAudioMedia(other.audio_index)
        if call.port is not None:
            with contextlib.suppress(pj.Error):
                audio.stopTransmit(call.port)
                call.port.stopTransmit(audio)
        audio.startTransmit(peer)

    def set_accepting(self, accepting: bool) -> None:
        """Take new calls (True) or refuse them with 503 + Retry-After (False: draining).

        Calls in progress are not touched. Safe from any thread and from signal handlers
        running in an event loop; takes effect on the pj thread.
        """

        def job() -> None:
            if accepting == self._accepting:
                return
            self._accepting = accepting
            if accepting:
                log.info("accepting new calls again")
            else:
                log.info(
                    "draining: new calls get 503 (Retry-After %d s), %d in progress continue",
                    self.options.drain_retry_after_s,
                    len(self.calls),
                )

        self.pj.post(job)

    @property
    def accepting(self) -> bool:
        """Whether new calls are taken (False while draining)."""
        return self._accepting

    @property
    def active_calls(self) -> int:
        """Calls currently held (read without locking; a snapshot)."""
        return len(self.calls)

    # -- pj thread --------------------------------------------------------------------------
    def _create_account(self) -> None:
        self.port = self.pj.local_port()
        try:
            self.guard.self_test(self.pj.ep, self.endpoint.host, self.port)
        except GuardError as exc:
            raise SipError(f"SIP guard: {exc}") from None
        host = self.endpoint.public_host or self.endpoint.host
        if host in ("", "0.0.0.0", "::"):
            # Bound to every interface: advertise the address pjsip chose for the transport.
            info = self.pj.ep.transportGetInfo(self.pj.transport_id)
            host = str(info.localName).rsplit(":", 1)[0]
        cfg = pj.AccountConfig()
        reg = self.options.registration
        if reg is None:
            self.uri = f"sip:{self.options.user}@{host}:{self.port}"
        else:
            self._configure_registration(cfg, reg)
        cfg.idUri = self.uri
        if self.options.outbound_proxy:
            proxy = self.options.outbound_proxy
            cfg.sipConfig.proxies.append(proxy if ";lr" in proxy else f"{proxy};lr")
        mcfg = cfg.mediaConfig.transportConfig
        mcfg.port = self.options.rtp_port_start
        mcfg.portRange = pjsua_port_range(self.options.rtp_port_range)
        bound = self.options.media_host or self.endpoint.host
        if bound not in ("", "0.0.0.0"):
            mcfg.boundAddress = bound
        advertised = self.options.media_public_host or self.endpoint.public_host
        if advertised:
            mcfg.publicAddress = advertised
        acc = _AgentAccount(self)
        acc.create(cfg, True)
        self.account = acc
        self.pj.every(1.0, self._watch_calls)
        if reg is not None:
            self.pj.every(0.1, self._registration_timer)
            log.info("registering %s with %s", self.uri, reg.registrar)
            self._register_now()

    def _configure_registration(self, cfg: Any, reg: RegistrationOptions) -> None:
        self.uri = f"sip:{reg.username}@{reg.domain}"
        rc = cfg.regConfig
        rc.registrarUri = f"sip:{reg.registrar}"
        rc.timeoutSec = reg.expires_s
        # Refresh a tenth of the expiry early (5..30 s), so a refresh that needs a few
        # retransmissions still lands before the binding expires. pjsua never refreshes
        # sooner than 5 s, also when the registrar grants less than we asked for.
        rc.delayBeforeRefreshSec = max(5, min(30, reg.expires_s // 10))
        # pjsua's retry uses one fixed interval: off; `_reg_state` retries with backoff.
        rc.retryIntervalSec = 0
        rc.firstRetryIntervalSec = 0
        rc.randomRetryIntervalSec = 0
        rc.dropCallsOnFail = False  # a registrar outage must not cut calls in progress
        rc.registerOnAdd = False  # `_register_now` sends it and handles a synchronous error
        rc.unregWaitMsec = 1000  # bounds libDestroy's wait for an un-REGISTER answer
        cred = pj.AuthCredInfo("digest", "*", reg.auth_user or reg.username, 0, reg.password)
        cfg.sipConfig.authCreds.append(cred)

    def _register_now(self) -> None:
        acc = self.account
        reg = self.options.registration
        if acc is None or reg is None or self._stopping:
            return
        seen = self._reg_results
        try:
            acc.setRegistration(True)
        except pj.Error as exc:
            # pjsip may already have reported this failure through onRegState (a send
            # that fails at once); count and report it once.
            if self._reg_results == seen:
                self._registration_failed(0, exc.reason.strip() or "cannot send REGISTER", reg)

    def _registration_timer(self) -> None:
        """Ten times a second: send the scheduled retry when it is due."""
        if self._retry_at is not None and time.monotonic() >= self._retry_at:
            self._retry_at = None
            self._register_now()

    def _reg_state(self, prm: Any) -> None:
        """`onRegState`: a REGISTER (or refresh, or un-REGISTER) completed."""
        reg = self.options.registration
        if reg is None:
            return
        self._reg_results += 1
        code = int(prm.code)
        reason = str(prm.reason)
        if 200 <= code < 300:
            expires = int(prm.expiration)
            status = registration_status(
                code, reason, registrar=reg.registrar, username=reg.username, expires=expires
            )
            if expires > 0:
                self._backoff.reset()
                self._retry_at = None
                if self.registered:
                    log.debug("registration of %s refreshed: %s", self.uri, status)
                    self.registration_status = status
                    return
                self._set_registration(True, status)
            else:
                self._set_registration(False, status, asked=True)
            return
        if self._stopping:
            self._set_registration(False, f"{code} {reason}".strip(), asked=True)
            return
        self._registration_failed(code, reason, reg)

    def _registration_failed(self, code: int, reason: str, reg: RegistrationOptions) -> None:
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        status = registration_status(
            code, reason, registrar=reg.registrar, username=reg.username, retry_in=delay
        )
        self._set_registration(False, status)

    def _set_registration(self, registered: bool, status: str, asked: bool = False) -> None:
        self.registered = registered
        self.registration_status = status
        if registered:
            log.info("registered %s: %s", self.uri, status)
        elif asked:
            log.info("unregistered %s: %s", self.uri, status)
        else:
            log.warning("not registered %s: %s", self.uri, status)
        try:
            self.events.registration_changed(registered, status)
        except Exception:
            log.exception("registration_changed handler failed")

    def _stop_registration(self) -> None:
        """Before shutdown: un-REGISTER if registered. Best effort: the pj thread gives it
        about a second (`PjThread` stop loop) and libDestroy waits at most unregWaitMsec."""
        self._stopping = True
        self._retry_at = None
        acc = self.account
        if acc is None or self.options.registration is None:
            return
        try:
            if acc.getInfo().regIsActive:
                acc.setRegistration(False)
        except pj.Error as exc:
            log.debug("un-REGISTER of %s not sent: %s", self.uri, exc.reason.strip())

    def _stop_accepting(self) -> None:
        """First thing on shutdown: INVITEs that arrive while calls are hung up get 503."""
        self._accepting = False

    def _screen_request(self, raw: bytes, source: str) -> Refusal | None:
        """The guard asks (pj thread): answer this request in pjsua2's place?"""
        state = ScreenState(
            accepting=self._accepting,
            calls=len(self.calls),
            max_calls=self.endpoint.max_calls,
            drain_retry_after_s=self.options.drain_retry_after_s,
        )
        refusal = self.screen.request(raw, source, state, time.monotonic())
        if refusal is not None:
            method = raw.split(b" ", 1)[0][:32].decode("ascii", "replace")
            self._log_refusal(method, source, refusal)
        return refusal

    def _screen_response(self, raw: bytes, source: str) -> Refusal | None:
        refusal = self.screen.response(raw)
        if refusal is not None:
            self._log_refusal("response", source, refusal)
        return refusal

    def _log_refusal(self, method: str, source: str, refusal: Refusal) -> None:
        """One line per refusal, except that a source refused again within a minute is
        counted, not logged (a scan or flood must not flood the log)."""
        what = (
            f"dropped ({refusal.why})"
            if refusal.drop
            else (f"refused with {refusal.code}: {refusal.why}")
        )
        if refusal.code == 503 and refusal.why == "draining":
            log.info("%s from %s %s", method, source, what)
            return
        if refusal.code == 401 and refusal.why.startswith(CHALLENGED):
            log.debug("%s from %s %s", method, source, what)
            return
        key = f"{source_ip(source) or source}/{refusal.code}"
        suppressed = self._refusals.note(key, time.monotonic())
        if suppressed is None:
            return
        more = f" ({suppressed} more refused since the last warning)" if suppressed else ""
        log.warning("%s from %s %s%s", method, source, what, more)

    def _refuse(self, call: _AgentCall, code: int, reason: str, headers: dict[str, str]) -> None:
        """Refuse an incoming call after `onIncomingCall` has returned: a final answer
        from inside the callback makes pjsua2 free the INVITE's cloned rx data twice when
        the INVITE has no SDP (the process aborts in pjsip_rx_data_free_cloned)."""
        self.pj.post(lambda: self._refuse_now(call, code, reason, headers))

    def _refuse_now(
        self, call: _AgentCall, code: int, reason: str, headers: dict[str, str]
    ) -> None:
        op = pj.CallOpParam()
        op.statusCode = code
        op.reason = reason
        add_sip_headers(op, headers)
        try:
            call.answer(op)
        except pj.Error as exc:
            log.debug("refusing a call with %d failed: %s", code, exc.reason.strip())
        self.pj.dispose(call)

    def _incoming(self, acc: _AgentAccount, prm: Any) -> None:
        call = _AgentCall(self, acc, prm.callId)
        source = pj_text(prm.rdata.srcAddress)
        # The guard answered strangers, a drain and a full agent before pjsua2 opened any
        # media for them; these checks only back it up.
        if not source_allowed(source, self._networks):
            log.warning("INVITE from %s past the guard refused with 403", source)
            self._refuse(call, 403, "Forbidden", {})
            return
        if not self._accepting:
            log.info("INVITE from %s refused with 503: draining", source)
            retry = {"Retry-After": str(self.options.drain_retry_after_s)}
            self._refuse(call, 503, "Service Unavailable", retry)
            return
        if len(self.calls) >= self.endpoint.max_calls:
            log.warning(
                "call refused: %d calls in progress (max %d)",
                len(self.calls),
                self.endpoint.max_calls,
            )
            self._refuse(call, 486, "Busy Here", {})
            return
        op = pj.CallOpParam()
        info = call.getInfo()
        try:
            headers = parse_sip_headers(pj_text(prm.rdata.wholeMsg))
        except Exception:
            headers = {}
        handle = CallHandle(
            call_id=int(prm.callId),
            sip_call_id=pj_text(info.callIdString),
            remote_uri=pj_text(info.remoteUri),
            local_uri=pj_text(info.localUri),
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

    def _make_call(self, uri: str, headers: dict[str, str], ref: str | None) -> str:
        acc = self.account
        if acc is None or self._stopping:
            raise SipError("the SIP user agent is not running")
        if not self._accepting:
            raise SipError("draining: no new calls")
        if len(self.calls) >= self.endpoint.max_calls:
            raise SipError(f"no free call slot ({len(self.calls)} calls in progress)")
        call = _AgentCall(self, acc, pj.PJSUA_INVALID_ID)
        op = pj.CallOpParam(True)
        add_sip_headers(op, headers)
        try:
            call.makeCall(uri, op)
        except pj.Error as exc:
            self.pj.dispose(call)
            raise SipError(f"cannot call {uri}: {exc.reason.strip()}") from None
        info = call.getInfo()
        handle = CallHandle(
            call_id=int(info.id),
            sip_call_id=pj_text(info.callIdString),
            remote_uri=pj_text(info.remoteUri),
            local_uri=pj_text(info.localUri),
            headers=dict(headers),
            outbound=True,
            ref=ref,
            dialed_at=time.monotonic(),
        )
        call.handle = handle
        self.calls[handle.call_id] = call
        log.info("outbound call %s to %s", handle.sip_call_id, uri)
        return handle.sip_call_id

    def _call_disconnected(self, call: _AgentCall) -> None:
        handle = call.handle
        assert handle is not None
        handle.ended_at = time.monotonic()
        handle.playout.close()  # whoever waits for it to play out stops waiting
        self.calls.pop(handle.call_id, None)
        fut, call.xfer_result = call.xfer_result, None
        if fut is not None and not fut.done():
            fut.set_result(
                (0, f"the call ended before the transfer finished ({handle.end_reason})")
            )
        other = self.calls.get(call.bridged_to) if call.bridged_to is not None else None
        if other is not None and other.handle is not None:
            # One side of a bridge hung up: end the other (never leave half a call).
            other.bridged_to = None
            self._hangup(other.handle.call_id, 200)
        log.info("call %s ended: %s", handle.sip_call_id, handle.end_reason)
        if handle.bridge_leg:
            self.events.leg_changed(handle, False)
        elif call.started or handle.outbound:
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

    def _send_dtmf(self, call: _AgentCall, digits: str, duration_ms: int) -> None:
        assert call.handle is not None
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.duration = duration_ms
        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
        try:
            call.sendDtmf(prm)
            log.info("call %s: sent DTMF %s (rfc4733)", call.handle.sip_call_id, digits)
            return
        except pj.Error as exc:
            log.debug("RFC 4733 DTMF not possible: %s", exc.reason.strip())
        prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO
        try:
            call.sendDtmf(prm)
            log.info("call %s: sent DTMF %s (info)", call.handle.sip_call_id, digits)
        except pj.Error as exc:
            log.warning(
                "call %s: sending DTMF %s failed: %s",
                call.handle.sip_call_id,
                digits,
                exc.reason.strip(),
            )

    def _drop_objects(self) -> None:
        """Delete pjsua2 objects on this thread, before libDestroy (never after it)."""
        self.guard.uninstall()
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
            if (
                handle is not None
                and handle.outbound
                and not handle.answered_at
                and now - handle.dialed_at >= self.options.ring_timeout_s
            ):
                log.info("outbound call %s: no answer, cancelling", handle.sip_call_id)
                handle.outcome = "no-answer"
                handle.end_reason = f"no answer in {self.options.ring_timeout_s:g} s"
                self._hangup(call_id, 487)
                continue
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
