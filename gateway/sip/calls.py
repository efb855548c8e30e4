"""Call-side data shared between the pj thread and the conversation (pure Python)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.audio.ring import InboundRing, PlayoutRing

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
    answered_at: float = 0.0
    ended_at: float = 0.0
    end_reason: str = ""
    # A call the agent placed itself (the human's leg of a warm transfer); no conversation
    # of its own.
    bridge_leg: bool = False

    def context_headers(self) -> dict[str, str]:
        """The X- headers of the INVITE (Plivo's X-PH-* among them)."""
        return {k: v for k, v in self.headers.items() if k.lower().startswith("x-")}
