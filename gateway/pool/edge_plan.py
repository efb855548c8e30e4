"""The pool's side of the Kamailio edge, from the settings and the worker plans.

`edge_plan` is what the edge's Kamailio is configured with (`gateway.edge.config` renders
it, `gateway.edge.process` runs it); `behind_edge` is what a worker behind the edge is told
in its `Start`; `edge_uri` is the agent's address at the edge (what Plivo's Dial and trunks
call).  Pure but for `edge_plan`'s run directory name and its fresh auth secret: no
sockets, no processes; called on the supervisor's event loop (`gateway.pool.supervisor`,
`gateway.pool.processes`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from gateway.edge.config import EdgePlan
from gateway.edge.process import edge_run_dir
from gateway.pool.plan import LOOPBACK_OR_ANY, WorkerPlan
from gateway.pool.protocol import BehindEdge
from gateway.sip.digest import inbound_credentials
from sip_config import Settings


def edge_plan(settings: Settings, plans: Sequence[WorkerPlan]) -> EdgePlan:
    """What the edge's Kamailio is configured with, from the settings and the pool."""
    s = settings
    e = s.edge
    extra: tuple[str, ...] = ()
    if e.listen_host not in LOOPBACK_OR_ANY:
        # Workers reach the edge, and the edge its workers, over loopback.
        extra = (f"udp:127.0.0.1:{e.listen_port}",)
    return EdgePlan(
        listen_host=e.listen_host,
        listen_port=e.listen_port,
        run_dir=edge_run_dir(),
        workers=tuple([p.address for p in plans] + list(e.workers)),
        allow_networks=tuple(s.sip.allow_networks),
        public_host=e.public_host,
        tls_port=e.tls_port if e.tls_cert else None,
        tls_cert=e.tls_cert.expanduser().absolute() if e.tls_cert else None,
        tls_key=e.tls_key.expanduser().absolute() if e.tls_key else None,
        max_message_bytes=e.max_message_bytes,
        requests_per_s_per_source=e.requests_per_s_per_source,
        new_calls_per_s=e.new_calls_per_s,
        extra_listen=extra,
        inbound_auth=inbound_credentials(s),
        auth_secret=secrets.token_hex(16),
    )


def behind_edge(settings: Settings, plan: WorkerPlan) -> BehindEdge | None:
    """What a worker behind the edge is told (None: there is no edge)."""
    edge = settings.edge
    if not edge.enabled:
        return None
    sources = ["127.0.0.1/32"]
    if edge.listen_host not in LOOPBACK_OR_ANY:
        sources.append(f"{edge.listen_host}/32")
    sip = settings.sip
    return BehindEdge(
        sip_host=plan.sip_host,
        allow_networks=tuple(sources),
        outbound_proxy=f"sip:127.0.0.1:{edge.listen_port};lr",
        # Signalling is on loopback behind the edge; media is not: callers send RTP
        # straight to the worker, on the edge's address unless told otherwise.
        media_host=sip.media_host or edge.listen_host,
        media_public_host=sip.media_public_host or edge.public_host or sip.public_host,
    )


def edge_uri(settings: Settings) -> str:
    """The SIP URI of the agent at the edge (what Plivo's Dial and trunks call)."""
    edge = settings.edge
    host = edge.public_host or edge.listen_host
    return f"sip:{settings.sip.user}@{host}:{edge.listen_port}"
