"""SIP digest authentication of incoming calls, as the server (pure Python, no pjsua2).

pjsip's own server-side digest (``pjsip_auth_srv``) is not reachable from pjsua2 and does
not check that a nonce was issued by us or used before, so a captured INVITE could be
replayed. This is the worker's side of RFC 3261 section 22 (digest as in RFC 2617, MD5,
``qop=auth``), used by the SIP guard (`gateway.sip.screen`) before pjsua2 sees a call:

* a nonce is ``<issued at, hex>.<random>.<HMAC of both>``: stateless to issue and to check
  (only this process's secret can make one), valid for `nonce_ttl_s` seconds, and
  accepted **once**: a second INVITE with the same nonce (a replay, or a client that
  reuses nonces) is challenged again with ``stale=true``, which a real client answers
  with the fresh nonce and a captured message cannot;
* the ``uri`` the client signed must be the request's own Request-URI, so credentials
  captured for one request do not authorise another;
* sources that fail `max_failures` times within `failure_window_s` are refused with 403
  for `lockout_s` (Plivo's own SIP authentication locks an address out the same way:
  https://plivo.com/docs/voice/concepts/sip-authentication).

Header values are parsed with werkzeug's HTTP helpers (the syntax is HTTP's, RFC 7235).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from werkzeug.http import parse_dict_header

if TYPE_CHECKING:
    from sip_config import Settings

__all__ = [
    "DigestCredentials",
    "DigestServer",
    "Verdict",
    "digest_response",
    "inbound_credentials",
]

Verdict = Literal["ok", "missing", "wrong", "stale", "locked"]
"""What `DigestServer.check` found: ``ok``; ``missing`` (no credentials for our realm);
``wrong`` (a bad user, password, uri or nonce); ``stale`` (our nonce, but expired or
already used); ``locked`` (the source failed too often lately)."""

# Another scheme's or another realm's credentials may come first in a joined header.
_SPLIT = re.compile(r",\s*(?=digest\s)", re.IGNORECASE)
_MAX_HEADER = 4096
_MAX_SOURCES = 4096  # sources whose failures are remembered (the oldest are forgotten)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def digest_response(
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The ``response`` value of RFC 2617 section 3.2.2.1 for MD5 (a client computes the
    same; tests use it to play one)."""
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


@dataclass(frozen=True)
class DigestCredentials:
    """The one user an agent takes calls from (``sip.inbound_auth``)."""

    realm: str
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"DigestCredentials(realm={self.realm!r}, username={self.username!r})"


def inbound_credentials(settings: Settings) -> DigestCredentials | None:
    """The credentials new calls must carry (``sip.inbound_auth``), or None."""
    auth = settings.sip.inbound_auth
    if not auth.enabled:
        return None
    return DigestCredentials(auth.realm, auth.username, auth.password)


class DigestServer:
    """Challenges and checks digest credentials; one per agent, pj thread only."""

    def __init__(
        self,
        credentials: DigestCredentials,
        *,
        nonce_ttl_s: float = 30.0,
        max_failures: int = 10,
        failure_window_s: float = 60.0,
        lockout_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        self.nonce_ttl_s = nonce_ttl_s
        self.max_failures = max_failures
        self.failure_window_s = failure_window_s
        self.lockout_s = lockout_s
        self.clock = clock
        self._secret = secrets.token_bytes(32)
        # Nonces already accepted, with the time each stops being valid anyway.
        self._used: dict[str, float] = {}
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked: dict[str, float] = {}

    # -- nonces ------------------------------------------------------------------------------
    def _mac(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode("ascii"), hashlib.sha256).hexdigest()[:32]

    def new_nonce(self) -> str:
        """A nonce only this server can have made, stamped with the time."""
        stamp = f"{int(self.clock()):x}.{secrets.token_hex(8)}"
        return f"{stamp}.{self._mac(stamp)}"

    def _nonce_state(self, nonce: str) -> Literal["fresh", "stale", "foreign"]:
        stamp, _, mac = nonce.rpartition(".")
        if not stamp or not hmac.compare_digest(mac.encode(), self._mac(stamp).encode()):
            return "foreign"
        try:
            issued = int(stamp.split(".", 1)[0], 16)
        except ValueError:
            return "foreign"
        age = self.clock() - issued
        if age > self.nonce_ttl_s or age < -5 or nonce in self._used:
            return "stale"
        return "fresh"

    def _use(self, nonce: str) -> None:
        now = self.clock()
        if len(self._used) > 1024:
            self._used = {n: t for n, t in self._used.items() if t > now}
        self._used[nonce] = now + self.nonce_ttl_s + 5

    # -- challenge and check -----------------------------------------------------------------
    def challenge(self, stale: bool = False) -> str:
        """A ``WWW-Authenticate`` value with a new nonce."""
        value = (
            f'Digest realm="{self.credentials.realm}", nonce="{self.new_nonce()}",'
            ' algorithm=MD5, qop="auth"'
        )
        return value + ", stale=true" if stale else value

    def check(self, method: str, request_uri: str, authorization: str, source: str) -> Verdict:
        """Whether the ``Authorization`` header value `authorization` (empty: none) of a
        `method` request to `request_uri` from address `source` holds valid credentials."""
        now = self.clock()
        until = self._locked.get(source)
        if until is not None:
            if until > now:
                return "locked"
            del self._locked[source]
        params = self._our_credentials(authorization)
        if params is None:
            return "missing"
        verdict = self._verify(method, request_uri, params)
        if verdict == "ok":
            self._use(params["nonce"])
        elif verdict == "wrong":
            self._failed(source, now)
        return verdict

    def _our_credentials(self, authorization: str) -> dict[str, str] | None:
        """The parameters of the digest credentials for our realm, or None."""
        if not authorization or len(authorization) > _MAX_HEADER:
            return None
        for part in _SPLIT.split(authorization.strip()):
            scheme, _, rest = part.strip().partition(" ")
            if scheme.lower() != "digest":
                continue
            params = {k.lower(): v for k, v in parse_dict_header(rest).items() if v is not None}
            if params.get("realm") == self.credentials.realm:
                return params
        return None

    def _verify(self, method: str, request_uri: str, p: dict[str, str]) -> Verdict:
        creds = self.credentials
        nonce, response = p.get("nonce", ""), p.get("response", "")
        if p.get("algorithm", "MD5").upper() != "MD5" or not nonce or not response:
            return "wrong"
        state = self._nonce_state(nonce)
        if state == "foreign":
            return "wrong"
        uri = p.get("uri", "")
        if uri.strip().lower() != request_uri.strip().lower():
            return "wrong"
        qop = p.get("qop")
        if qop is not None and (qop != "auth" or not p.get("nc") or not p.get("cnonce")):
            return "wrong"
        expected = digest_response(
            creds.username,
            creds.realm,
            creds.password,
            method,
            uri,
            nonce,
            qop=qop,
            nc=p.get("nc", ""),
            cnonce=p.get("cnonce", ""),
        )
        user_ok = hmac.compare_digest(p.get("username", "").encode(), creds.username.encode())
        if not (hmac.compare_digest(response.lower().encode(), expected.encode()) and user_ok):
            return "wrong"
        # Right credentials on an old or used nonce: ask again (stale), not a failure.
        return "ok" if state == "fresh" else "stale"

    def _failed(self, source: str, now: float) -> None:
        times = self._failures.pop(source, None) or deque()
        times.append(now)
        while times and times[0] < now - self.failure_window_s:
            times.popleft()
        self._failures[source] = times
        while len(self._failures) > _MAX_SOURCES:
            self._failures.popitem(last=False)
        if len(times) >= self.max_failures:
            self._locked[source] = now + self.lockout_s
            del self._failures[source]
            if len(self._locked) > _MAX_SOURCES:
                self._locked = {s: t for s, t in self._locked.items() if t > now}
