"""What the SIP guard decides about each request before pjsua2 sees it (pure Python).

pjsua2 opens a call's media sockets before the application hears of an INVITE, aborts the
process on some inputs (an SDP address of 254 characters or more, a select ioqueue out of
its 64 slots) and answers REGISTER and unknown methods with nothing at all. `Screen`
decides, from the raw bytes pjsip has already parsed, what the agent answers statelessly
in pjsua2's place (`Refusal`) and what may go on to pjsua2 (None). `gateway.sip.guard`
runs it on the pj thread, in a pjsip module placed before pjsua's own.
"""

from __future__ import annotations

import email.parser
import email.policy
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from gateway.sip.calls import parse_sip_headers
from gateway.sip.digest import DigestServer

# RFC 3261 and its extensions (PRACK 3262, SUBSCRIBE/NOTIFY 6665, UPDATE 3311, MESSAGE 3428,
# REFER 3515, PUBLISH 3903, INFO 6086): anything else is answered 501.
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    }
)
# What the agent takes; a 405 lists them (RFC 3261 21.4.6 requires Allow).
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY"
# Out of a dialog the agent takes calls and capability queries only.
_NOT_HERE = frozenset({"REGISTER", "PUBLISH", "MESSAGE", "SUBSCRIBE", "REFER", "NOTIFY"})
# Requests that only make sense inside a dialog (RFC 3261 12.2.2: 481 without one).
_DIALOG_ONLY = frozenset({"BYE", "INFO", "UPDATE", "PRACK"})
# Requests whose body may be an SDP offer or answer the media stack will act on.
_MAY_CARRY_SDP = frozenset({"INVITE", "ACK", "UPDATE", "PRACK"})

# Why a call got its first 401: part of every authenticated call, not worth a warning.
CHALLENGED = "challenged for credentials"

# pjsua creates one RTP/RTCP socket pair per call whatever the offer holds (measured: 16
# m=audio lines bind 2 sockets), but nothing needs more than audio plus video here.
MAX_MEDIA_LINES = 2
# pjlib's host name limit (PJ_MAX_HOSTNAME = 254 in the wheel): at or above it
# pj_sockaddr_in_set_str_addr asserts. Only IPv4 literals are taken (the wheel is built
# without IPv6, and a host name would be resolved on the pj thread).
_MAX_ADDRESS = 15


@dataclass(frozen=True)
class Refusal:
    """A stateless answer the agent sends in pjsua2's place.

    ``code`` 0 means: drop the message without an answer (an ACK cannot be answered).
    ``why`` is for the log line only; it never goes on the wire.
    """

    code: int
    reason: str
    why: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def drop(self) -> bool:
        """Whether the message is dropped unanswered."""
        return self.code == 0


@dataclass(frozen=True)
class SipRequest:
    """The parts of a request the guard decides on."""

    method: str
    headers: dict[str, str]
    body: bytes
    uri: str = ""

    @property
    def in_dialog(self) -> bool:
        """Whether the request claims a dialog (its To header has a tag)."""
        return to_tag(self.headers.get("To", "")) is not None


def parse_request(raw: bytes) -> SipRequest:
    """Split a request pjsip has parsed into method, headers and body.

    Raises ValueError when there is no request line (it is then not a request at all).
    """
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, rest = raw.partition(b"\n\n")
    text = head.decode("utf-8", "surrogateescape")
    first = text.split("\n", 1)[0].strip()
    parts = first.split(" ")
    if len(parts) != 3 or not parts[2].upper().startswith("SIP/"):
        raise ValueError(f"not a SIP request line: {first[:80]!r}")
    headers = parse_sip_headers(text)
    body = rest
    length = headers.get("Content-Length", "").split(",")[0].strip()
    if length.isdigit():
        body = rest[: int(length)]
    return SipRequest(parts[0].upper(), headers, body, parts[1])


def to_tag(value: str) -> str | None:
    """The ``tag`` parameter of a To (or From) header value, or None.

    Parameters after a URI in angle brackets, or after a bare URI, are header
    parameters; a quoted display name may hold any character.
    """
    rest = value.strip()
    if rest.startswith('"'):
        i = 1
        while i < len(rest) and rest[i] != '"':
            i += 2 if rest[i] == "\\" else 1
        rest = rest[i + 1 :]
    if "<" in rest:
        rest = rest.partition(">")[2]
    else:
        rest = rest.partition(";")[1] + rest.partition(";")[2]
    for param in rest.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "tag" and val.strip():
            return val.strip()
    return None


def sdp_parts(content_type: str, body: bytes) -> list[bytes]:
    """The SDP documents in a body: the body itself for application/sdp, each
    application/sdp part of a multipart body (RFC 5621), none for other types.

    Raises ValueError for a multipart body that cannot be read.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/sdp":
        return [body]
    if not media.startswith("multipart/"):
        return []
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + body)
    if not msg.is_multipart():
        raise ValueError("multipart body without parts")
    out: list[bytes] = []
    for part in msg.walk():
        if part.get_content_type() == "application/sdp":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                out.append(payload)
    return out


def _address_problem(kind: str, words: list[str]) -> str | None:
    """``IN IP4 <address>`` of a c= line or an a=rtcp attribute."""
    if len(words) != 3 or words[0] != "IN":
        return f"{kind} is not 'IN IP4 <address>'"
    if words[1] == "IP6":
        return f"{kind} is IPv6, which the agent does not take"
    if words[1] != "IP4":
        return f"{kind} has address type {words[1][:16]!r}"
    address = words[2]
    if len(address) > _MAX_ADDRESS:
        return f"{kind} address is {len(address)} characters long"
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return f"{kind} address {address!r} is not an IPv4 address"
    return None


def sdp_problem(sdp: bytes, max_media: int = MAX_MEDIA_LINES) -> str | None:
    """Why an SDP document must not reach pjmedia, or None when its shape is safe:
    at most `max_media` m= lines with numeric ports, and every connection address
    (c= lines, a=rtcp) an IPv4 literal."""
    try:
        text = sdp.decode("utf-8")
    except UnicodeDecodeError:
        return "SDP is not UTF-8"
    media = 0
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("m="):
            media += 1
            if media > max_media:
                return f"SDP offers more than {max_media} media lines"
            words = line[2:].split()
            port = words[1].split("/", 1)[0] if len(words) > 1 else ""
            if not port.isdigit() or int(port) > 65535:
                return f"SDP media port {port[:16]!r} is not a port"
        elif line.startswith("c="):
            problem = _address_problem("SDP connection", line[2:].split())
            if problem:
                return problem
        elif line.lower().startswith("a=rtcp:"):
            words = line[7:].split()
            if not words or not words[0].isdigit() or int(words[0]) > 65535:
                return "SDP a=rtcp port is not a port"
            if len(words) > 1:
                problem = _address_problem("SDP a=rtcp", words[1:])
                if problem:
                    return problem
    return None


class TokenBucket:
    """At most `rate` events a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def take(self, now: float) -> bool:
        """Take one token at monotonic time `now`; False when there is none."""
        if self._at is not None:
            elapsed = max(0.0, now - self._at)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


@dataclass
class ScreenState:
    """What the guard needs to know about the agent at the moment a request arrives."""

    accepting: bool = True
    calls: int = 0
    max_calls: int = 4
    drain_retry_after_s: int = 30


class Screen:
    """The guard's decisions; one per agent, used on the pj thread only."""

    def __init__(
        self,
        source_allowed: Callable[[str], bool],
        *,
        new_calls_per_s: float = 10.0,
        max_media: int = MAX_MEDIA_LINES,
        auth: DigestServer | None = None,
    ) -> None:
        self.source_allowed = source_allowed
        self.max_media = max_media
        # With credentials (sip.inbound_auth), new calls must carry a digest.
        self.auth = auth
        self.bucket = TokenBucket(new_calls_per_s, max(1.0, new_calls_per_s))

    def request(self, raw: bytes, source: str, state: ScreenState, now: float) -> Refusal | None:
        """The stateless answer to request `raw` from `source` ("ip:port"), or None to
        let pjsua2 handle it."""
        try:
            req = parse_request(raw)
        except ValueError as exc:
            return Refusal(400, "Bad Request", str(exc))
        method = req.method
        if method == "ACK":
            # Never answered; an ACK can still carry the SDP answer to our offer.
            problem = self._sdp(req)
            return Refusal(0, "", f"ACK dropped: {problem}") if problem else None
        if not self.source_allowed(source):
            return Refusal(403, "Forbidden", "source not in sip.allow_networks")
        if method not in KNOWN_METHODS:
            return Refusal(501, "Not Implemented", f"method {method[:32]} is not SIP's")
        if not req.in_dialog:
            if method in _NOT_HERE:
                return Refusal(
                    405, "Method Not Allowed", "not taken by the agent", (("Allow", ALLOW),)
                )
            if method in _DIALOG_ONLY:
                return Refusal(481, "Call/Transaction Does Not Exist", "outside any dialog")
        problem = self._sdp(req)
        if problem:
            return Refusal(488, "Not Acceptable Here", problem)
        if method == "OPTIONS" and not req.in_dialog and not state.accepting:
            # A trunk's OPTIONS ping sees the drain and can fail over before it calls.
            return Refusal(503, "Service Unavailable", "draining", _retry(state))
        if method != "INVITE" or req.in_dialog:
            return None
        if not state.accepting:
            return Refusal(503, "Service Unavailable", "draining", _retry(state))
        if state.calls >= state.max_calls:
            return Refusal(
                486, "Busy Here", f"{state.calls} calls in progress (max {state.max_calls})"
            )
        if self.auth is not None:
            refusal = self._authenticate(req, source)
            if refusal is not None:
                return refusal
        if not self.bucket.take(now):
            return Refusal(
                503,
                "Service Unavailable",
                f"more than {self.bucket.rate:g} new calls a second",
                (("Retry-After", "1"),),
            )
        return None

    def response(self, raw: bytes) -> Refusal | None:
        """A response to one of our requests: dropped when its SDP is unsafe (the
        transaction then times out as if it was lost), else None."""
        try:
            req = _response_parts(raw)
        except ValueError:
            return None
        problem = self._sdp(req)
        return Refusal(0, "", f"response dropped: {problem}") if problem else None

    def _authenticate(self, req: SipRequest, source: str) -> Refusal | None:
        """A new call without valid credentials is challenged (401), and a source that
        keeps failing is refused (403); None lets the call through."""
        assert self.auth is not None
        address = source.rpartition(":")[0] if source.count(":") == 1 else source
        verdict = self.auth.check(
            req.method, req.uri, req.headers.get("Authorization", ""), address
        )
        if verdict == "ok":
            return None
        if verdict == "locked":
            return Refusal(403, "Forbidden", "too many failed authentications")
        why = {
            "missing": CHALLENGED,
            "stale": f"{CHALLENGED} again (nonce expired or used before)",
            "wrong": "wrong credentials",
        }[verdict]
        challenge = self.auth.challenge(stale=verdict == "stale")
        return Refusal(401, "Unauthorized", why, (("WWW-Authenticate", challenge),))

    def _sdp(self, req: SipRequest) -> str | None:
        if not req.body or (req.method not in _MAY_CARRY_SDP and req.method != "RESPONSE"):
            return None
        content_type = req.headers.get("Content-Type", "")
        try:
            parts = sdp_parts(content_type, req.body)
        except (ValueError, LookupError) as exc:
            return f"unreadable multipart body ({exc})"
        for sdp in parts:
            problem = sdp_problem(sdp, self.max_media)
            if problem:
                return problem
        return None


def _retry(state: ScreenState) -> tuple[tuple[str, str], ...]:
    return (("Retry-After", str(state.drain_retry_after_s)),)


def _response_parts(raw: bytes) -> SipRequest:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no end of headers")
    text = head.decode("utf-8", "surrogateescape")
    if not text.startswith("SIP/2.0 "):
        raise ValueError("not a response")
    headers = parse_sip_headers(text)
    length = headers.get("Content-Length", "").split(",")[0].strip()
    body = rest[: int(length)] if length.isdigit() else rest
    return SipRequest("RESPONSE", headers, body)
