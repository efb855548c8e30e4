"""One way to build the plivo SDK's REST client, for the Call API (``POST /calls``) and
the REST transfer: optionally pointed at another base URL (a regional endpoint, a proxy
in front of Plivo, or a test's loopback fake)."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

PLIVO_API = "https://api.plivo.com/"
"""Where the SDK sends its voice API requests."""


class RedirectAdapter(HTTPAdapter):
    """A requests transport adapter that sends every request for one base URL to
    another."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__()
        self.source = source
        self.target = target.rstrip("/") + "/"

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = request.url or ""
        if url.startswith(self.source):
            request.url = self.target + url[len(self.source) :]
        return super().send(request, **kwargs)


def plivo_client(
    auth_id: str, auth_token: str, api_url: str | None = None, timeout: float = 10.0
) -> Any:
    """A plivo SDK ``RestClient``.  With ``api_url`` its HTTP session (``client.session``,
    a public ``requests.Session``) gets a transport adapter, mounted for
    https://api.plivo.com/, that sends the requests to ``api_url`` instead: the SDK picks
    its voice API base from module constants on every call, so its ``base_uri`` cannot be
    overridden."""
    import plivo

    client = plivo.RestClient(auth_id, auth_token, timeout=timeout)
    if api_url:
        client.session.mount(PLIVO_API, RedirectAdapter(PLIVO_API, api_url))
    return client
