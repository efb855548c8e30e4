"""The agent's SIP user agent: `AgentUA`, the facade the worker uses.

`AgentUA` owns the pj thread, the account (`gateway.sip.account`) and the table of calls
(`gateway.sip.pjcall.AgentCall`, one per call): it answers or refuses INVITEs, places
calls, hangs up, sends keys and watches calls for lost RTP and overlong duration. Its
parts: the guard in front of pjsua2 (`gateway.sip.guard` runs `gateway.sip.screen`; the
refusals are logged by `gateway.sip.refusals`), registration (`gateway.sip.registration`)
and transfers, blind and warm (`gateway.sip.transfer`).

Everything that touches pjsua2 runs on the pj thread. The conversation learns about calls
through a `CallEvents` sink (called on the pj thread; implementations hop to their own
loop) and asks for hang-ups with `AgentUA.hangup(call_id)` and blind transfers (REFER) with
`AgentUA.transfer(call_id, uri)`; the public methods may be called from any thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from typing import Any, Protocol

import pjsua2 as pj

from gateway.sip.account import AgentAccount, account_config
from gateway.sip.allowlist import parse_networks, source_allowed
from gateway.sip.calls import CallHandle, parse_sip_headers, pj_text
from gateway.sip.digest import DigestServer
from gateway.sip.endpoint import (
    BridgePortPool,
    EndpointOptions,
    PjThread,
    SipError,
    add_sip_headers,
)
from gateway.sip.guard import GuardError, SipGuard
from gateway.sip.options import AgentOptions
from gateway.sip.pjcall import AgentCall
from gateway.sip.refusals import RefusalLog
from gateway.sip.registration import Registration
from gateway.sip.screen import Refusal, Screen, ScreenState
from gateway.sip.transfer import Transfers

log = logging.getLogger(__name__)

GATEWAY_STOPPING = "gateway stopping"
"""End reason of the calls still up when the user agent stops."""


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


class AgentUA:
    """Answers calls and connects each to a media bridge port; owns the pj thread.

    In register mode (``options.registration``) the account registers
    ``sip:<username>@<domain>`` with digest credentials and keeps it registered (see
    `Registration`). Calls in progress are never dropped because of a registration failure.
    """

    def __init__(self, endpoint: EndpointOptions, options: AgentOptions, events: CallEvents):
        self.endpoint = endpoint
        self.options = options
        self.events = events
        self.pj = PjThread(endpoint, name="pj-agent")
        self.account: AgentAccount | None = None
        self.calls: dict[int, AgentCall] = {}
        self.ports = BridgePortPool()
        self.port = endpoint.port
        self.uri = f"sip:{options.user}@{endpoint.host}:{endpoint.port}"
        try:
            self._networks = parse_networks(options.allow_networks)
        except ValueError as exc:
            raise SipError(f"sip.allow_networks: {exc}") from None
        self._refusals = RefusalLog()
        self._accepting = True
        # pj thread: shutdown has begun (no new calls, no new REGISTER).
        self.stopping = False
        reg = options.registration
        self.registration = (
            Registration(reg, lambda: self.account, events.registration_changed)
            if reg is not None
            else None
        )
        if self.registration is not None:
            self.uri = self.registration.uri
        self.transfers = Transfers(self)
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
        self.pj.on_stopping(self._begin_stopping)
        self.pj.on_stopping(self._name_stopped_calls)
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
            call.send_dtmf(digits, duration_ms)

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
        """Blind-transfer a call with REFER (see `Transfers.transfer`)."""
        return self.transfers.transfer(call_id, uri)

    def dial(self, uri: str) -> concurrent.futures.Future[CallHandle]:
        """Call the human of a warm transfer (see `Transfers.dial`)."""
        return self.transfers.dial(uri)

    def bridge(self, call_a: int, call_b: int, reason: str) -> concurrent.futures.Future[bool]:
        """Connect two calls' audio directly (see `Transfers.bridge`)."""
        return self.transfers.bridge(call_a, call_b, reason)

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

    @property
    def registered(self) -> bool:
        """Whether the account is registered (register mode; a snapshot)."""
        return self.registration is not None and self.registration.registered

    @property
    def registration_status(self) -> str:
        """Why it is (not) registered, e.g. "200 OK, expires in 300 s"; "" without
        registration (a snapshot)."""
        return "" if self.registration is None else self.registration.status

    # -- CallOwner: what each AgentCall reports (pj thread) ---------------------------------
    def start_conversation(self, handle: CallHandle) -> None:
        """Media is up: hand the call to the conversation."""
        self.events.call_started(handle)

    def reconnect_bridge(self, call: AgentCall) -> None:
        """A bridged call's media was renegotiated."""
        self.transfers.reconnect_bridge(call)

    def call_disconnected(self, call: AgentCall) -> None:
        """A call is over: take it out of the table, tell the conversation, free its port."""
        handle = call.handle
        assert handle is not None
        handle.mark_ended(time.monotonic())
        handle.playout.close()  # whoever waits for it to play out stops waiting
        self.calls.pop(handle.call_id, None)
        partner = self.transfers.call_ended(call)
        if partner is not None:
            self._hangup(partner, 200)
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
        if self.registration is None:
            self.uri = f"sip:{self.options.user}@{host}:{self.port}"
        cfg = account_config(self.uri, self.options, self.endpoint, self.registration)
        acc = AgentAccount(self._incoming, self._reg_state)
        acc.create(cfg, True)
        self.account = acc
        self.pj.every(1.0, self._watch_calls)
        if self.registration is not None:
            self.registration.start(self.pj)

    def _reg_state(self, prm: Any) -> None:
        """The account's ``onRegState``: a REGISTER (or refresh, or un-REGISTER) completed."""
        if self.registration is not None:
            self.registration.on_state(prm)

    def _stop_accepting(self) -> None:
        """First thing on shutdown: INVITEs that arrive while calls are hung up get 503."""
        self._accepting = False

    def _begin_stopping(self) -> None:
        """On shutdown, before the calls are hung up: no new calls or REGISTERs, and an
        un-REGISTER if registered."""
        self.stopping = True
        if self.registration is not None:
            self.registration.stop()

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
            self._refusals.report(method, source, refusal)
        return refusal

    def _screen_response(self, raw: bytes, source: str) -> Refusal | None:
        refusal = self.screen.response(raw)
        if refusal is not None:
            self._refusals.report("response", source, refusal)
        return refusal

    def _refuse(self, call: AgentCall, code: int, reason: str, headers: dict[str, str]) -> None:
        """Refuse an incoming call after `onIncomingCall` has returned: a final answer
        from inside the callback makes pjsua2 free the INVITE's cloned rx data twice when
        the INVITE has no SDP (the process aborts in pjsip_rx_data_free_cloned)."""
        self.pj.post(lambda: self._refuse_now(call, code, reason, headers))

    def _refuse_now(self, call: AgentCall, code: int, reason: str, headers: dict[str, str]) -> None:
        op = pj.CallOpParam()
        op.statusCode = code
        op.reason = reason
        add_sip_headers(op, headers)
        try:
            call.answer(op)
        except pj.Error as exc:
            log.debug("refusing a call with %d failed: %s", code, exc.reason.strip())
        self.pj.dispose(call)

    def _incoming(self, acc: AgentAccount, prm: Any) -> None:
        call = AgentCall(self, acc, prm.callId)
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
        if acc is None or self.stopping:
            raise SipError("the SIP user agent is not running")
        if not self._accepting:
            raise SipError("draining: no new calls")
        if len(self.calls) >= self.endpoint.max_calls:
            raise SipError(f"no free call slot ({len(self.calls)} calls in progress)")
        call = AgentCall(self, acc, pj.PJSUA_INVALID_ID)
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
        self.guard.uninstall()
        for call in self.calls.values():
            call.port = None
        self.calls.clear()
        self.ports.clear()
        self.account = None

    def _name_stopped_calls(self) -> None:
        """The calls still up when SIP stops end because the gateway stops (the records'
        and the metrics' end reason), unless they had a reason already."""
        for call in self.calls.values():
            if call.handle is not None and not call.handle.end_reason:
                call.handle.end_reason = GATEWAY_STOPPING

    def _hangup_all(self) -> None:
        for call_id in list(self.calls):
            self._hangup(call_id, 503)

    def _watch_calls(self) -> None:
        """Once a second: hang up calls that rang unanswered too long, whose RTP stopped or
        that ran too long."""
        now = time.monotonic()
        options = self.options
        for call_id, call in list(self.calls.items()):
            code = call.overdue(
                now, options.ring_timeout_s, options.rtp_timeout_s, options.max_call_s
            )
            if code is not None:
                self._hangup(call_id, code)
