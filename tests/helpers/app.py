"""Helpers of the answer_url app's tests: settings, a pool, a clock, and Plivo's signed
callbacks through Flask's test client."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from plivo.utils import validate_v3_signature
from werkzeug.test import TestResponse

from gateway.plivo.signature import NONCE_HEADER, SIGNATURE_HEADER
from gateway.pool.state import PoolState
from gateway.records.store import CallRecords
from sip_config import Settings, load_settings
from tests.fakes.plivo import dial_leg
from tests.fakes.plivo_api import plivo_signature as sign_like_plivo
from xml_app import create_app

TOKEN = "MjQ5NzE2ZTg0ZWE5YjU5ZGFhMjk1ZjQ0NmIxNDE2"
BASE = "http://localhost"
CALLER = "+14155550100"
CALLED = "+14155550199"
# Monday 2025-01-06 15:00 UTC: 10:00 in New York, 00:00 (Tuesday) in Tokyo.
MONDAY_15_UTC = datetime(2025, 1, 6, 15, 0, tzinfo=UTC).timestamp()
APP_LOGGER = "xml_app.app"


class FakeClock:
    """A settable clock shared by the app and the pool."""

    def __init__(self, now: float = MONDAY_15_UTC) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_settings(**overrides: Any) -> Settings:
    """Settings with signatures on (the test token) plus ``overrides`` merged per section."""
    base: dict[str, Any] = {"app": {"auth_token": TOKEN}}
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    return load_settings(None, env_file=None, overrides=base)


def make_pool(
    clock: FakeClock,
    workers: int = 3,
    up: int | None = None,
    *,
    stream_workers: int = 0,
    stream_max_calls: int = 2,
    stream_up: int | None = None,
) -> PoolState:
    """SIP workers of 4 calls (the first ``up`` of them up, default all), then stream
    workers of ``stream_max_calls`` (the first ``stream_up`` up, default all)."""
    pool = PoolState(
        workers,
        4,
        stream_workers=stream_workers,
        stream_max_calls=stream_max_calls,
        clock=clock,
    )
    for i in range(workers if up is None else up):
        pool.worker_up(i, 1000 + i, f"sip:agent@127.0.0.1:{5070 + i}", registers=False)
    for i in range(stream_workers if stream_up is None else stream_up):
        # As a stream worker on every address reports itself (the app puts the host Plivo
        # called in its place).
        pool.worker_up(workers + i, 2000 + i, f"ws://0.0.0.0:{9100 + i}/stream", registers=False)
    return pool


def new_uuid() -> str:
    return str(uuid.uuid4())


def plivo_signature(
    method: str, url: str, params: Mapping[str, str], nonce: str, token: str
) -> str:
    """Sign as Plivo does (plivo SDK functions), cross-checked with the SDK's validator."""
    sig = sign_like_plivo(method, url, params, nonce, token)
    assert validate_v3_signature(
        method, url, nonce, token, sig, dict(params) if method == "POST" else {}
    )
    return sig


class Plivo:
    """Sends callbacks to an app through Flask's test client, signed like Plivo."""

    def __init__(self, client: FlaskClient, token: str = TOKEN, public: str = BASE) -> None:
        self.client = client
        self.token = token
        self.public = public
        self.nonces = 0

    def headers(self, method: str, path: str, params: Mapping[str, str]) -> dict[str, str]:
        self.nonces += 1
        nonce = f"nonce{self.nonces:06d}"
        sig = plivo_signature(method, self.public + path, params, nonce, self.token)
        return {SIGNATURE_HEADER: sig, NONCE_HEADER: nonce}

    def post(self, path: str, params: Mapping[str, str], **kw: Any) -> TestResponse:
        headers = kw.pop("headers", None) or self.headers("POST", path, params)
        return self.client.post(path, data=dict(params), headers=headers, **kw)

    def get(self, path: str, params: Mapping[str, str]) -> TestResponse:
        full = f"{path}?{urllib.parse.urlencode(params)}"
        return self.client.get(full, headers=self.headers("GET", full, {}))


class Env:
    """One app with its pool, records and clock."""

    def __init__(
        self,
        tmp_path: Path,
        settings: Settings,
        workers: int = 3,
        up: int | None = None,
        *,
        stream_workers: int = 0,
        stream_max_calls: int = 2,
        stream_up: int | None = None,
    ) -> None:
        """Workers as :func:`make_pool` makes them; Plivo signs over ``app.public_url``."""
        self.clock = FakeClock()
        self.pool = make_pool(
            self.clock,
            workers,
            up,
            stream_workers=stream_workers,
            stream_max_calls=stream_max_calls,
            stream_up=stream_up,
        )
        self.records = CallRecords.open(tmp_path / "records.db")
        self.app = create_app(settings, self.pool, self.records, clock=self.clock)
        self.app_settings_fallback_say = settings.routing.fallback_say
        self.plivo = Plivo(self.app.test_client(), public=settings.app.public_url or BASE)

    def answer(self, call_uuid: str | None = None, **params: str) -> TestResponse:
        body = {"CallUUID": call_uuid or new_uuid(), "From": CALLER, "To": CALLED}
        body.update({"Direction": "inbound", "CallStatus": "in-progress"})
        body.update(params)
        return self.plivo.post("/answer", body)


def parse(response: TestResponse) -> ET.Element:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/xml"
    root = ET.fromstring(response.get_data())
    assert root.tag == "Response"
    return root


def shape(root: ET.Element) -> list[str]:
    """Tags of the document: children of Response, Dial's child as 'Dial/User'."""
    out = []
    for child in root:
        out.append(f"Dial/{child[0].tag}" if child.tag == "Dial" else child.tag)
    return out


def reserved(pool: PoolState) -> int:
    return sum(w["reserved"] for w in pool.snapshot())


def sip_headers_of(root: ET.Element) -> dict[str, str]:
    """The X-PH- headers Plivo puts on the INVITE for the answer's ``<Dial><User>``
    (`tests.fakes.plivo.dial_leg`)."""
    return dial_leg(ET.tostring(root, encoding="unicode")).headers
