"""Helpers of the POST /calls tests: the app with a fake dialler, and signed-in requests."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskClient

from gateway.policy.outbound import CpsLimiter
from gateway.pool.outcomes import DialOutcome, DialStatus
from gateway.records.store import CallRecords
from sip_config import Settings
from tests.helpers.app import FakeClock, make_pool
from xml_app import create_app
from xml_app.calls_api import CallsApi

KEY = "outbound-test-key"
PLACED = DialOutcome(DialStatus.PLACED, sip_call_id="sip-call-id-1")


class FakeDial:
    """Stands in for the supervisor's dial: records requests, answers a set result."""

    def __init__(self, result: DialOutcome = PLACED) -> None:
        self.result = result
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, call_id: str, uri: str, headers: dict[str, str]) -> DialOutcome:
        self.requests.append((call_id, uri, headers))
        return self.result


def client_for(
    settings: Settings,
    records: CallRecords,
    dial: FakeDial | None,
    limiter: CpsLimiter | None = None,
) -> FlaskClient:
    clock = FakeClock()

    def calls_api(s: Settings, base_url: Any) -> CallsApi:
        return CallsApi(s, records, dial, base_url, clock=clock, limiter=limiter)

    app = create_app(settings, make_pool(clock), records, clock=clock, calls_api=calls_api)
    return app.test_client()


def post(
    client: FlaskClient, body: Any, key: str | None = KEY, path: str = "/calls"
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    resp = client.post(path, data=json.dumps(body), headers=headers)
    return resp.status_code, resp.get_json()
