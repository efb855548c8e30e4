"""The Flask answer_url app: Plivo asks it where each call goes and tells it how calls end.

Routes (the Plivo-facing ones are signature-checked when ``app.verify_signatures``):

``/answer`` (POST or GET)
    Routes the call by its called number and opening hours: to the worker pool (a
    ``<Dial><User>`` to a worker with a free slot, carrying the call context in
    ``sipHeaders``), to the stream workers (a bidirectional ``<Stream>`` to their
    WebSocket, carrying the call context in ``extraHeaders`` and a per-call token in the
    URL), to a SIP URI, to a phone number, or to the fallback when no worker can take it.
    Routing problems never fail the request: Plivo always gets XML.
``/dial-status`` (POST)
    The Dial's ``action``: records the outcome; a failed dial to a worker frees its slot
    and, if the caller is still there, plays the fallback.
``/hangup`` (POST)
    Plivo's hangup callback: records it and frees any slot still held for the call.
``/stream-status`` (POST)
    The ``<Stream>``'s status callback (form or JSON, either of Plivo's event
    vocabularies): logged; a stream that failed or stopped frees the slot still held for
    its call.
``/transfer-xml?target=...`` (POST or GET)
    Where a call transferred through the REST API (``transfer.method = "plivo"``) goes:
    a ``<Dial>`` to the target, a number (``<Number>``) or a SIP URI (``<User>``).
``/bot/calls/<call_id>/reply`` (POST, ``Authorization: Bearer <webhook.push_token>``)
    A reply the customer's webhook bot pushes for a call in progress (``call_id``: its SIP
    Call-ID or Plivo CallUUID), in the bot reply contract
    (`gateway.providers.webhook_brain`); handed to the worker that holds the call, which
    plays it as the agent's next turn.  202 accepted, 400 malformed, 401 bad token, 404 no
    such call (or pushes are off: no token configured), 409 the agent's brain takes no
    pushed replies, 503 the worker did not answer.
``/dcs/response`` (POST, ``Authorization: Bearer <external.push_token>``)
    OCS's ``DCS_RESPONSE_URL``: the same, for the OCS integration
    (`gateway.providers.ocs_brain`), with the call named in the body: ``{"call_id": ...,
    "text": ..., "audio_url": ..., "actions": [...]}`` (``call_uuid`` instead of
    ``call_id`` works too).  Same statuses; 400 also when the body names no call.
``/calls`` (POST, ``Authorization: Bearer <outbound.api_key>``)
    Places an outbound call (by a worker's SIP INVITE or Plivo's Call API) after the
    do-not-call, calling-hours and calls-per-second checks; see `xml_app.calls_api`.
``/dcs/calls`` (POST, same key)
    OCS's ``DCS_URL``: ``/calls`` under the DCS name (same body, checks and answers); the
    answered call talks to OCS like an inbound one, known to it by the ``call_id`` this
    request answered.
``/healthz``, ``/readyz`` (GET, unsigned)
    Liveness, and readiness (503 while no worker of any kind can take a call) with the
    pool's state and its capacity per kind of worker (``sip``, ``stream``).
``/console`` (GET, behind ``app.console_token``)
    The call console: recent calls, a call's turns, latency and recording, live calls and
    the pool (`xml_app.console`).
``/metrics`` (GET, unsigned)
    The pool's Prometheus metrics in the text format (`gateway.pool.metrics`): counts,
    latencies and states, with no phone number, URI, call id or user name in them.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request

from gateway.plivo.callcontext import decode_call_context, decode_value, encode_sip_headers
from gateway.plivo.signature import (
    MAIN_SIGNATURE_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    SignatureVerifier,
)
from gateway.policy.transfer import TransferError, transfer_uri
from gateway.pool.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.pool.metrics import PoolMetrics
from gateway.pool.outcomes import PlaceCall, PushReply, PushStatus
from gateway.pool.state import PoolState
from gateway.records.store import CallRecords
from gateway.stream.auth import stream_url_for_call
from sip_config import ConfigError, Route, Settings
from xml_app import plivo_xml
from xml_app.calls_api import CallsApi
from xml_app.console import console_blueprint
from xml_app.plivo_xml import Element
from xml_app.routing import (
    MAX_CALLER_HEADERS,
    WITHHELD,
    caller_headers,
    caller_party,
    destination,
    is_open,
    number_key,
    select_route,
    target_kind,
    valid_call_uuid,
    valid_party,
)

__all__ = ["MAX_BODY_BYTES", "create_app"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 64 * 1024
"""Largest request body accepted (Plivo's callbacks are a few hundred bytes)."""

_DIAL_OK: Final = frozenset({"completed", "answer", "in-progress"})
# CallStatus values meaning the caller's leg is over (no XML will be executed).
_CALL_ENDED: Final = frozenset(
    {"completed", "busy", "failed", "timeout", "no-answer", "cancel", "canceled"}
)
_NUMBER_CHARS: Final = frozenset("+0123456789")
# Headers a worker puts on the calls it places from its endpoint for the app itself.
_OWN_HEADERS: Final = frozenset({"x-ph-callerid", "x-ph-recordid"})

View = Callable[[dict[str, str]], Response]

# The HTTP answer to each outcome of a pushed reply.
_PUSH_HTTP: Final = {
    PushStatus.ACCEPTED: 202,
    PushStatus.MALFORMED: 400,
    PushStatus.NO_CALL: 404,
    PushStatus.REFUSED: 409,
    PushStatus.UNAVAILABLE: 503,
}

MAX_STREAM_HEADERS_BYTES: Final = 512
"""Longest ``<Stream extraHeaders>`` Plivo takes (Stream XML reference,
https://docs.plivo.com/docs/voice/xml/audiostream; docs/plivo-audio-streams.md §1.3)."""

STREAM_PATH: Final = "/stream"
"""Path of the stream workers' WebSocket under ``app.public_url`` or their own address."""

# Both of Plivo's stream status vocabularies (docs/plivo-audio-streams.md §4.3): the Stream
# XML reference's Event values (https://docs.plivo.com/docs/voice/xml/audiostream) and the
# streaming guide's (https://plivo.com/docs/voice-agents/audio-streaming/concepts/
# audio-streaming-guide), matched case-insensitively, to one word each.
_STREAM_EVENTS: Final = {
    "startstream": "started",
    "started": "started",
    "stopstream": "stopped",
    "stopped": "stopped",
    "droppedstream": "failed",
    "failed": "failed",
    "degradedstream": "degraded",
    "degraded": "degraded",
}


def _xml(body: str) -> Response:
    return Response(body, status=200, mimetype="text/xml")


def _bad_request(name: str, problem: str) -> Response:
    return Response(f"{problem} parameter: {name}\n", status=400, mimetype="text/plain")


class _CallRouter:
    """The routing and callback logic behind the routes (one per app)."""

    def __init__(
        self,
        settings: Settings,
        pool: PoolState,
        records: CallRecords,
        clock: Callable[[], float],
    ) -> None:
        self.app_settings = settings.app
        self.routing = settings.routing
        self.transfer_caller_id = settings.transfer.caller_id
        self.outbound_caller_id = settings.outbound.caller_id
        # The workers (or the edge) challenge new calls: Plivo answers with these.
        auth = settings.sip.inbound_auth
        self.sip_auth = (auth.username, auth.password) if auth.enabled else None
        # Our own Plivo endpoints (register mode): a call from one of them is a call a
        # worker places through Plivo, which runs the endpoint's application (this app).
        self.own_endpoints = (
            frozenset(a.username.lower() for a in settings.registration.accounts)
            if settings.sip.mode == "register"
            else frozenset()
        )
        self.pool = pool
        self.records = records
        self.clock = clock
        self.stream_settings = settings.stream
        # The key of the per-call tokens in stream URLs, shared with the stream workers;
        # `sipagent serve` fills stream.token_secret with a random one when both are empty.
        self.stream_secret = settings.stream.token_secret or settings.app.auth_token
        # Plivo ends the stream (and, keepCallAlive with nothing after it, the call) at
        # streamTimeout: whole seconds, no sooner than the agent's own limit.
        self.stream_timeout_s = math.ceil(settings.conversation.max_call_s)

    # --- helpers ----------------------------------------------------------------------
    def base_url(self) -> str:
        """URL under which Plivo reaches this app (for the Dial action)."""
        if self.app_settings.public_url:
            return self.app_settings.public_url
        return request.host_url.rstrip("/") + request.script_root

    def action_url(self, kind: str) -> str:
        """The Dial action URL; ``target`` tells /dial-status what was dialled (and
        ``outbound_id`` which outbound call it was, when it is one)."""
        url = f"{self.base_url()}/dial-status?target={kind}"
        outbound_id = self.outbound_id()
        return f"{url}&outbound_id={outbound_id}" if outbound_id else url

    @staticmethod
    def outbound_id() -> str | None:
        """The app's own id of an outbound call placed through Plivo's Call API (``POST
        /calls`` via=plivo puts it in the answer, hangup and action URLs, which Plivo
        signs): the call's record, slot and SIP context use it instead of the CallUUID."""
        value = request.args.get("outbound_id", "")
        return value if valid_call_uuid(value) else None

    def record(self, event: str, call_uuid: str, write: Callable[[], None]) -> None:
        """Run a record write; a failing store is logged and never fails the request."""
        try:
            write()
        except Exception:
            log.exception("records: could not record %s of call %s", event, call_uuid)

    def release(self, call_uuid: str) -> None:
        """Free a reservation; never raises."""
        try:
            self.pool.release(call_uuid)
        except Exception:
            log.exception("pool: could not release the slot of call %s", call_uuid)

    def fallback_elements(self, prefix: Sequence[Element]) -> list[Element]:
        """Apology, then the fallback target or a hangup."""
        elements = list(prefix)
        if self.routing.fallback_say:
            elements.append(plivo_xml.speak(self.routing.fallback_say))
        target = self.routing.fallback_target
        if target == "hangup":
            elements.append(plivo_xml.hangup())
        else:
            elements.append(
                plivo_xml.dial(
                    target,
                    timeout=self.app_settings.dial_timeout_s,
                    action=self.action_url("fallback"),
                    caller_id=self.app_settings.caller_id,
                )
            )
        return elements

    # --- /answer ----------------------------------------------------------------------
    def decide(
        self,
        call_uuid: str,
        caller: str,
        called: str,
        now: float,
        params: Mapping[str, str] | None = None,
    ) -> tuple[str, int | None, str]:
        """Route one call: (record route, worker index or None, XML).  An outbound call
        (``outbound_id``) goes to the agent pool: its checks were made before dialling.
        ``params`` are Plivo's answer_url parameters (caller name, the caller's headers)."""
        params = params or {}
        if self.outbound_id():
            route = Route()
        elif caller == WITHHELD and self.routing.anonymous is not None:
            route = self.routing.anonymous
        else:
            route = select_route(self.routing, called)
        prefix: list[Element] = []
        after_hours = not is_open(route.hours, now)
        if after_hours:
            target = route.after_hours_target
            if route.after_hours_say:
                prefix.append(plivo_xml.speak(route.after_hours_say))
        else:
            target = route.target
        kind = target_kind(target)
        label = "after-hours" if after_hours else kind
        if kind == "hangup":
            return label, None, plivo_xml.render(*prefix, plivo_xml.hangup())
        if kind == "stream":
            return self.stream_route(label, prefix, call_uuid, caller, called, now, params)
        if kind != "agent":
            dial = plivo_xml.dial(
                target,
                timeout=self.app_settings.dial_timeout_s,
                action=self.action_url(kind),
                caller_id=self.app_settings.caller_id,
            )
            return label, None, plivo_xml.render(*prefix, dial)
        slot = self.pool.reserve(call_uuid)
        if slot is None:
            log.warning("answer: no worker can take call %s; playing the fallback", call_uuid)
            return "fallback", None, plivo_xml.render(*self.fallback_elements(prefix))
        try:
            # callerId must be a number for Plivo; a SIP-URI caller is passed in sipHeaders.
            caller_id = self.app_settings.caller_id or (
                caller if set(caller) <= _NUMBER_CHARS else None
            )
            uri = slot.uri if slot.uri.startswith(("sip:", "sips:")) else f"sip:{slot.uri}"
            dial = plivo_xml.dial(
                uri,
                timeout=self.app_settings.dial_timeout_s,
                action=self.action_url("agent"),
                caller_id=caller_id,
                sip_headers=self.context_headers(call_uuid, caller, called, params),
                user=True,
                sip_auth=self.sip_auth,
            )
            return label, slot.worker, plivo_xml.render(*prefix, dial)
        except BaseException:
            self.release(call_uuid)
            raise

    def stream_route(
        self,
        label: str,
        prefix: Sequence[Element],
        call_uuid: str,
        caller: str,
        called: str,
        now: float,
        params: Mapping[str, str],
    ) -> tuple[str, int | None, str]:
        """A call routed to the stream workers: hold a slot, answer a ``<Stream>`` to their
        WebSocket with the call's token; the fallback when none can take it."""
        if not self.stream_secret:
            log.error(
                "answer: call %s goes to a stream but there is no key for its token"
                " (stream.token_secret and app.auth_token are empty); playing the fallback",
                call_uuid,
            )
            return "fallback", None, plivo_xml.render(*self.fallback_elements(prefix))
        slot = self.pool.reserve(call_uuid, kind="stream")
        if slot is None:
            why = "is free" if "stream" in self.pool.kinds() else "runs here (pool.stream_workers)"
            log.warning(
                "answer: no stream worker %s for call %s; playing the fallback", why, call_uuid
            )
            return "fallback", None, plivo_xml.render(*self.fallback_elements(prefix))
        try:
            # The worker checks the token against the call its start event names: Plivo's
            # CallUUID (start.callId, docs/plivo-audio-streams.md §2.1).
            plivo_uuid = params.get("CallUUID", "")
            token_call = plivo_uuid if valid_call_uuid(plivo_uuid) else call_uuid
            url = stream_url_for_call(
                self.stream_base_url(slot.uri),
                self.stream_secret,
                token_call,
                now,
                self.stream_settings.token_ttl_s,
            )
            element = plivo_xml.stream(
                url,
                extra_headers=self.stream_headers(call_uuid, caller, called, params),
                status_callback_url=f"{self.base_url()}/stream-status",
                stream_timeout_s=self.stream_timeout_s,
            )
            return label, slot.worker, plivo_xml.render(*prefix, element)
        except BaseException:
            self.release(call_uuid)
            raise

    def stream_base_url(self, worker_url: str) -> str:
        """The stream workers' WebSocket URL (without the call's token): ``stream.url``,
        else ``app.public_url`` with a ws(s) scheme + ``/stream`` (the TLS proxy sends it
        to the workers), else ``worker_url``, the address of the worker the call was
        reserved on (no proxy, so no TLS), under the host Plivo called when the worker
        listens on every address."""
        configured = self.stream_settings.url or ""
        if configured:
            return _ws_scheme(configured)
        if self.app_settings.public_url:
            return _ws_scheme(self.app_settings.public_url) + STREAM_PATH
        parts = urlsplit(worker_url)
        if parts.hostname in ("0.0.0.0", "::", None):
            host = urlsplit(request.host_url).hostname or "localhost"
            if ":" in host:  # an IPv6 literal
                host = f"[{host}]"
            return f"ws://{host}:{parts.port}{parts.path or STREAM_PATH}"
        return worker_url

    def stream_headers(
        self, call_uuid: str, caller: str, called: str, params: Mapping[str, str]
    ) -> str:
        """The ``<Stream extraHeaders>``: the call context a Dial's ``sipHeaders`` carries
        (:meth:`context_headers`), cut to Plivo's 512 bytes.  The app's own keys come first
        and always fit (two hex UUIDs and two values of at most 120 characters); the
        caller's name, forwarding number and own headers that do not are left out."""
        kept, dropped = fit_pairs(
            self.context_headers(call_uuid, caller, called, params), MAX_STREAM_HEADERS_BYTES
        )
        if dropped:
            log.warning(
                "answer: call %s: %s not passed to the stream (extraHeaders holds %d bytes)",
                call_uuid,
                ", ".join(dropped),
                MAX_STREAM_HEADERS_BYTES,
            )
        return kept

    @staticmethod
    def context_headers(call_uuid: str, caller: str, called: str, params: Mapping[str, str]) -> str:
        """The Dial ``sipHeaders`` that give the worker the call's context: Plivo's
        CallUUID (what its REST API knows the call by), our own id when the call is
        recorded under another one (``call_uuid``: an outbound call placed through Plivo),
        caller, callee, the caller's name, where the call was forwarded from, and the
        caller's own ``X-PH-*`` headers (those Plivo's alphabet lets through)."""
        plivo_uuid = params.get("CallUUID", "")
        if not valid_call_uuid(plivo_uuid):
            plivo_uuid = call_uuid
        extra, dropped = caller_headers(params)
        if dropped:
            log.warning(
                "answer: call %s: caller header(s) %s not passed on (Plivo takes letters and"
                " digits only, at most %d headers)",
                call_uuid,
                ", ".join(sorted(dropped)),
                MAX_CALLER_HEADERS,
            )
        return encode_sip_headers(
            plivo_uuid,
            caller,
            called,
            record_id=call_uuid,
            caller_name=params.get("CallerName", "").strip()[:64],
            forwarded_from=params.get("ForwardedFrom", "").strip()[:64],
            extra=extra,
        )

    def from_own_endpoint(self, caller: str) -> bool:
        """Whether ``From`` is one of our registered endpoints (``sip:agent1@phone.plivo.com``
        or the bare user name)."""
        if not self.own_endpoints:
            return False
        user = caller.strip()
        if user.lower().startswith(("sip:", "sips:")):
            user = user.split(":", 1)[1].split("@", 1)[0].split(";", 1)[0]
        return user.lower() in self.own_endpoints

    def our_outbound_call(self, params: Mapping[str, str], called: str) -> str:
        """The id in the call's ``X-PH-Recordid`` when it names an outbound call we placed
        through SIP to ``called`` that has not ended, else "": proof that an endpoint's
        call is really ours (a caller can claim a From, not the id of a live call of ours)."""
        record_id = decode_call_context(
            {k: v for k, v in params.items() if k.lower() == "x-ph-recordid"}
        ).get("record_id", "")
        if not valid_call_uuid(record_id):
            return ""
        try:
            row = self.records.get(record_id)
        except Exception:
            log.exception("answer: cannot look up outbound call %s", record_id)
            return ""
        ours = (
            row is not None
            and row.get("direction") == "outbound"
            and row.get("via") == "sip"
            and row.get("end_at") is None
            and number_key(str(row.get("to_number") or "")) == number_key(called) != ""
        )
        return record_id if ours else ""

    def endpoint_call(
        self, call_uuid: str, called: str, params: Mapping[str, str], record_id: str
    ) -> Response:
        """A call a worker placed from its registered endpoint to a number: Plivo runs the
        endpoint's application (this app) for it (https://docs.plivo.com/docs/account/api/
        application/the-application-object), so the answer is a ``<Dial><Number>`` to
        the number, not a worker (that would loop). The caller ID and our id of the call
        come in the worker's ``X-PH-Callerid`` / ``X-PH-Recordid`` headers, which Plivo
        passes on as parameters (the only custom headers it forwards); ``record_id`` is
        that call's id, checked by :meth:`our_outbound_call` (so ``called`` is a number)."""
        key = number_key(called)
        wanted = decode_value(params.get("X-PH-Callerid", ""))
        caller_id = (
            wanted
            if wanted and set(wanted) <= _NUMBER_CHARS
            else self.outbound_caller_id or self.app_settings.caller_id
        )
        number = "+" + key
        action = f"{self.base_url()}/dial-status?target=number&outbound_id={record_id}"
        extra, _ = caller_headers(
            {k: v for k, v in params.items() if k.lower() not in _OWN_HEADERS}
        )
        sip_headers = ",".join(f"{k}={v}" for k, v in extra.items())
        log.info(
            "answer: call %s is our endpoint's outbound call %s to %s: dialling the number",
            call_uuid,
            record_id,
            number,
        )
        dial = plivo_xml.dial(
            number,
            timeout=self.app_settings.dial_timeout_s,
            action=action,
            caller_id=caller_id,
            sip_headers=sip_headers or None,
            user=False,
        )
        return _xml(plivo_xml.render(dial))

    def answer(self, params: dict[str, str]) -> Response:
        """``/answer``: validate, route, record, answer XML."""
        call_uuid = params.get("CallUUID", "")
        if not call_uuid:
            return _bad_request("CallUUID", "missing")
        if not valid_call_uuid(call_uuid):
            return _bad_request("CallUUID", "malformed")
        if self.from_own_endpoint(params.get("From", "")) and not self.outbound_id():
            to = destination(params.get("To", ""), params.get("SIP-H-To", ""))
            record_id = self.our_outbound_call(params, to)
            if record_id:
                return self.endpoint_call(call_uuid, to, params, record_id)
            # Anyone can write our endpoint's name in From; dialling out for them would
            # put their calls on our account. Without the id of a live call of ours it is
            # an ordinary inbound call.
            log.warning(
                "answer: call %s claims to come from our endpoint (%r) but names no outbound"
                " call of ours to %r: routed as an inbound call",
                call_uuid,
                params.get("From", "")[:80],
                to[:80],
            )
        # Route by the number the caller dialled: SIP-H-To for calls to an application's
        # SIP URI and BYOC (Plivo's pass-custom-headers page shows it beside To).
        called = destination(params.get("To", ""), params.get("SIP-H-To", ""))
        if not called:
            return _bad_request("To", "missing")
        if not valid_party(called):
            return _bad_request("To", "malformed")
        # A withheld or unreadable caller is routed and recorded as "anonymous", never
        # refused: an answer_url that fails makes Plivo drop the call.
        caller = caller_party(params.get("From", ""))
        if caller == WITHHELD and params.get("From", "").strip().lower() != WITHHELD:
            log.info(
                "answer: call %s from a withheld or unreadable number (%r): routed as %s",
                call_uuid,
                params.get("From", "")[:80],
                WITHHELD,
            )
        now = self.clock()
        plivo_uuid, outbound_id = call_uuid, self.outbound_id()
        if outbound_id:
            call_uuid = outbound_id
            self.record(
                "answer",
                call_uuid,
                lambda: self.records.outbound_answered(call_uuid, now, plivo_uuid),
            )
        try:
            label, worker, body = self.decide(call_uuid, caller, called, now, params)
        except Exception:
            log.exception("answer: routing call %s failed; playing the fallback", call_uuid)
            label, worker = "fallback", None
            body = plivo_xml.render(*self.fallback_elements(()))
        log.info("answer: call %s to %s -> %s (worker %s)", call_uuid, called, label, worker)
        self.record(
            "answer",
            call_uuid,
            lambda: self.records.answered(
                call_uuid, caller, called, params.get("Direction"), label, worker, now
            ),
        )
        return _xml(body)

    # --- /dial-status -----------------------------------------------------------------
    def dial_status(self, params: dict[str, str]) -> Response:
        """``/dial-status``: record; after a failed dial to a worker, free the slot and
        play the fallback if the caller is still on the line."""
        call_uuid = params.get("CallUUID") or params.get("DialALegUUID") or ""
        if not call_uuid:
            return _bad_request("CallUUID", "missing")
        if not valid_call_uuid(call_uuid):
            return _bad_request("CallUUID", "malformed")
        call_uuid = self.outbound_id() or call_uuid
        now = self.clock()
        self.record(
            "dial status", call_uuid, lambda: self.records.dial_status(call_uuid, params, now)
        )
        target = request.args.get("target", "")
        if target != "agent":
            return _xml(plivo_xml.render())
        # Whatever happened, the slot is no longer pending: an answered call is counted
        # by the supervisor as a call on the worker.
        self.release(call_uuid)
        status = params.get("DialStatus", "").strip().lower()
        call_status = params.get("CallStatus", "").strip().lower()
        if status in _DIAL_OK or call_status in _CALL_ENDED:
            return _xml(plivo_xml.render())
        log.warning(
            "dial-status: dial of call %s to a worker failed (%s, %s); playing the fallback",
            call_uuid,
            status or "no DialStatus",
            params.get("DialHangupCause", "no cause"),
        )
        try:
            body = plivo_xml.render(*self.fallback_elements(()))
        except Exception:
            log.exception("dial-status: cannot build the fallback for call %s", call_uuid)
            body = plivo_xml.render(plivo_xml.hangup())
        return _xml(body)

    # --- /stream-status ---------------------------------------------------------------
    def stream_status(self, params: dict[str, str]) -> Response:
        """``/stream-status``: the ``<Stream>`` status callback.  Logged; a stream that
        failed or stopped frees the slot still held for its call (none is once the stream
        worker took the call: then this changes nothing)."""
        if not params.get("CallUUID") and not request.form:
            params = {**_json_params(), **params}
        call_uuid = params.get("CallUUID", "")
        if not call_uuid:
            return _bad_request("CallUUID", "missing")
        if not valid_call_uuid(call_uuid):
            return _bad_request("CallUUID", "malformed")
        raw_event = params.get("Event", "").strip()
        event = _STREAM_EVENTS.get(raw_event.lower(), "")
        stream_id = params.get("StreamID") or params.get("StreamId") or "?"
        reason = params.get("StatusReason") or params.get("Reason") or ""
        detail = f" ({reason[:120]})" if reason else ""
        if event in ("started", "stopped"):
            log.info("stream-status: call %s stream %s %s%s", call_uuid, stream_id, event, detail)
        elif event:
            log.warning(
                "stream-status: call %s stream %s %s%s", call_uuid, stream_id, event, detail
            )
        else:
            log.warning(
                "stream-status: call %s stream %s: unknown event %r%s",
                call_uuid,
                stream_id,
                raw_event[:40],
                detail,
            )
        if event in ("failed", "stopped"):
            # A stream Plivo gave up on (after its two retries, docs/plivo-audio-streams.md
            # §4.2) never reaches a worker: its slot is not to wait out pool.reserve_s.
            self.release(call_uuid)
        return Response("ok\n", status=200, mimetype="text/plain")

    # --- /transfer-xml ----------------------------------------------------------------
    def transfer_xml(self, params: dict[str, str]) -> Response:
        """``/transfer-xml``: the transferred A leg's XML, a ``<Dial>`` to ``target``."""
        target = request.args.get("target", "").strip()
        if not target:
            return _bad_request("target", "missing")
        if target.lower().startswith(("sip:", "sips:")):
            try:
                dest = transfer_uri(target, None)
            except TransferError:
                return _bad_request("target", "malformed")
        else:
            number = "".join(c for c in target if c not in " ().-")
            if not number or set(number) - _NUMBER_CHARS or "+" in number[1:]:
                return _bad_request("target", "malformed")
            dest = number
        call_uuid = params.get("CallUUID", "")
        log.info("transfer-xml: call %s dials %s", call_uuid or "(no CallUUID)", dest)
        caller_id = self.transfer_caller_id or self.app_settings.caller_id
        dial = plivo_xml.dial(dest, timeout=self.app_settings.dial_timeout_s, caller_id=caller_id)
        return _xml(plivo_xml.render(dial))

    # --- /hangup ----------------------------------------------------------------------
    def hangup(self, params: dict[str, str]) -> Response:
        """``/hangup``: record the end of the call and free any slot still held for it."""
        call_uuid = params.get("CallUUID", "")
        if not call_uuid:
            return _bad_request("CallUUID", "missing")
        if not valid_call_uuid(call_uuid):
            return _bad_request("CallUUID", "malformed")
        now = self.clock()
        outbound_id = self.outbound_id()
        if outbound_id:
            call_uuid = outbound_id
            self.record(
                "hangup", call_uuid, lambda: self.records.outbound_hung_up(call_uuid, params, now)
            )
        self.release(call_uuid)
        self.record("hangup", call_uuid, lambda: self.records.hung_up(call_uuid, params, now))
        return _xml(plivo_xml.render())


def _json_error(status: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    return response


def _pushed_reply(
    call_id: str | None,
    token: str,
    token_setting: str,
    push: PushReply | None,
    metrics: PoolMetrics,
) -> Response:
    """A reply pushed for a call in progress: authenticate, parse, hand to the pool.

    `call_id` None: the body names the call (``call_id``, else ``call_uuid``), the way
    OCS posts to its one ``DCS_RESPONSE_URL``.  `token_setting` names the token's setting;
    a wrong token is counted in `metrics`.
    """
    if not token:
        return _json_error(404, f"pushed replies are off: {token_setting} is not set")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        log.warning(
            "rejected a pushed reply from %s: %s",
            request.remote_addr or "unknown address",
            "no bearer token" if not given else "wrong bearer token",
        )
        metrics.webhook_refused("bad_token")
        response = _json_error(401, "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="sipagent"'
        return response
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _json_error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    # Parsed whatever the Content-Type says: bots often send JSON as text/plain.
    payload = request.get_json(force=True, silent=True)
    if not isinstance(payload, dict):
        return _json_error(400, "the body is not a JSON object")
    if call_id is None:
        named = payload.pop("call_id", None) or payload.pop("call_uuid", None)
        payload.pop("call_uuid", None)
        if not isinstance(named, str) or not named.strip():
            return _json_error(400, "'call_id' (or 'call_uuid') is required: a string")
        call_id = named.strip()
    if push is None:
        return _json_error(503, "this app is not connected to a worker pool")
    outcome = push(call_id, payload)
    status = _PUSH_HTTP[outcome.status]
    if outcome.status is PushStatus.ACCEPTED:
        log.info("pushed reply for call %s accepted", call_id)
        response = jsonify(status="accepted")
        response.status_code = status
        return response
    log.warning("pushed reply for call %s refused (%d): %s", call_id, status, outcome.reason)
    return _json_error(status, outcome.reason)


def _json_params() -> dict[str, str]:
    """The scalar fields of a JSON object body as strings ({} for any other body)."""
    payload = request.get_json(force=True, silent=True)
    if not isinstance(payload, dict):
        return {}
    return {
        str(k): str(v)
        for k, v in payload.items()
        if isinstance(v, str | int | float) and not isinstance(v, bool)
    }


def _ws_scheme(url: str) -> str:
    """``url`` with http(s) turned into ws(s) (Plivo connects to streams over ws(s))."""
    scheme, sep, rest = url.partition("://")
    return {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme) + sep + rest


def fit_pairs(pairs: str, limit: int) -> tuple[str, list[str]]:
    """``key=value,key=value`` cut to ``limit`` bytes: the pairs in order, each that would
    not fit left out; returns the kept string and the keys left out."""
    kept: list[str] = []
    dropped: list[str] = []
    size = 0
    for pair in filter(None, pairs.split(",")):
        cost = len(pair.encode()) + (1 if kept else 0)
        if size + cost > limit:
            dropped.append(pair.split("=", 1)[0])
            continue
        kept.append(pair)
        size += cost
    return ",".join(kept), dropped


def _capacity(workers: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per kind of worker (``sip``, ``stream``): workers, up, calls and free slots."""
    out: dict[str, dict[str, int]] = {}
    for w in workers:
        c = out.setdefault(
            str(w["kind"]), {"workers": 0, "up": 0, "max_calls": 0, "calls": 0, "free": 0}
        )
        c["workers"] += 1
        c["up"] += 1 if w["up"] else 0
        c["max_calls"] += int(w["max_calls"])
        c["calls"] += int(w["calls"])
        c["free"] += int(w["free"])
    return out


def _request_params() -> dict[str, str]:
    """Plivo's parameters: the query string, overridden by the form body (first values)."""
    params = request.args.to_dict()
    params.update(request.form.to_dict())
    return params


def _signed_url(public_url: str | None) -> str:
    """The URL Plivo signed: the public base (when configured) + path + raw query.

    A ``#fragment`` in the configured callback URL is never sent, so never signed.
    """
    base = public_url if public_url else request.host_url.rstrip("/") + request.script_root
    query = request.query_string.decode("utf-8", "replace")
    return base + request.path + (f"?{query}" if query else "")


def create_app(
    settings: Settings,
    pool: PoolState,
    records: CallRecords,
    *,
    clock: Callable[[], float] = time.time,
    push: PushReply | None = None,
    dial: PlaceCall | None = None,
    calls_api: Callable[[Settings, Callable[[], str]], CallsApi] | None = None,
    metrics: PoolMetrics | None = None,
) -> Flask:
    """Build the answer_url app.

    Args:
        settings: gateway settings (``app``, ``routing``, ``outbound`` and the push tokens
            ``webhook.push_token`` and ``external.push_token``).
        pool: the worker pool's state; ``/answer`` reserves slots in it.
        records: where call events are recorded.
        clock: unix time source for opening hours, nonce expiry and records.
        push: hands a pushed bot reply to the worker holding the call; returns what
            became of it (answered here with an HTTP status).  None: the pool cannot take
            pushed replies (503).
        dial: places an outbound SIP call from a worker (``POST /calls`` via=sip); None:
            503.
        calls_api: builds the ``POST /calls`` handler from the settings and the app's base
            URL (tests pass a fake Plivo client or clock through it); None: the default.
        metrics: the pool's metrics, served at ``/metrics`` (the refused callbacks are
            counted in them); None: metrics of ``pool`` alone, made here.

    Raises:
        ConfigError: signatures are to be verified but ``app.auth_token`` is empty (and
            there is no push token or ``outbound.api_key`` that would make the app useful
            anyway).
    """
    app_settings = settings.app
    webhook_token = settings.webhook.push_token
    ocs_token = settings.external.push_token
    verifier: SignatureVerifier | None = None
    plivo_routes = True
    outbound_key = settings.outbound.api_key
    if app_settings.verify_signatures and not app_settings.auth_token:
        problem = (
            "app.auth_token: is empty while app.verify_signatures is true; set the Plivo"
            " auth token (SIPAGENT_APP__AUTH_TOKEN) or set app.verify_signatures = false"
        )
        if not webhook_token and not ocs_token and not outbound_key:
            raise ConfigError(problem)
        log.warning(
            "Plivo routes (/answer, /dial-status, /hangup, /stream-status) are off: %s", problem
        )
        plivo_routes = False
    elif app_settings.verify_signatures:
        verifier = SignatureVerifier(
            app_settings.auth_token,
            nonce_ttl_s=app_settings.nonce_ttl_s,
            clock=clock,
            main_token=app_settings.main_auth_token,
            store=functools.partial(records.claim_nonce, ttl_s=app_settings.nonce_ttl_s),
        )
    router = _CallRouter(settings, pool, records, clock)
    if metrics is None:
        metrics = PoolMetrics(pool, registers=settings.sip.mode == "register")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    def plivo_facing(view: View) -> Callable[[], Response]:
        """Check the signature first (a forged malformed request is 403, not 400)."""

        @functools.wraps(view)
        def checked() -> Response:
            if verifier is not None:
                form = {k: v[0] if len(v) == 1 else v for k, v in request.form.lists()}
                try:
                    verdict = verifier.check(
                        request.method,
                        _signed_url(app_settings.public_url),
                        form,
                        request.headers.get(SIGNATURE_HEADER),
                        request.headers.get(NONCE_HEADER),
                        request.headers.get(MAIN_SIGNATURE_HEADER),
                    )
                except Exception:
                    # An unverifiable request is refused, never answered with a stack trace.
                    log.exception("signature check of a request to %s failed", request.path)
                    metrics.webhook_refused("unverifiable")
                    return Response("forbidden\n", status=403, mimetype="text/plain")
                if verdict != "ok":
                    # Never log the token or the signature itself.
                    log.warning(
                        "rejected %s request to %s from %s: %s",
                        verdict,
                        request.path,
                        request.remote_addr or "unknown address",
                        {
                            "unsigned": "no Plivo signature headers",
                            "forged": "signature does not match",
                            "replayed": "nonce already used",
                        }[verdict],
                    )
                    metrics.webhook_refused(verdict)
                    return Response("forbidden\n", status=403, mimetype="text/plain")
            return view(_request_params())

        return checked

    if plivo_routes:
        app.add_url_rule("/answer", "answer", plivo_facing(router.answer), methods=["GET", "POST"])
        app.add_url_rule(
            "/dial-status", "dial_status", plivo_facing(router.dial_status), methods=["POST"]
        )
        app.add_url_rule("/hangup", "hangup", plivo_facing(router.hangup), methods=["POST"])
        app.add_url_rule(
            "/stream-status",
            "stream_status",
            plivo_facing(router.stream_status),
            methods=["POST"],
        )
        app.add_url_rule(
            "/transfer-xml",
            "transfer_xml",
            plivo_facing(router.transfer_xml),
            methods=["GET", "POST"],
        )

    @app.post("/bot/calls/<path:call_id>/reply")
    def bot_reply(call_id: str) -> Response:
        return _pushed_reply(call_id, webhook_token, "webhook.push_token", push, metrics)

    @app.post("/dcs/response")
    def dcs_response() -> Response:
        return _pushed_reply(None, ocs_token, "external.push_token", push, metrics)

    calls = (
        calls_api(settings, router.base_url)
        if calls_api is not None
        else CallsApi(settings, records, dial, router.base_url, clock=clock)
    )
    app.add_url_rule("/calls", "calls", calls.handle, methods=["POST"])
    # OCS's DCS_URL: the same outbound calls, under the DCS name.
    app.add_url_rule("/dcs/calls", "dcs_calls", calls.handle, methods=["POST"])

    app.register_blueprint(console_blueprint(settings, pool, records, clock=clock))

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Response:
        # Ready when a worker of any kind can take a call (a route's kind may lack one:
        # its calls get the fallback).
        ready = pool.ready()
        workers = pool.snapshot()
        response = jsonify(
            status="ready" if ready else "not ready",
            ready=ready,
            capacity=_capacity(workers),
            workers=workers,
        )
        response.status_code = 200 if ready else 503
        return response

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        # Unsigned, like /healthz: Prometheus scrapes it, and it holds no personal data.
        return Response(metrics.render(), mimetype=None, content_type=METRICS_CONTENT_TYPE)

    return app
