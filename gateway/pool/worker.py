"""One agent process: the pj thread for SIP and media, an asyncio loop for conversations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time

from gateway.pipeline.session import CallSession, Prompts
from gateway.pipeline.transport import CallLeg, WarmLegs
from gateway.plivo.callcontext import record_key
from gateway.policy.transfer import (
    TransferError,
    TransferOutcome,
    Transferrer,
    transfer_uri,
    uri_host,
)
from gateway.pool.conversations import (
    WorkerListener,
    activity_reporter,
    conversation_options,
    push_reply,
    render_prompts,
    start_recorder,
    turn_reporter,
)
from gateway.pool.outcomes import DialOutcome, DialStatus, PushOutcome
from gateway.providers.registry import Providers
from gateway.records.model import SipCallEnd, SipCallStart
from gateway.records.recording import CallRecorder
from gateway.sip.agent import AgentUA
from gateway.sip.calls import CallHandle, SipCall
from gateway.sip.digest import inbound_credentials
from gateway.sip.endpoint import EndpointOptions, SipError
from gateway.sip.options import AgentOptions
from gateway.sip.registration import RegistrationOptions
from sip_config import Settings

log = logging.getLogger("sipagent")


def registration_options(settings: Settings, account_index: int) -> RegistrationOptions | None:
    """The registration of worker ``account_index`` (None in direct mode)."""
    if settings.sip.mode != "register":
        return None
    reg = settings.registration
    if account_index >= len(reg.accounts):
        raise SipError(
            f"register mode: worker {account_index} has no account"
            f" (registration.accounts lists {len(reg.accounts)})"
        )
    acc = reg.accounts[account_index]
    return RegistrationOptions(
        registrar=reg.registrar,
        domain=reg.uri_domain,
        username=acc.username,
        password=acc.password,
        auth_user=acc.auth_user,
        expires_s=reg.expires_s,
        first_retry_s=reg.first_retry_s,
        max_retry_s=reg.max_retry_s,
    )


def transfer_domain(settings: Settings, remote_uri: str) -> str:
    """Where numbers are transferred (``sip:<number>@<domain>``): ``transfer.domain``, else
    the registration domain (register mode), else the host the call came from."""
    if settings.transfer.domain:
        return settings.transfer.domain
    if settings.sip.mode == "register":
        return settings.registration.uri_domain
    return uri_host(remote_uri)


class AgentWorker:
    """Starts a conversation for each answered call and ends it when the call ends."""

    def __init__(
        self,
        settings: Settings,
        providers: Providers,
        account_index: int = 0,
        listener: WorkerListener | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.options = conversation_options(settings)
        self.loop = asyncio.get_running_loop()
        self.sessions: dict[int, asyncio.Task[None]] = {}
        self.conversations: dict[str, CallSession] = {}  # by SIP Call-ID
        self.recorders: dict[int, tuple[CallRecorder, asyncio.Task[None]]] = {}
        sip = settings.sip
        registration = registration_options(settings, account_index)
        self.ua = AgentUA(
            EndpointOptions(
                host=sip.listen_host,
                port=sip.listen_port,
                public_host=sip.public_host,
                codecs=tuple(sip.codecs),
                max_calls=sip.max_calls,
                user_agent=sip.user_agent,
            ),
            AgentOptions(
                user=sip.user,
                rtp_port_start=sip.rtp_port_start,
                rtp_port_range=sip.rtp_port_range,
                rtp_timeout_s=sip.rtp_timeout_s,
                max_call_s=settings.conversation.max_call_s,
                allow_networks=tuple(sip.allow_networks),
                registration=registration,
                ring_timeout_s=settings.outbound.ring_timeout_s,
                new_calls_per_s=sip.max_new_calls_per_s,
                outbound_proxy=sip.outbound_proxy,
                media_host=sip.media_host,
                media_public_host=sip.media_public_host,
                inbound_auth=inbound_credentials(settings),
            ),
            self,
        )
        self.calls_total = 0
        self.listener = listener
        self.prompts: Prompts | None = None

    # CallEvents, called on the pj thread: hop to the loop.
    def call_started(self, handle: CallHandle) -> None:
        """Media is up."""
        self.loop.call_soon_threadsafe(self._start, handle)

    def call_ended(self, handle: CallHandle) -> None:
        """The call is gone."""
        self.loop.call_soon_threadsafe(self._end, handle)

    def leg_changed(self, handle: CallHandle, up: bool) -> None:
        """A warm transfer's call to the human took or freed a call slot (pj thread)."""
        if self.listener is not None:
            self.loop.call_soon_threadsafe(self.listener.leg_changed, handle.sip_call_id, up)

    def registration_changed(self, registered: bool, status: str) -> None:
        """Registration state changed (pj thread)."""
        # AgentUA logs the change itself; only pass it on.
        if self.listener is not None:
            self.loop.call_soon_threadsafe(self.listener.registration_changed, registered, status)

    def _start(self, handle: CallHandle) -> None:
        self.calls_total += 1
        call = SipCall(
            handle,
            hangup=lambda reason: self.ua.hangup(handle.call_id, 200, reason),
            send_dtmf=lambda keys: self.ua.send_dtmf(handle.call_id, keys),
            transfer=self._transferrer(handle),
            warm=self._warm_legs(handle),
        )
        self._start_recording(call)
        if self.listener is not None:
            self.listener.call_started(start_record(handle, time.time()))
        session = CallSession(
            call,
            stt=self.providers.stt,
            tts=self.providers.tts,
            brain=self.providers.brain,
            options=self.options,
            on_turn=turn_reporter(
                self.settings, self.listener, handle.sip_call_id, lambda: record_id(handle)
            ),
            prompts=self.prompts,
            on_activity=activity_reporter(self.listener, handle.sip_call_id),
        )
        task = self.loop.create_task(session.run(), name=f"call-{handle.call_id}")
        self.sessions[handle.call_id] = task
        self.conversations[handle.sip_call_id] = session
        task.add_done_callback(lambda t: self._finished(handle, t))

    def _rest_transfer_uuid(self, handle: CallHandle) -> str:
        """The Plivo CallUUID to transfer this call with Plivo's REST API, or "" for REFER:
        ``plivo`` always when the call has one; ``auto`` when it has one and the REST
        credentials are set (Plivo takes REFER only on Zentrunk, not on a Dial leg)."""
        method = self.settings.transfer.method
        if method == "refer":
            return ""
        call_uuid = handle.context.get("call_uuid", "")
        if not call_uuid:
            return ""
        if method == "auto" and not self.settings.plivo_transfer_ready():
            return ""  # REFER, which Plivo refuses outside Zentrunk: said once at start
        return call_uuid

    def _transferrer(self, handle: CallHandle) -> Transferrer:
        """How this call is handed to a human: Plivo's REST API on the A leg when
        `_rest_transfer_uuid` names one (a call from Plivo's Dial), else SIP REFER."""
        settings = self.settings.transfer
        call_uuid = self._rest_transfer_uuid(handle)
        if call_uuid:
            from gateway.plivo.transfer import PlivoTransfer

            return PlivoTransfer(self.settings, call_uuid).transfer
        if settings.method == "plivo":
            log.info(
                "call %s has no CallUUID (not routed by the answer_url app): transfers use REFER",
                handle.sip_call_id,
            )

        async def refer(target: str) -> TransferOutcome:
            domain = transfer_domain(self.settings, handle.remote_uri)
            uri = transfer_uri(target or settings.target or "", domain)
            code, reason = await asyncio.wrap_future(self.ua.transfer(handle.call_id, uri))
            detail = f"{code} {reason}".strip() if code else reason
            return TransferOutcome(200 <= code < 300, code, detail, target=uri)

        return refer

    def _warm_legs(self, handle: CallHandle) -> WarmLegs | None:
        """The SIP side of a warm transfer (``transfer.warm``; REFER method or no CallUUID)."""
        t = self.settings.transfer
        if not t.warm:
            return None
        if self._rest_transfer_uuid(handle):
            return None  # Plivo moves the A leg itself
        return _SipLegs(self, handle)

    def _end(self, handle: CallHandle) -> None:
        task = self.sessions.get(handle.call_id)
        if task is not None:
            task.cancel()
        if self.listener is not None:
            self.listener.call_ended(end_record(handle, time.time()))

    def _start_recording(self, call: SipCall) -> None:
        handle = call.handle
        recorder = start_recorder(self.settings, call, record_key(handle.context))
        if recorder is None:
            return
        handle.recording = str(recorder.path)
        self.recorders[handle.call_id] = (recorder, self.loop.create_task(recorder.run()))

    def _stop_recording(self, handle: CallHandle) -> None:
        entry = self.recorders.pop(handle.call_id, None)
        if entry is not None:
            recorder, task = entry
            task.cancel()
            recorder.close()

    def push(self, sip_call_id: str, payload: object) -> PushOutcome:
        """Hand a reply the bot pushed to the brain of call `sip_call_id`."""
        return push_reply(self.providers.brain, self.conversations, sip_call_id, payload)

    async def dial(self, uri: str, headers: dict[str, str], ref: str | None) -> DialOutcome:
        """Place an outbound call; answers once the INVITE is sent (with its SIP Call-ID).
        Its outcome is reported later through `call_ended` (handle.outcome)."""
        if not uri.startswith(("sip:", "sips:")):
            return DialOutcome(DialStatus.BAD_TARGET, f"not a SIP URI: {uri!r}")
        try:
            sip_call_id = await asyncio.wrap_future(self.ua.make_call(uri, headers, ref))
        except SipError as exc:
            text = str(exc)
            bad = text.startswith("cannot call")
            return DialOutcome(DialStatus.BAD_TARGET if bad else DialStatus.UNAVAILABLE, text)
        return DialOutcome(DialStatus.PLACED, sip_call_id=sip_call_id)

    def _finished(self, handle: CallHandle, task: asyncio.Task[None]) -> None:
        self._stop_recording(handle)
        self.conversations.pop(handle.sip_call_id, None)
        if self.sessions.get(handle.call_id) is task:
            del self.sessions[handle.call_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: conversation crashed: %r", handle.sip_call_id, task.exception())
            self.ua.hangup(handle.call_id, 500, "conversation error")

    async def start(self) -> None:
        """Render the failure prompts, then start SIP (raises `SipError` when it cannot
        listen)."""
        if self.prompts is None:
            self.prompts = await render_prompts(self.providers.tts, self.settings)
        await asyncio.to_thread(self.ua.start)

    async def stop(self) -> None:
        """Refuse new calls, end every conversation, hang up and stop SIP."""
        self.ua.refuse_new_calls()
        for task in list(self.sessions.values()):
            task.cancel()
        await asyncio.gather(*self.sessions.values(), return_exceptions=True)
        await asyncio.to_thread(self.ua.stop)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set or the SIP thread dies."""
        await self.start()
        print(
            f"sipagent: listening on udp {self.settings.sip.listen_host}:{self.ua.port}"
            f" as {self.ua.uri}",
            file=sys.stderr,
            flush=True,
        )
        try:
            while not stop.is_set() and self.ua.pj.alive:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            await self.stop()


class _SipLegs:
    """`WarmLegs` over the worker's `AgentUA`: call the human, bridge, hang up."""

    def __init__(self, worker: AgentWorker, caller: CallHandle) -> None:
        self.worker = worker
        self.caller = caller

    def resolve(self, target: str) -> str:
        settings = self.worker.settings
        domain = transfer_domain(settings, self.caller.remote_uri)
        return transfer_uri(target or settings.transfer.target or "", domain)

    async def dial(self, uri: str) -> CallHandle:
        try:
            return await asyncio.wrap_future(self.worker.ua.dial(uri))
        except SipError as exc:
            raise TransferError(str(exc)) from None

    async def bridge(self, human: CallLeg, reason: str) -> bool:
        ua = self.worker.ua
        return await asyncio.wrap_future(
            ua.bridge(self.caller.call_id, _dialled(human).call_id, reason)
        )

    def hangup(self, leg: CallLeg, reason: str) -> None:
        self.worker.ua.hangup(_dialled(leg).call_id, 200, reason)


def _dialled(leg: CallLeg) -> CallHandle:
    """A leg `_SipLegs.dial` placed: a SIP call's handle."""
    assert isinstance(leg, CallHandle), leg
    return leg


def record_id(handle: CallHandle) -> str | None:
    """Our id of the call in the records: the id the app gave a call it placed, else the
    CallUUID of a call the app routed (None: a SIP-only call, recorded by its Call-ID)."""
    if handle.outbound:
        return handle.ref
    return record_key(handle.context) or None


def start_record(handle: CallHandle, at: float) -> SipCallStart:
    """What the records keep of a call that starts at unix time ``at``."""
    return SipCallStart(
        sip_call_id=handle.sip_call_id,
        call_uuid=record_id(handle),
        # An outbound call's remote party is the callee.
        from_uri=handle.local_uri if handle.outbound else handle.remote_uri,
        to_uri=handle.remote_uri if handle.outbound else handle.local_uri,
        at=at,
        direction="outbound" if handle.outbound else "inbound",
        recording=handle.recording or None,
        headers=handle.context_headers() or None,
    )


def end_record(handle: CallHandle, at: float) -> SipCallEnd:
    """What the records keep of a call that ended at unix time ``at``."""
    return SipCallEnd(
        sip_call_id=handle.sip_call_id,
        call_uuid=record_id(handle),
        reason=handle.end_reason,
        at=at,
        outcome=handle.outcome or None,
    )
