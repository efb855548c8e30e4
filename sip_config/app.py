"""The answer_url app (``[app]``), where it sends each called number (``[routing]``) and
the policy of the calls it places (``[outbound]``: ``POST /calls`` and ``sipagent dial``)."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Annotated, Final

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from sip_config.errors import invalid
from sip_config.types import (
    DEFAULT_LISTEN_HOST,
    HhMm,
    Host,
    HttpUrl,
    Section,
    TimeZone,
    check_sip_headers,
    is_time_zone,
    list_parser,
    number_digits,
)

__all__ = ["AppSettings", "BusinessHours", "OutboundSettings", "Route", "RoutingSettings"]


class AppSettings(Section):
    """The answer_url app (``[app]``, ``SIPAGENT_APP__*``)."""

    enabled: bool = Field(default=True, description="Serve the answer_url app.")
    listen_host: Host = Field(default=DEFAULT_LISTEN_HOST, description="HTTP bind address.")
    listen_port: int = Field(default=8080, ge=0, le=65535, description="HTTP port (0: any).")
    public_url: HttpUrl = Field(
        default=None,
        description=(
            "Base URL Plivo calls (e.g. https://bot.example.com behind a TLS proxy); it is the"
            " URL signatures are computed over. None uses the request's own URL."
        ),
    )
    auth_token: str = Field(
        default="", repr=False, description="Plivo (sub)account auth token for signatures."
    )
    main_auth_token: str = Field(
        default="",
        repr=False,
        description=(
            "The main account's auth token, when auth_token is a subaccount's: requests are"
            " also taken with a valid X-Plivo-Signature-Ma-V3 (signed with it)."
        ),
    )
    console_token: str = Field(
        default="",
        repr=False,
        description=(
            "Credential of the call console (/console): the password of HTTP basic auth"
            " (any user name), an Authorization: Bearer token, or ?token= once (sets a"
            " cookie); empty: no console (404)."
        ),
    )
    verify_signatures: bool = Field(
        default=True, description="Reject requests without a valid X-Plivo-Signature-V3."
    )
    nonce_ttl_s: float = Field(
        default=86400.0,
        ge=1,
        le=7 * 86400,
        description=(
            "A nonce seen this recently is a replay (kept in the records store: across"
            " restarts and every gateway sharing it)."
        ),
    )
    dial_timeout_s: int = Field(
        default=20, ge=5, le=120, description="Dial timeout: ring the target this long."
    )
    caller_id: str | None = Field(
        default=None, description="callerId on Dial; None passes the caller's number on."
    )
    threads: int = Field(default=8, ge=1, le=128, description="WSGI server threads.")
    max_connections: int = Field(
        default=1000,
        ge=10,
        le=20000,
        description="Open HTTP connections taken at once (idle ones hold no thread).",
    )
    idle_timeout_s: int = Field(
        default=60, ge=5, le=3600, description="An HTTP connection silent this long is closed."
    )


# --- routing ----------------------------------------------------------------------------

_WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_parse_day_list = list_parser()


def _parse_days(value: object) -> object:
    """Days as a list or "Mon,tue"; only the first three letters count."""
    value = _parse_day_list(value)
    if isinstance(value, list):
        return [v.strip().lower()[:3] if isinstance(v, str) else v for v in value]
    return value


class BusinessHours(Section):
    """Opening hours of a route; outside them the route's ``after_hours_*`` apply."""

    timezone: TimeZone = Field(default="UTC", description="IANA time zone, e.g. Europe/London.")
    days: Annotated[list[str], BeforeValidator(_parse_days)] = Field(
        default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"], description="Open days."
    )
    open: HhMm = Field(default="09:00", description="Opening time, HH:MM.")
    close: HhMm = Field(default="17:00", description="Closing time, HH:MM (after open).")

    @field_validator("days")
    @classmethod
    def _validate_days(cls, value: list[str]) -> list[str]:
        bad = [d for d in value if d not in _WEEKDAYS]
        if bad or not value:
            invalid(f"days must be among {', '.join(_WEEKDAYS)}")
        return value

    @model_validator(mode="after")
    def _open_before_close(self) -> BusinessHours:
        if self.open >= self.close:
            raise ValueError(f"open ({self.open}) must be before close ({self.close})")
        return self


_E164ISH = re.compile(r"^\+?[0-9]{3,15}$")


def _check_target(value: str, *, allow_hangup: bool) -> str:
    text = value.strip()
    if text in ("agent", "stream") or (allow_hangup and text == "hangup"):
        return text
    if text.startswith(("sip:", "sips:")) and "@" in text:
        return text
    if _E164ISH.match(text):
        return text
    extra = ", 'hangup'" if allow_hangup else ""
    invalid(f"must be 'agent', 'stream'{extra}, a sip: URI (user@host) or a phone number")


# Whether pool.stream_workers > 0 is not checked here: the app may route to the stream
# workers of a serve that runs elsewhere; without free ones it plays the fallback.
Target = Annotated[str, AfterValidator(partial(_check_target, allow_hangup=False))]
"""Where a call goes: 'agent' (the SIP worker pool), 'stream' (the stream workers, through
a Plivo audio stream), a sip: URI (user@host) or a phone number."""

TargetOrHangup = Annotated[str, AfterValidator(partial(_check_target, allow_hangup=True))]
"""A :data:`Target`, or 'hangup'."""


class Route(Section):
    """Where a called number's calls go."""

    target: Target = Field(
        default="agent",
        description=(
            "'agent' (the SIP worker pool), 'stream' (the stream workers, by a Plivo audio"
            " stream), a sip: URI, or a phone number."
        ),
    )
    hours: BusinessHours | None = Field(default=None, description="Open hours; None: always.")
    after_hours_target: TargetOrHangup = Field(
        default="hangup",
        description="Outside hours: 'hangup', 'agent', 'stream', a sip: URI or number.",
    )
    after_hours_say: str | None = Field(
        default="We are closed right now. Please call again during our opening hours.",
        description="Spoken outside hours before the after-hours target.",
    )


class RoutingSettings(Section):
    """Per-number routing for the answer_url app (``[routing]``)."""

    default: Route = Field(default_factory=Route, description="Route for unlisted numbers.")
    numbers: dict[str, Route] = Field(
        default_factory=dict, description="Routes keyed by called number (digits, '+' optional)."
    )
    anonymous: Route | None = Field(
        default=None,
        description=(
            "Route for callers who withhold their number (an empty or 'anonymous' From);"
            " None: the called number's route, as for everyone else."
        ),
    )
    fallback_say: str = Field(
        default="Sorry, all of our agents are busy right now. Please try again later.",
        description="Spoken when no worker (of the route's kind) can take the call.",
    )
    fallback_target: TargetOrHangup = Field(
        default="hangup", description="After the apology: 'hangup', a sip: URI or a number."
    )

    @field_validator("numbers")
    @classmethod
    def _validate_numbers(cls, value: dict[str, Route]) -> dict[str, Route]:
        out: dict[str, Route] = {}
        for key, route in value.items():
            digits = number_digits(key)
            if digits is None:
                invalid(f"routing number {key!r} must be digits with an optional '+'")
            out[digits] = route
        return out

    @field_validator("fallback_target")
    @classmethod
    def _validate_fallback(cls, value: str) -> str:
        if value in ("agent", "stream"):
            invalid(f"the fallback cannot be {value!r}: the workers are what failed")
        return value


# --- outbound calls ---------------------------------------------------------------------


class OutboundSettings(Section):
    """Outbound calls (``[outbound]``, ``SIPAGENT_OUTBOUND__*``): ``sipagent dial`` and the
    app's ``POST /calls``."""

    api_key: str = Field(
        default="",
        repr=False,
        description="Bearer key for POST /calls and `sipagent dial`; empty: outbound is off.",
    )
    app_url: HttpUrl = Field(
        default=None,
        description="URL of a running serve's app for `sipagent dial`; None: app.listen_*.",
    )
    # Whether the file is readable is checked at load time (sip_config.checks).
    dnc_file: Path | None = Field(
        default=None, description="Do-not-call list: one number per line, '#' comments."
    )
    timezone: TimeZone = Field(
        default="UTC", description="Callee time zone when neither the request nor zones set it."
    )
    zones: dict[str, str] = Field(
        default_factory=dict,
        description="Number prefix -> IANA zone e.g. '+1212' = 'America/New_York'.",
    )
    window_start: HhMm = Field(
        default="09:00", description="Calls allowed from HH:MM (callee time)."
    )
    window_end: HhMm = Field(default="20:00", description="... until HH:MM (callee time).")
    cps: float = Field(default=2.0, gt=0, le=1000, description="Calls per second, pool-wide.")
    burst: int = Field(default=1, ge=1, le=1000, description="Calls that may start at once.")
    max_queue: int = Field(
        default=4,
        ge=0,
        le=1000,
        description=(
            "Requests waiting for a CPS slot (each holds an app thread; below app.threads);"
            " beyond: 429."
        ),
    )
    ring_timeout_s: float = Field(
        default=30.0, gt=0, le=300, description="Unanswered this long: no-answer (SIP)."
    )
    trunk: str | None = Field(
        default=None,
        description="host[:port] for numbers via SIP: sip:<number>@<trunk>; None: sip: URIs only.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers added to every outbound INVITE."
    )
    caller_id: str | None = Field(
        default=None, description="Default 'from' number (Plivo calls need one)."
    )
    plivo_auth_id: str = Field(default="", description="Plivo auth ID for via=plivo.")
    plivo_auth_token: str = Field(
        default="",
        repr=False,
        description="Plivo auth token for via=plivo (default app.auth_token).",
    )
    plivo_api_url: HttpUrl = Field(
        default=None,
        description="Send Plivo REST calls here instead of https://api.plivo.com (tests, proxies).",
    )

    @field_validator("zones")
    @classmethod
    def _validate_zones(cls, value: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for prefix, zone in value.items():
            digits = number_digits(prefix)
            if digits is None:
                invalid(f"zone prefix {prefix!r} must be digits with an optional '+'")
            if not is_time_zone(zone):
                invalid(f"unknown time zone {zone!r} for prefix {prefix!r}")
            out[digits] = zone
        return out

    @field_validator("headers")
    @classmethod
    def _validate_headers(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return check_sip_headers(value)
        except ValueError as exc:
            invalid(str(exc))

    @model_validator(mode="after")
    def _window(self) -> OutboundSettings:
        if self.window_start >= self.window_end:
            raise ValueError(
                f"window_start ({self.window_start}) must be before window_end ({self.window_end})"
            )
        return self
