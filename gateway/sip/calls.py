"""Call-side data shared between the pj thread and the conversation (pure Python), and
`SipCall`, a SIP call as the conversation's transport (`gateway.pipeline.transport`)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from gateway.audio.ring import InboundRing, PlayoutRing
from gateway.pipeline.transport import KeyQueue, WarmLegs
from gateway.plivo.callcontext import decode_call_context
from gateway.policy.transfer import Transferrer
from gateway.providers.base import CallContext

_HEADER = re.compile(r"^([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*:\s*(.*)$")
_COMPACT = {
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
}
# Names whose standard spelling is not plain Capitalised-Words.
_SPECIAL = {
    n.lower(): n
    for n in ("Call-ID", "CSeq", "WWW-Authenticate", "MIME-Version", "RAck", "RSeq", "SIP-ETag")
}


def pj_text(value: object) -> str:
    """Text from pjsua2 that came off the network, as valid Unicode.

    SWIG hands C strings to Python decoded as UTF-8 with ``surrogateescape``, so bytes that
    are not UTF-8 (a Latin-1 display name in From) become lone surrogates, which no
    database driver or JSON encoder takes. They are replaced with U+FFFD here, once.
    """
    text = str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _canonical(name: str) -> str:
    name = _COMPACT.get(name.lower(), name)
    special = _SPECIAL.get(name.lower())
    if special is not None:
        return special
    canon = "-".join(part.capitalize() for part in name.split("-"))
    if canon.startswith("X-Ph-"):
        canon = "X-PH-" + canon[5:]
    return canon


def parse_sip_headers(message: str) -> dict[str, str]:
    """Headers of a SIP message, names in their canonical case, folded lines joined.

    Only the head is read (up to the first empty line); repeated headers are joined with
    ", " as RFC 3261 allows for list headers. Malformed lines are skipped, never raised on.
    """
    headers: dict[str, str] = {}
    lines = message.replace("\r\n", "\n").split("\n")
    last: str | None = None
    for line in lines[1:]:
        if not line.strip():
            break
        if line[0] in " \t" and last is not None:
            headers[last] += " " + line.strip()
            continue
        m = _HEADER.match(line)
        if not m:
            last = None  # its continuation lines belong to nothing either
            continue
        canon = _canonical(m.group(1))
        value = m.group(2).strip()
        headers[canon] = f"{headers[canon]}, {value}" if canon in headers else value
        last = canon
    return headers


@dataclass
class CallHandle:
    """One call as the conversation sees it: ids, context and the two audio rings."""

    call_id: int
    sip_call_id: str
    remote_uri: str
    local_uri: str
    headers: dict[str, str] = field(default_factory=dict)
    inbound: InboundRing = field(default_factory=InboundRing)
    playout: PlayoutRing = field(default_factory=PlayoutRing)
    keys: KeyQueue = field(default_factory=KeyQueue)
    answered_at: float = 0.0
    ended_at: float = 0.0
    end_reason: str = ""
    recording: str = ""  # path of the call's recording, when it is recorded
    # Outbound calls (placed by the agent): the caller's id for the call, when the INVITE
    # went out, and how it ended: answered | busy | no-answer | failed.
    outbound: bool = False
    ref: str | None = None
    dialed_at: float = 0.0
    outcome: str = ""
    # A call the agent placed itself (the human's leg of a warm transfer); no conversation
    # of its own.
    bridge_leg: bool = False
    # The caller put the call on hold (a re-INVITE with sendonly or inactive): the agent's
    # audio is paused, not lost, and what it receives (music on hold) is not listened to.
    # Written on the pj thread, read anywhere.
    on_hold: bool = False
    codec: str = ""  # the audio codec in use, e.g. "PCMA/8000"
    # Who waits in `settled` (each on its loop), and the lock they share with the pj thread.
    _settlers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    _settlers_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def mark_answered(self, at: float) -> None:
        """The call was answered at `at` (pj thread): whoever waits in `settled` wakes."""
        self.answered_at = at
        self._wake_settlers()

    def mark_ended(self, at: float) -> None:
        """The call ended at `at` (pj thread): whoever waits in `settled` wakes."""
        self.ended_at = at
        self._wake_settlers()

    def _wake_settlers(self) -> None:
        with self._settlers_lock:
            settlers = list(self._settlers)
        for loop, event in settlers:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(event.set)

    async def settled(self) -> None:
        """Return once the call was answered or ended (woken by the pj thread's change)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._settlers_lock:
            self._settlers.append(entry)
        try:
            # Registered before the test: a change from now on wakes us.
            while not self.answered_at and not self.ended_at:
                entry[1].clear()
                await entry[1].wait()
        finally:
            with self._settlers_lock:
                self._settlers.remove(entry)

    @cached_property
    def context(self) -> Mapping[str, str]:
        """The call context the app put on the INVITE (`gateway.plivo.callcontext`: Plivo's
        CallUUID, the numbers, our record id, the caller's headers), decoded once, here;
        read-only. The headers are set when the handle is made and never change."""
        return MappingProxyType(decode_call_context(self.headers))

    def context_headers(self) -> dict[str, str]:
        """The X- headers of the INVITE (Plivo's X-PH-* among them)."""
        return {k: v for k, v in self.headers.items() if k.lower().startswith("x-")}


@dataclass
class OutboundCall:
    """State of a call the test softphone placed, readable from any thread: what
    `gateway.devtools.softphone.Softphone` reads, filled in by its dialer (SIP's
    `gateway.sip.dialer.Dialer` on the pj thread, or a Plivo stream's peer)."""

    uri: str
    inbound: InboundRing = field(default_factory=lambda: InboundRing(capacity=3000))
    playout: PlayoutRing = field(default_factory=lambda: PlayoutRing(capacity=1 << 30))
    media_up: threading.Event = field(default_factory=threading.Event)
    confirmed: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    confirmed_at: float = 0.0
    ended_at: float = 0.0
    status_code: int = 0
    reason: str = ""
    hung_up_locally: bool = False
    # Keys the far end sent: (key, "rfc4733" | "info", CLOCK_MONOTONIC seconds); appended
    # on the pj thread, read anywhere.
    dtmf_received: list[tuple[str, str, float]] = field(default_factory=list)
    # The audio codec after each offer/answer ("PCMU/8000", ...), in order.
    codecs: list[str] = field(default_factory=list)
    # The Session-Expires header of each 2xx the far end sent to our INVITEs and UPDATEs
    # ("" when it had none), in order.
    session_expires: list[str] = field(default_factory=list)


class SipCall:
    """A SIP call as the conversation's `CallTransport`: the handle's rings, keys and
    context, and the UA's hang-up and DTMF (as callables: this module stays free of
    pjsua2). `transfer` hands the caller over with REFER or Plivo's REST API, as the
    worker chose; `warm` calls the human first (None: cold transfers only)."""

    def __init__(
        self,
        handle: CallHandle,
        *,
        hangup: Callable[[str], None],
        send_dtmf: Callable[[str], None] | None = None,
        transfer: Transferrer | None = None,
        warm: WarmLegs | None = None,
    ) -> None:
        self.handle = handle
        self.on_hangup = hangup
        self.on_dtmf = send_dtmf
        self.cold_transfer = transfer
        self.warm_legs = warm
        self.context = sip_call_context(handle)

    @property
    def call_id(self) -> str:
        return self.handle.sip_call_id

    @property
    def inbound(self) -> InboundRing:
        return self.handle.inbound

    @property
    def playout(self) -> PlayoutRing:
        return self.handle.playout

    @property
    def keys(self) -> KeyQueue:
        return self.handle.keys

    @property
    def answered_at(self) -> float:
        return self.handle.answered_at

    @property
    def on_hold(self) -> bool:
        return self.handle.on_hold

    def hangup(self, reason: str) -> None:
        self.on_hangup(reason)

    def send_dtmf(self, keys: str) -> None:
        if self.on_dtmf is not None:
            self.on_dtmf(keys)


def sip_call_context(handle: CallHandle) -> CallContext:
    """What the brain may know about a SIP call: its URIs, X- headers and the call context
    the app put on the INVITE (an outbound call's record id is its caller's reference)."""
    plivo = dict(handle.context)
    return CallContext(
        call_id=handle.sip_call_id,
        from_uri=handle.remote_uri,
        to_uri=handle.local_uri,
        headers=handle.context_headers(),
        call_uuid=plivo.pop("call_uuid", ""),
        from_number=plivo.pop("from", ""),
        to_number=plivo.pop("to", ""),
        plivo=plivo,
        record_id=(handle.ref if handle.outbound else None) or plivo.get("record_id", ""),
    )


def outbound_outcome(answered: bool, status_code: int) -> str:
    """How an outbound call ended: ``answered`` once it was answered, else by the final
    SIP status: ``busy`` (486, 600, 603), ``no-answer`` (408, 480, 487: the ring timeout's
    CANCEL), else ``failed``."""
    if answered:
        return "answered"
    if status_code in (486, 600, 603):
        return "busy"
    if status_code in (408, 480, 487):
        return "no-answer"
    return "failed"
