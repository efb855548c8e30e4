"""The worker pool of ``sipagent serve`` (``[pool]``) and the Kamailio edge in front of it
(``[edge]``)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from sip_config.errors import invalid
from sip_config.types import (
    DEFAULT_LISTEN_HOST,
    BlankIsNone,
    CommaList,
    Host,
    OptionalPath,
    Section,
)

__all__ = ["EdgeSettings", "PoolSettings"]


class PoolSettings(Section):
    """Worker processes of ``sipagent serve`` (``[pool]``, ``SIPAGENT_POOL__*``).

    Worker ``i`` listens on ``sip.listen_port + i`` and takes RTP ports from
    ``sip.rtp_port_start + i * rtp_ports_per_worker``.
    """

    workers: int = Field(
        default=0,
        ge=0,
        le=250,
        description="Worker processes (4 calls each); 0 sizes the pool to the machine.",
    )
    sip: bool = Field(default=True, description="Run SIP workers (false: stream workers only).")
    stream_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description=(
            "Stream worker processes (Plivo audio streams over WebSocket, stream.max_calls"
            " each, no pjsua2); with workers, serve runs both kinds."
        ),
    )
    rtp_ports_per_worker: int = Field(
        default=40, ge=8, le=2000, description="RTP/RTCP ports given to each worker."
    )
    drain_timeout_s: float = Field(
        default=60.0, ge=0, le=86400, description="On SIGTERM, let calls finish this long."
    )
    spare: bool = Field(
        default=True,
        description="Keep one started spare worker so a dead worker is replaced at once.",
    )
    reserve_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="A slot routed by the answer_url app is held this long for the INVITE.",
    )


class EdgeSettings(Section):
    """The Kamailio edge in front of the pool (``[edge]``, ``SIPAGENT_EDGE__*``).

    With the edge on, the pool has one public SIP address (``listen_host:listen_port``, UDP
    and TCP, and TLS on ``tls_port`` when a certificate is given); the workers listen on
    127.0.0.1 from ``worker_port`` and take calls from the edge only.
    """

    enabled: bool = Field(default=False, description="Run Kamailio in front of the workers.")
    listen_host: Host = Field(
        default=DEFAULT_LISTEN_HOST, description="The edge's SIP address (UDP, TCP, TLS)."
    )
    listen_port: int = Field(default=5060, ge=1, le=65535, description="UDP and TCP port.")
    public_host: Annotated[str | None, BlankIsNone] = Field(
        default=None, description="Address the edge advertises (behind NAT); None: the bound one."
    )
    tls_port: int = Field(default=5061, ge=1, le=65535, description="TLS port.")
    # Whether the files exist is checked at load time (sip_config.checks).
    tls_cert: OptionalPath = Field(
        default=None, description="PEM certificate (chain) for TLS; TLS is off without it."
    )
    tls_key: OptionalPath = Field(default=None, description="PEM private key of tls_cert.")
    worker_port: int = Field(
        default=5070,
        ge=1,
        le=65535,
        description="With the edge on, worker i listens on 127.0.0.1:worker_port+i.",
    )
    workers: CommaList = Field(
        default_factory=list,
        description=(
            'More SIP workers on other hosts ("host:port"), each a `sipagent serve` without'
            " an edge that takes calls only from the edge's address."
        ),
    )
    max_message_bytes: int = Field(
        default=3500,
        ge=1000,
        le=60000,
        description="Longer SIP messages are dropped (a worker reads at most 4000 bytes).",
    )
    requests_per_s_per_source: int = Field(
        default=50, ge=1, le=10000, description="Above this a source's requests are dropped."
    )
    new_calls_per_s: int = Field(
        default=40, ge=1, le=10000, description="Pool-wide new INVITEs a second; more get 503."
    )
    kamailio: str = Field(
        default="", description="Path of the kamailio binary; empty: found on PATH or /usr/sbin."
    )

    @field_validator("workers")
    @classmethod
    def _validate_workers(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            host, sep, port = item.strip().rpartition(":")
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                invalid(f"{item!r} is not IPV4-ADDRESS:PORT (e.g. 10.0.0.12:5060)")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                invalid(f"{item!r} is not IPV4-ADDRESS:PORT (e.g. 10.0.0.12:5060)")
            out.append(f"{host}:{int(port)}")
        return out

    @model_validator(mode="after")
    def _tls_pair(self) -> EdgeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            invalid("tls_cert and tls_key go together (PEM files)", show_input=False)
        return self
