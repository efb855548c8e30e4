"""Plivo audio streams (``[stream]``): the WebSocket the stream workers serve, and what the
answer_url app puts in ``<Stream>``."""

from __future__ import annotations

from pydantic import Field

from sip_config.types import DEFAULT_LISTEN_HOST, Host, Section, WsUrl

__all__ = ["StreamSettings"]


class StreamSettings(Section):
    """Stream workers and the ``<Stream>`` XML (``[stream]``, ``SIPAGENT_STREAM__*``).

    Every stream worker listens on ``listen_host:listen_port`` (the kernel spreads the
    connections over them, ``SO_REUSEPORT``). Plivo reaches them at ``url``: by default
    ``app.public_url`` with a ws(s) scheme and the path ``/stream``, which the TLS proxy in
    front sends to ``listen_port``; with neither, the address of the worker the app chose.
    """

    url: WsUrl = Field(
        default=None,
        description=(
            "Public WebSocket URL Plivo connects to (wss://bot.example.com/stream); None:"
            " app.public_url (ws/wss) + /stream, else the stream workers' own address."
        ),
    )
    listen_host: Host = Field(
        default=DEFAULT_LISTEN_HOST, description="Address the stream workers listen on."
    )
    listen_port: int = Field(
        default=8090,
        ge=0,
        le=65535,
        description=(
            "WebSocket port the stream workers share; 0: each its own free port (without"
            " stream.url and app.public_url the XML then names the worker's address)."
        ),
    )
    max_calls: int = Field(
        default=150,
        ge=1,
        le=2000,
        description=(
            "Calls one stream worker takes (scripts/bench/stream_capacity.py sizes it);"
            " the app routes no more than stream_workers x max_calls."
        ),
    )
    send_ahead_ms: int = Field(
        default=60,
        ge=20,
        le=1000,
        multiple_of=20,
        description=(
            "Agent audio sent to Plivo ahead of what it plays: more rides out network"
            " jitter, less keeps barge-in and the played-out accounting exact."
        ),
    )
    token_secret: str = Field(
        default="",
        repr=False,
        description=(
            "Key of the per-call tokens in the stream URL; empty: app.auth_token, else a"
            " random key per `sipagent serve`."
        ),
    )
    token_ttl_s: float = Field(
        default=60.0,
        ge=5,
        le=3600,
        description="A stream URL the app issued is good for connecting this long.",
    )
    start_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="A connection that has not sent Plivo's start event by then is closed.",
    )
    reconnect_grace_s: float = Field(
        default=3.0,
        ge=0,
        le=30,
        description=(
            "A stream dropped without Plivo's stop keeps its conversation this long for"
            " Plivo's reconnect (it retries twice); 0: the call ends with the connection."
        ),
    )
    checkpoint_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description=(
            "How long past the end of a turn's audio to wait for Plivo's playedStream"
            " before taking the turn as heard."
        ),
    )
