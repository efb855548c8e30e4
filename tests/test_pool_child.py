"""The worker side of the pool: how a worker names its calls to the supervisor, and the
settings a worker behind the edge runs with."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gateway.callcontext import encode_sip_headers
from gateway.pool.child import _Reporter, worker_settings
from sip_config import load_settings

PLIVO_UUID = "3f2a9c1e-7b4d-4e8a-9f01-23456789abcd"
OURS = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def handle(sip_headers: str, outbound: bool = False, ref: str = "") -> Any:
    headers = {f"X-PH-{k}": v for k, v in (p.split("=", 1) for p in sip_headers.split(",") if p)}
    return SimpleNamespace(outbound=outbound, sip_call_id="c1@host", headers=headers, ref=ref)


def test_a_call_placed_through_plivo_is_reported_under_the_apps_id() -> None:
    # The worker knows Plivo's CallUUID (for transfers) but the record is the app's.
    placed = handle(encode_sip_headers(PLIVO_UUID, "+1", "+2", record_id=OURS))
    assert _Reporter._ids(placed) == {"sip_call_id": "c1@host", "call_uuid": OURS}
    inbound = handle(encode_sip_headers(PLIVO_UUID, "+1", "+2"))
    assert _Reporter._ids(inbound)["call_uuid"] == PLIVO_UUID
    assert _Reporter._ids(handle(""))["call_uuid"] is None
    assert _Reporter._ids(handle("", outbound=True, ref=OURS))["call_uuid"] == OURS


def test_a_worker_behind_the_edge_takes_media_where_it_is_told() -> None:
    settings = load_settings(None, env_file=None, overrides={"sip": {"public_host": "192.0.2.9"}})
    command = {
        "sip_port": 5071,
        "rtp_port_start": 20000,
        "rtp_port_range": 100,
        "sip_host": "127.0.0.1",
        "media_host": "10.0.0.5",
        "media_public_host": "192.0.2.9",
    }
    sip = worker_settings(settings, command).sip
    assert (sip.listen_host, sip.public_host) == ("127.0.0.1", None)
    assert (sip.media_host, sip.media_public_host) == ("10.0.0.5", "192.0.2.9")
