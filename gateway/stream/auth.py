"""Who may open a stream: Plivo's signature on the WebSocket upgrade, or the per-call token
the answer_url app put in the stream URL (pure: no I/O).

Plivo signs the upgrade request with ``X-Plivo-Signature-V3`` and its nonce ("Signature
Validation" in https://plivo.com/docs/voice-agents/audio-streaming/concepts/
audio-streaming-guide), computed as for its HTTP callbacks (the plivo SDK's V3 algorithm
over the URL it requested). Which form of that URL it signs (``wss://``, ``https://`` or
``http://``) is not documented (docs/plivo-audio-streams.md §4.1): every form is tried.

The token does not depend on Plivo's signature at all: the app's answer (itself signed)
names the call and carries ``token = <expiry>.<HMAC-SHA256(secret, call|expiry)>``; the
worker accepts the connection if the HMAC matches, the expiry has not passed, and the
``start`` event names the same call. The secret is shared by the app and the workers of one
gateway (``stream.token_secret``, else ``app.auth_token``, else random per serve).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

__all__ = [
    "CALL_PARAM",
    "TOKEN_PARAM",
    "StreamGrant",
    "check_token",
    "mint_token",
    "new_secret",
    "query_call_token",
    "signed_url_forms",
    "stream_url_for_call",
    "verify_token",
]

CALL_PARAM: Final = "call"
TOKEN_PARAM: Final = "token"
_TOKEN = re.compile(r"^([0-9a-f]{1,12})\.([0-9a-f]{40})$")
_CALL = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def new_secret() -> str:
    """A random token secret (one `sipagent serve` without a configured one)."""
    return secrets.token_hex(32)


def _mac(secret: str, call: str, expiry: int) -> str:
    text = f"{call}|{expiry:x}".encode()
    return hmac.new(secret.encode("utf-8"), text, hashlib.sha256).hexdigest()[:40]


def mint_token(secret: str, call: str, now: float, ttl_s: float) -> str:
    """A token for ``call`` good until ``now + ttl_s`` (unix time)."""
    expiry = int(now + ttl_s)
    return f"{expiry:x}.{_mac(secret, call, expiry)}"


def verify_token(secret: str, call: str, token: str, now: float) -> bool:
    """Whether ``token`` was minted with ``secret`` for ``call`` and has not expired."""
    return check_token(secret, call, token, now) == "ok"


def check_token(secret: str, call: str, token: str, now: float) -> str:
    """``ok``; ``expired`` (minted for ``call`` with ``secret``, but its time is up: good
    only to resume that call's dropped stream); or ``bad``."""
    if not secret or not _CALL.match(call):
        return "bad"
    m = _TOKEN.match(token)
    if m is None:
        return "bad"
    expiry = int(m.group(1), 16)
    if not hmac.compare_digest(m.group(2), _mac(secret, call, expiry)):
        return "bad"
    return "ok" if now <= expiry else "expired"


def stream_url_for_call(base: str, secret: str, call: str, now: float, ttl_s: float) -> str:
    """``base`` with the call and its token in the query (what the app puts in XML)."""
    parts = urlsplit(base)
    query = parse_qs(parts.query, keep_blank_values=True)
    query[CALL_PARAM] = [call]
    query[TOKEN_PARAM] = [mint_token(secret, call, now, ttl_s)]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


@dataclass(frozen=True)
class StreamGrant:
    """Why a connection was let in: ``"signature"``, ``"token"`` (then ``call`` is the only
    call it may stream) or ``"resume"`` (an expired token of ``call``: it may only take
    over that call's dropped stream)."""

    how: str
    call: str = ""


def query_call_token(query: str) -> tuple[str, str]:
    """(call, token) from a request's query string ("" when absent or repeated)."""
    params: Mapping[str, list[str]] = parse_qs(query, keep_blank_values=True)
    calls, tokens = params.get(CALL_PARAM, []), params.get(TOKEN_PARAM, [])
    call = calls[0] if len(calls) == 1 else ""
    token = tokens[0] if len(tokens) == 1 else ""
    return call, token


def signed_url_forms(public_base: str, host: str, path_query: str) -> list[str]:
    """The URLs Plivo may have signed for a request to ``path_query`` (path and query):
    under the configured public URL's host (else the request's ``Host``), with each of the
    schemes ``wss``/``https``/``ws``/``http``."""
    parts = urlsplit(public_base) if public_base else None
    netloc = parts.netloc if parts and parts.netloc else host
    out = []
    for scheme in ("wss", "https", "ws", "http"):
        out.append(f"{scheme}://{netloc}{path_query}")
    return out
