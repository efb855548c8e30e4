"""A raw SIP-over-UDP client for hostile-input tests: it writes requests byte by byte, from
any loopback source address, and reads the answers without a SIP stack of its own.

Used by the wire tests of the SIP guard and by ``scripts/sip_fuzz.py`` and
``scripts/bench/sip_flood.py``.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field

_counter = itertools.count(1)


@dataclass
class Response:
    """A SIP response as received: status line and headers (names lower-cased)."""

    code: int
    reason: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_response(data: bytes) -> Response | None:
    """Parse a datagram as a SIP response; None when it is not one."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "SIP/2.0" or not parts[1].isdigit():
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, data)


def sdp_offer(
    *,
    host: str = "127.0.0.1",
    port: int = 40000,
    audio_lines: int = 1,
    connection: str | None = None,
    codecs: str = "0 8 101",
) -> str:
    """An SDP offer: `audio_lines` m=audio lines, the c= address `connection` (default
    `host`) verbatim, so callers can put anything there."""
    conn = host if connection is None else connection
    lines = [
        "v=0",
        f"o=- {next(_counter)} 1 IN IP4 {host}",
        "s=-",
        f"c=IN IP4 {conn}",
        "t=0 0",
    ]
    for i in range(audio_lines):
        lines += [
            f"m=audio {port + 2 * i} RTP/AVP {codecs}",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=sendrecv",
        ]
    return "\r\n".join(lines) + "\r\n"


class RawSip:
    """One UDP socket bound to `source` (any 127.0.0.0/8 address works on Linux)."""

    transport = "UDP"

    def __init__(self, source: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.host, self.port = self.sock.getsockname()

    def _recv(self, timeout: float) -> bytes | None:
        """One message within `timeout` seconds, or None."""
        self.sock.settimeout(max(0.001, timeout))
        try:
            return bytes(self.sock.recv(65535))
        except (TimeoutError, OSError):
            return None

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> RawSip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        target: tuple[str, int],
        *,
        body: str | bytes = b"",
        content_type: str | None = None,
        to_tag: str | None = None,
        call_id: str | None = None,
        from_display: bytes = b"",
        extra: str = "",
        cseq: int = 1,
        from_tag: str | None = None,
        uri: str | None = None,
    ) -> bytes:
        """A request to `target` from this socket's address, as bytes (not sent)."""
        host, port = target
        call_id = call_id or f"{uuid.uuid4().hex}@{self.host}"
        payload = body.encode() if isinstance(body, str) else body
        if payload and content_type is None:
            content_type = "application/sdp"
        to = f"<sip:agent@{host}:{port}>" + (f";tag={to_tag}" if to_tag else "")
        from_tag = from_tag or uuid.uuid4().hex[:10]
        head = (
            f"{method} {uri or f'sip:agent@{host}:{port}'} SIP/2.0\r\n"
            f"Via: SIP/2.0/{self.transport} {self.host}:{self.port}"
            f";branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
            "Max-Forwards: 70\r\n"
        ).encode()
        sender = (
            b"From: "
            + (b'"' + from_display + b'" ' if from_display else b"")
            + f"<sip:caller@{self.host}:{self.port}>;tag={from_tag}\r\n".encode()
        )
        rest = (
            f"To: {to}\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            f"Contact: <sip:caller@{self.host}:{self.port};transport={self.transport.lower()}>\r\n"
            + (f"Content-Type: {content_type}\r\n" if content_type else "")
            + extra
            + f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        return head + sender + rest + payload

    def send(self, message: bytes, target: tuple[str, int]) -> None:
        """Send one datagram."""
        self.sock.sendto(message, target)

    def receive(self, timeout: float) -> list[Response]:
        """Every response that arrives within `timeout` seconds."""
        out: list[Response] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            data = self._recv(left)
            if data is None:
                return out
            parsed = parse_response(data)
            if parsed is not None:
                out.append(parsed)

    def final(self, message: bytes, target: tuple[str, int], timeout: float = 5.0) -> Response:
        """Send `message` and return the first final (>= 200) response to its Call-ID;
        retransmits it every 0.5 s like a UAC would. AssertionError when none comes."""
        call_id = _call_id(message)
        deadline = time.monotonic() + timeout
        resend = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= resend:
                self.send(message, target)
                resend = time.monotonic() + 0.5
            data = self._recv(min(resend, deadline) - time.monotonic())
            if data is None:
                continue
            resp = parse_response(data)
            if resp is not None and resp.code >= 200 and resp.header("call-id") == call_id:
                return resp
        raise AssertionError(f"no final response to {message.split(b' ', 1)[0]!r} in {timeout} s")

    def ack(self, message: bytes, response: Response, target: tuple[str, int]) -> None:
        """ACK a non-2xx final response to INVITE `message` (same branch, To tag of the answer)."""
        text = message.decode("utf-8", "surrogateescape")
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [h for h in head[1:] if h.split(":", 1)[0].lower() in ("via", "from", "call-id")]
        to = response.header("to") or ""
        cseq = (response.header("cseq") or "1 INVITE").split()[0]
        ack = [
            head[0].replace("INVITE", "ACK", 1),
            *keep,
            f"To: {to}",
            f"CSeq: {cseq} ACK",
            "Max-Forwards: 70",
            "Content-Length: 0",
        ]
        self.send(("\r\n".join(ack) + "\r\n\r\n").encode("utf-8", "surrogateescape"), target)


class SipStream(RawSip):
    """SIP over one TCP or TLS connection to `target` (TLS: any certificate is taken)."""

    def __init__(self, target: tuple[str, int], *, tls: bool, source: str = "127.0.0.1") -> None:
        raw = socket.create_connection(target, timeout=5.0, source_address=(source, 0))
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            raw = context.wrap_socket(raw)
        self.sock = raw
        self.transport = "TLS" if tls else "TCP"
        self.host, self.port = raw.getsockname()[:2]
        self._buffer = b""

    def send(self, message: bytes, target: tuple[str, int]) -> None:
        """Write a message on the connection (`target` is where it is connected)."""
        self.sock.sendall(message)

    def _recv(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() in (b"content-length", b"l"):
                        length = int(value.strip() or b"0")
                if len(rest) >= length:
                    self._buffer = rest[length:]
                    return head + sep + rest[:length]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65535)
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            self._buffer += chunk


def _call_id(message: bytes) -> str:
    for line in message.split(b"\r\n"):
        if line.lower().startswith(b"call-id:"):
            return line.split(b":", 1)[1].strip().decode("utf-8", "replace")
    return ""


@dataclass
class Dialog:
    """A call placed with `RawSip.call`: what its in-dialog requests need."""

    call_id: str
    from_tag: str
    to_tag: str
    uri: str
    target: tuple[str, int]
    answer: Response
    cseq: int = 1
    # The route set from the answer's Record-Route (a caller uses it in reverse order).
    routes: tuple[str, ...] = ()

    def request(self, sip: RawSip, method: str, **kwargs: object) -> bytes:
        """The next in-dialog request (ACK reuses the INVITE's CSeq)."""
        if method != "ACK":
            self.cseq += 1
        route = "".join(f"Route: {r}\r\n" for r in self.routes)
        extra = route + str(kwargs.pop("extra", ""))
        return sip.request(
            method,
            self.target,
            call_id=self.call_id,
            from_tag=self.from_tag,
            to_tag=self.to_tag,
            uri=self.uri,
            cseq=self.cseq,
            extra=extra,
            **kwargs,  # type: ignore[arg-type]
        )


def dialog_of(answer: Response, target: tuple[str, int]) -> Dialog | None:
    """The dialog a 2xx to an INVITE sent from this side set up, or None when the answer
    lacks what in-dialog requests need."""
    to, sender = answer.header("to") or "", answer.header("from") or ""
    contact, call_id = answer.header("contact") or "", answer.header("call-id") or ""
    if "tag=" not in to or "tag=" not in sender or "<" not in contact or not call_id:
        return None
    to_tag = to.rsplit("tag=", 1)[1].split(";")[0].strip()
    from_tag = sender.rsplit("tag=", 1)[1].split(";")[0].strip()
    uri = contact[contact.find("<") + 1 : contact.find(">")].strip()
    number = (answer.header("cseq") or "1").split()[0]
    cseq = int(number) if number.isdigit() else 1
    return Dialog(call_id, from_tag, to_tag, uri, target, answer, cseq, route_set(answer))


def route_set(answer: Response) -> tuple[str, ...]:
    """A caller's route set from the Record-Route headers of an answer (reversed)."""
    entries: list[str] = []
    for value in answer.headers.get("record-route", []):
        entries += [part.strip() for part in value.split(",") if part.strip()]
    return tuple(reversed(entries))


def sdp_media_ports(body: bytes) -> tuple[int, int]:
    """(RTP, RTCP) ports of the first m= line of an SDP (RTCP from a=rtcp, else RTP+1)."""
    rtp = rtcp = 0
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("m=") and not rtp:
            rtp = int(line.split()[1])
        elif line.startswith("a=rtcp:") and not rtcp:
            rtcp = int(line[7:].split()[0])
    return rtp, rtcp or rtp + 1


def call(
    sip: RawSip,
    target: tuple[str, int],
    body: str | bytes,
    timeout: float = 5.0,
    from_display: bytes = b"",
    ack_body: str | bytes = b"",
) -> Dialog:
    """INVITE `target`, wait for a 2xx and ACK it (with `ack_body`: the answer to a late
    offer); AssertionError on another answer."""
    from_tag = uuid.uuid4().hex[:10]
    invite = sip.request("INVITE", target, body=body, from_tag=from_tag, from_display=from_display)
    answer = sip.final(invite, target, timeout)
    assert answer.code == 200, f"INVITE answered {answer.code} {answer.reason}"
    to = answer.header("to") or ""
    tag = to.rsplit("tag=", 1)[1].split(";")[0].strip() if "tag=" in to else ""
    contact = answer.header("contact") or ""
    uri = contact[contact.find("<") + 1 : contact.find(">")] if "<" in contact else contact
    dialog = Dialog(
        _call_id(invite), from_tag, tag, uri.strip(), target, answer, routes=route_set(answer)
    )
    sip.send(dialog.request(sip, "ACK", body=ack_body), target)
    return dialog
