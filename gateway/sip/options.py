"""`AgentOptions`: the SIP settings of the agent's user agent beyond the endpoint's (the
worker builds them from the settings). Pure data, read on any thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sip.digest import DigestCredentials
from gateway.sip.registration import RegistrationOptions


@dataclass
class AgentOptions:
    """SIP settings of the agent beyond the endpoint's."""

    user: str = "agent"
    rtp_port_start: int = 20000
    rtp_port_range: int = 200
    rtp_timeout_s: float = 30.0
    max_call_s: float = 3600.0
    # INVITEs from other source addresses get 403 before any media or AI work; empty
    # allows every source.
    allow_networks: tuple[str, ...] = ()
    registration: RegistrationOptions | None = None
    # While draining, new INVITEs get 503 with this Retry-After (seconds).
    drain_retry_after_s: int = 30
    # An outbound call not answered this long is cancelled (outcome "no-answer").
    ring_timeout_s: float = 30.0
    # New INVITEs let through to pjsua per second (and at once); more get 503. Each one
    # binds two media sockets of the 64-slot select ioqueue for at least 0.5 s.
    new_calls_per_s: float = 10.0
    # The calls the agent places go through this SIP URI (the edge); None: straight out.
    outbound_proxy: str | None = None
    # RTP is bound to this address (None: the SIP address) and advertised in SDP as
    # media_public_host (None: the endpoint's public host, else the bound address).
    media_host: str | None = None
    media_public_host: str | None = None
    # New calls must carry these digest credentials (sip.inbound_auth); None: no challenge.
    inbound_auth: DigestCredentials | None = None
