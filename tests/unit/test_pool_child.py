"""The pool's processes in one: how a worker names its calls to the supervisor, the
settings a worker behind the edge runs with, and the supervisor's control-socket reader."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest

from gateway.plivo.callcontext import encode_sip_headers
from gateway.pool.child import worker_settings
from gateway.pool.protocol import BehindEdge, Start
from gateway.pool.supervisor import Supervisor
from gateway.pool.worker import end_record, record_id, start_record
from gateway.sip.calls import CallHandle
from sip_config import load_settings

PLIVO_UUID = "3f2a9c1e-7b4d-4e8a-9f01-23456789abcd"
OURS = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def handle(sip_headers: str, outbound: bool = False, ref: str = "") -> CallHandle:
    headers = {f"X-PH-{k}": v for k, v in (p.split("=", 1) for p in sip_headers.split(",") if p)}
    call = CallHandle(0, "c1@host", "sip:caller@host", "sip:agent@host", headers=headers)
    call.outbound, call.ref = outbound, ref or None
    return call


def test_a_call_placed_through_plivo_is_reported_under_the_apps_id() -> None:
    # The worker knows Plivo's CallUUID (for transfers) but the record is the app's.
    placed = handle(encode_sip_headers(PLIVO_UUID, "+1", "+2", record_id=OURS))
    start = start_record(placed, 1.0)
    assert (start.sip_call_id, start.call_uuid, start.direction) == ("c1@host", OURS, "inbound")
    inbound = handle(encode_sip_headers(PLIVO_UUID, "+1", "+2"))
    assert record_id(inbound) == end_record(inbound, 2.0).call_uuid == PLIVO_UUID
    assert record_id(handle("")) is None
    outbound = start_record(handle("", outbound=True, ref=OURS), 3.0)
    assert (outbound.call_uuid, outbound.direction) == (OURS, "outbound")
    # An outbound call's remote party is the callee.
    assert (outbound.from_uri, outbound.to_uri) == ("sip:agent@host", "sip:caller@host")


def test_a_worker_behind_the_edge_takes_media_where_it_is_told() -> None:
    settings = load_settings(None, env_file=None, overrides={"sip": {"public_host": "192.0.2.9"}})
    edge = BehindEdge(
        sip_host="127.0.0.1",
        allow_networks=("127.0.0.1/32",),
        outbound_proxy="sip:127.0.0.1:5060;lr",
        media_host="10.0.0.5",
        media_public_host="192.0.2.9",
    )
    sip = worker_settings(settings, Start(0, 5071, 20000, 100, edge=edge)).sip
    assert (sip.listen_host, sip.public_host, sip.listen_port) == ("127.0.0.1", None, 5071)
    assert (sip.media_host, sip.media_public_host) == ("10.0.0.5", "192.0.2.9")
    assert sip.allow_networks == ["127.0.0.1/32"]
    assert sip.outbound_proxy == "sip:127.0.0.1:5060;lr"


def test_a_worker_behind_the_edge_leaves_the_callers_credentials_to_the_edge() -> None:
    auth = {"username": "plivo", "password": "s3cret-pass-42"}
    settings = load_settings(None, env_file=None, overrides={"sip": {"inbound_auth": auth}})
    start = Start(0, 5071, 20000, 100)
    assert worker_settings(settings, start).sip.inbound_auth.enabled
    edge = BehindEdge("127.0.0.1", ("127.0.0.1/32",), "sip:127.0.0.1:5060;lr", None, None)
    behind_edge = worker_settings(settings, Start(0, 5071, 20000, 100, edge=edge)).sip
    assert not behind_edge.inbound_auth.enabled


@pytest.mark.timeout(20)
def test_a_worker_whose_socket_is_reset_ends_its_reader() -> None:
    # A worker killed before it read its commands resets the control socket (seen when a
    # group SIGTERM hit a spare that was still starting). The reader used to log the error
    # and read again, which raised at once without yielding: the supervisor's loop spun
    # forever, never drained and never stopped.
    async def scenario() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        writer.write(b'{"cmd": "config"}\n')
        await writer.drain()
        theirs.close()  # closed with the command unread: a reset for us
        sup = Supervisor(load_settings(None, env_file=None), 1)
        child = SimpleNamespace(pid=4242, reader=reader)
        await asyncio.wait_for(sup.workers.read(child), 5)  # type: ignore[arg-type]
        writer.close()

    asyncio.run(scenario())
