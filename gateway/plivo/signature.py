"""Plivo request signatures (``X-Plivo-Signature-V3`` and ``-Ma-V3``) with replay protection.

The expected signature is computed with the plivo SDK's own functions, so the URL and
parameter canonicalisation is exactly Plivo's.  Unlike the SDK's ``validate_v3_signature``
each candidate is compared in constant time, and nonces of verified requests are
remembered for ``ttl_s`` so a captured request cannot be replayed.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

from plivo.utils import signature_v3

__all__ = [
    "MAIN_SIGNATURE_HEADER",
    "MAX_NONCES",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "NonceCache",
    "SignatureVerifier",
    "Verdict",
    "expected_signature",
]

SIGNATURE_HEADER: Final = "X-Plivo-Signature-V3"
MAIN_SIGNATURE_HEADER: Final = "X-Plivo-Signature-Ma-V3"
"""Signed with the main account's token also for a subaccount's requests
(https://docs.plivo.com/docs/voice/concepts/signature-validation/): what an app that
holds only the main token checks."""
NONCE_HEADER: Final = "X-Plivo-Signature-V3-Nonce"

MAX_NONCES: Final = 100_000
"""Nonces remembered at most; past that the oldest is forgotten first."""

_MAX_NONCE_LEN: Final = 256
_MAX_CANDIDATES: Final = 16  # signatures considered in one header

log = logging.getLogger(__name__)

Verdict = Literal["ok", "unsigned", "forged", "replayed"]
"""Outcome of a check: valid; a header missing; no signature matches; nonce reused."""


def expected_signature(
    auth_token: str,
    method: str,
    url: str,
    params: Mapping[str, str | Sequence[str]],
    nonce: str,
) -> bytes:
    """The base64 signature Plivo sends for a request (computed by the plivo SDK).

    ``url`` is the full URL Plivo requested (query included, no fragment).  For ``GET``
    the parameters are in that query and ``params`` is ignored; for ``POST`` ``params`` is
    the form body (a list value for a repeated field).
    """
    if method.upper() == "GET":
        base = signature_v3.construct_get_url(url, {})
    else:
        # The SDK works on plain dicts; hand it a copy so the caller's mapping is untouched.
        base = signature_v3.construct_post_url(url, dict(params))
    digest = signature_v3.get_signature_v3(
        auth_token.encode("utf-8"), base.decode("utf-8"), nonce.encode("utf-8")
    )
    return bytes(digest)


class NonceCache:
    """Bounded, thread-safe set of nonces that expire ``ttl_s`` after being added."""

    def __init__(
        self,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.time,
        max_entries: int = MAX_NONCES,
    ) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._max = max(1, max_entries)
        self._lock = threading.Lock()
        # nonce -> expiry; insertion order is expiry order while the clock does not step back
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def add_if_new(self, nonce: str) -> bool:
        """Remember ``nonce``; False if it was already remembered and has not expired."""
        with self._lock:
            now = self._clock()
            while self._expiry:
                oldest, expiry = next(iter(self._expiry.items()))
                if expiry > now:
                    break
                del self._expiry[oldest]
            known = self._expiry.get(nonce)
            if known is not None and known > now:
                return False
            self._expiry.pop(nonce, None)
            while len(self._expiry) >= self._max:
                self._expiry.popitem(last=False)
            self._expiry[nonce] = now + self._ttl
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)


class SignatureVerifier:
    """Checks Plivo's V3 signature headers against one auth token."""

    def __init__(
        self,
        auth_token: str,
        *,
        nonce_ttl_s: float,
        clock: Callable[[], float] = time.time,
        main_token: str = "",
        store: Callable[[str], bool] | None = None,
    ) -> None:
        self._token = auth_token
        # The shared, durable memory of nonces (the records store): True when the nonce is
        # new there. Checked after the in-process cache, which answers most replays alone.
        self._store = store
        # X-Plivo-Signature-Ma-V3 is checked against the main account's token when it is
        # given, else against ``auth_token`` (which may be the main account's).
        self._main_token = main_token or auth_token
        self.nonces = NonceCache(nonce_ttl_s, clock=clock)

    def check(
        self,
        method: str,
        url: str | Sequence[str],
        params: Mapping[str, str | Sequence[str]],
        signature_header: str | None,
        nonce_header: str | None,
        main_signature_header: str | None = None,
    ) -> Verdict:
        """Verify one request; a verified nonce is remembered (only then).

        ``signature_header`` (``X-Plivo-Signature-V3``, the (sub)account's token) and
        ``main_signature_header`` (``X-Plivo-Signature-Ma-V3``, the main account's) may
        each hold several comma-separated signatures; one match is enough.  Without either
        (or without the nonce) the request is ``"unsigned"``.  ``url`` may be several forms
        of the URL when which one Plivo signed is not known (a stream's WebSocket upgrade);
        a signature over any of them is taken.
        """
        headers = [
            (h, t)
            for h, t in ((signature_header, self._token), (main_signature_header, self._main_token))
            if h and h.strip()
        ]
        if not headers or not nonce_header:
            return "unsigned"
        nonce = nonce_header.strip()
        if not nonce or len(nonce) > _MAX_NONCE_LEN:
            return "forged"
        urls = [url] if isinstance(url, str) else list(url)
        matched = False
        for header, token in headers:
            candidates = [c.strip() for c in header.split(",")][:_MAX_CANDIDATES]
            for form in urls:
                expected = expected_signature(token, method, form, params, nonce)
                for candidate in candidates:
                    # every candidate is compared (no early exit): timing tells nothing
                    matched |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
        if not matched:
            return "forged"
        if not self.nonces.add_if_new(nonce):
            return "replayed"
        if self._store is not None:
            try:
                if not self._store(nonce):
                    return "replayed"
            except Exception:
                # A store that cannot answer must not drop Plivo's calls: this process's
                # own cache still refuses replays sent to it.
                log.exception("signature: cannot check nonce in the records store; taken")
        return "ok"
