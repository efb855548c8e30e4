"""The SIP side of a worker: its user agent and RTP (``[sip]``), the guard in front of it
(allowed networks, new-call rate, digest credentials in ``[sip.inbound_auth]``) and
registration with a registrar (``[registration]``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from sip_config.errors import invalid
from sip_config.types import (
    DEFAULT_LISTEN_HOST,
    SIP_USER,
    BlankIsNone,
    CommaList,
    Host,
    OptionalHost,
    PlainText,
    Section,
    SipUser,
    check_host,
    list_parser,
)

__all__ = [
    "Codec",
    "InboundAuthSettings",
    "RegistrationSettings",
    "SipAccount",
    "SipMode",
    "SipSettings",
]

_MAX_CALLS_CAP: Final = 4  # the pjsua2 wheel is built with PJSUA_MAX_CALLS = 4

Codec = Literal["PCMU", "PCMA"]
"""G.711 codec names accepted in ``sip.codecs``."""

_DEFAULT_CODECS: Final[tuple[Codec, ...]] = ("PCMU", "PCMA")

SipMode = Literal["direct", "register"]
"""``direct``: take INVITEs on the workers' addresses (softphone, Dial to a SIP URI, BYOC
trunk); ``register``: each worker registers its own endpoint with a registrar."""

_DEFAULT_ALLOW: Final[tuple[str, ...]] = ("127.0.0.0/8", "::1/128")

_AUTH_PASSWORD = re.compile(r"^[!#-\[\]-~]{8,128}$")  # printable ASCII but space, '"', '\\'


class InboundAuthSettings(Section):
    """Digest credentials every new call must carry (``[sip.inbound_auth]``,
    ``SIPAGENT_SIP__INBOUND_AUTH__*``): the workers (or the edge) challenge INVITEs, and
    the app's Dial gives Plivo the credentials (``sipAuthUsername``/``sipAuthPassword``)."""

    username: str = Field(default="", description="User the callers authenticate as.")
    password: str = Field(
        default="",
        repr=False,
        description="Its password: 8-128 printable ASCII characters (Plivo's rule).",
    )
    realm: str = Field(default="sipagent", description="Realm of the challenge.")

    @property
    def enabled(self) -> bool:
        """Whether calls are challenged."""
        return bool(self.username)

    @field_validator("username")
    @classmethod
    def _validate_username(cls, value: str) -> str:
        if value and (len(value) > 64 or not SIP_USER.match(value)):
            invalid("must be at most 64 letters, digits, '-', '.' or '_'")
        return value

    @field_validator("realm")
    @classmethod
    def _validate_realm(cls, value: str) -> str:
        if len(value) > 64 or not SIP_USER.match(value):
            invalid("must be 1-64 letters, digits, '-', '.' or '_'")
        return value

    @model_validator(mode="after")
    def _both_or_neither(self) -> InboundAuthSettings:
        if bool(self.username) != bool(self.password):
            invalid("set both username and password (or neither, for no authentication)")
        if self.password and not _AUTH_PASSWORD.match(self.password):
            invalid(
                "password must be 8 to 128 printable ASCII characters without spaces,"
                " '\"' or '\\' (Plivo's sipAuthPassword takes 8-128)"
            )
        return self


_parse_codec_list = list_parser(" of codecs")


def _parse_codecs(value: object) -> object:
    """A codec list as a list or "pcma,PCMU" (names in either case)."""
    value = _parse_codec_list(value)
    if isinstance(value, list | tuple):
        return [item.strip().upper() if isinstance(item, str) else item for item in value]
    return value


class SipSettings(Section):
    """SIP user-agent settings (``[sip]`` table, ``SIPAGENT_SIP__*`` variables)."""

    listen_host: Host = Field(
        default=DEFAULT_LISTEN_HOST, description="Local address to bind the SIP transport to."
    )
    listen_port: int = Field(default=5060, ge=1, le=65535, description="Local SIP port.")
    public_host: OptionalHost = Field(
        default=None, description="Address advertised in Contact/SDP; None uses the bound one."
    )
    media_host: OptionalHost = Field(
        default=None,
        description=(
            "Local address to bind RTP to; None uses listen_host. Behind the edge the"
            " workers' SIP is on loopback and their media on this (or edge.listen_host)."
        ),
    )
    media_public_host: OptionalHost = Field(
        default=None,
        description="Address advertised in SDP for RTP; None uses public_host, then media_host.",
    )
    user: SipUser = Field(default="agent", description="SIP user part of the agent's URI.")
    codecs: Annotated[list[Codec], NoDecode, BeforeValidator(_parse_codecs)] = Field(
        default_factory=lambda: list(_DEFAULT_CODECS),
        description='Enabled codecs in priority order; also accepts "PCMA,PCMU".',
    )
    max_calls: int = Field(
        default=4, ge=1, description="Concurrent calls (at most 4: pjsua2 per-process cap)."
    )
    rtp_port_start: int = Field(default=20000, ge=1024, le=65000, description="First RTP port.")
    rtp_port_range: int = Field(
        default=200, ge=8, le=10000, description="Number of RTP ports available from the start."
    )
    rtp_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Hang up a call whose RTP stopped this long."
    )
    user_agent: PlainText = Field(
        default="",
        description=(
            "User-Agent header of the agent's requests; empty (the default) sends none, so"
            " a scanner cannot read which software answers."
        ),
    )
    outbound_proxy: Annotated[str | None, BlankIsNone] = Field(
        default=None,
        description=(
            "SIP URI the agent sends the calls it places through (e.g. sip:10.0.0.2:5060);"
            " None sends them straight to their target. The edge sets it for its workers."
        ),
    )
    max_new_calls_per_s: float = Field(
        default=10.0,
        ge=1,
        le=50,
        description=(
            "New INVITEs a worker lets through to its SIP stack per second (and at once);"
            " more get 503 with Retry-After. Each binds media sockets of a 64-slot table."
        ),
    )
    mode: SipMode = Field(
        default="direct", description="'direct' (take INVITEs) or 'register' (registrar)."
    )
    inbound_auth: InboundAuthSettings = Field(
        default_factory=InboundAuthSettings,
        description="Digest credentials new calls must carry; empty: none asked.",
    )
    allow_networks: CommaList = Field(
        default_factory=lambda: list(_DEFAULT_ALLOW),
        description=(
            "Source networks whose INVITEs are taken; others get 403. Add your trunk's or"
            " Plivo's signalling ranges. An empty list allows everyone."
        ),
    )

    @field_validator("allow_networks")
    @classmethod
    def _validate_allow(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                invalid(f"{item!r} is not an IP network (e.g. 10.0.0.0/8 or 192.0.2.7)")
        return out

    @field_validator("codecs")
    @classmethod
    def _validate_codecs(cls, value: list[Codec]) -> list[Codec]:
        if not value:
            invalid("at least one codec is required (PCMU, PCMA)")
        seen: set[str] = set()
        for codec in value:
            if codec in seen:
                invalid(f"codec {codec} is listed twice")
            seen.add(codec)
        return value

    @field_validator("max_calls")
    @classmethod
    def _validate_max_calls(cls, value: int) -> int:
        if value > _MAX_CALLS_CAP:
            invalid(
                f"must be at most {_MAX_CALLS_CAP}: the bundled pjsua2 supports at most "
                f"{_MAX_CALLS_CAP} calls per process"
            )
        return value

    @field_validator("rtp_port_range")
    @classmethod
    def _validate_rtp_port_range(cls, value: int, info: ValidationInfo) -> int:
        start = info.data.get("rtp_port_start")
        if isinstance(start, int) and start + value > 65535:
            invalid(f"rtp_port_start ({start}) + rtp_port_range must be at most 65535")
        return value

    @field_validator("outbound_proxy")
    @classmethod
    def _validate_outbound_proxy(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"sips?:[^\s<>]+", value.strip()):
            invalid("must be a SIP URI such as sip:10.0.0.2:5060")
        return value.strip() if value is not None else None


class SipAccount(Section):
    """Credentials of one registered endpoint (one per worker in ``register`` mode)."""

    username: SipUser = Field(description="Endpoint user name, e.g. Plivo's 'agent12345678'.")
    password: str = Field(default="", description="Digest password.", repr=False)
    auth_user: str | None = Field(
        default=None, description="Digest user name when it differs from ``username``."
    )


class RegistrationSettings(Section):
    """Registration with a registrar (``[registration]``, ``SIPAGENT_REGISTRATION__*``)."""

    registrar: str = Field(
        default="phone.plivo.com",
        description="Registrar host[:port]; Dial XML rings sip:<username>@<domain>.",
    )
    domain: str | None = Field(
        default=None, description="Domain of the registered URIs; None uses the registrar host."
    )
    expires_s: int = Field(default=300, ge=30, le=86400, description="Requested expiry.")
    first_retry_s: float = Field(
        default=5.0, gt=0, le=60, description="Retry this soon after a failed registration."
    )
    max_retry_s: float = Field(
        default=60.0, gt=0, le=3600, description="Backoff between retries is capped here."
    )
    accounts: list[SipAccount] = Field(
        default_factory=list, description="One account per worker, in worker order."
    )

    @field_validator("registrar")
    @classmethod
    def _validate_registrar(cls, value: str) -> str:
        host, _, port = value.strip().removeprefix("sip:").rpartition(":")
        if not host or "]" in port:
            host, port = value.strip().removeprefix("sip:"), ""
        try:
            check_host(host)
        except ValueError as exc:
            invalid(f"host {exc}")
        if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
            invalid("port must be between 1 and 65535")
        return value.strip().removeprefix("sip:")

    def host(self) -> str:
        """The registrar's host without the port (the default domain)."""
        text = self.registrar
        if text.startswith("["):
            return text[1 : text.index("]")]
        return text.rsplit(":", 1)[0] if text.count(":") == 1 else text

    @property
    def uri_domain(self) -> str:
        """Domain of the registered address-of-record."""
        return self.domain or self.host()
