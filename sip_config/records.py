"""Call records (``[records]``): the store every gateway writes its calls to, redaction
and recordings."""

from __future__ import annotations

from pydantic import Field, field_validator

from sip_config.errors import invalid
from sip_config.types import OptionalPath, PlainText, Section

__all__ = ["RecordsSettings"]


class RecordsSettings(Section):
    """Call records (``[records]``, ``SIPAGENT_RECORDS__*``)."""

    url: str = Field(
        default="sqlite:///sipagent-records.db",
        description=(
            "Call-record store: sqlite:///relative/path, sqlite:////absolute/path or"
            " postgresql://user:password@host:port/dbname."
        ),
    )
    redact_pii: bool = Field(
        default=False,
        description=(
            "Replace card and phone numbers, other long digit runs and e-mail addresses in"
            " the caller's and the agent's words before they are stored or logged."
        ),
    )
    recording_dir: OptionalPath = Field(
        default=None,
        description=(
            "Record every call as a stereo WAV (left: caller, right: agent) in this"
            " directory, named by CallUUID (or SIP Call-ID); None: no recordings."
        ),
    )
    gateway_id: PlainText = Field(
        default="",
        max_length=200,
        description=(
            "This gateway's name in the call records, unique among the gateways sharing the"
            " store; empty: serve uses <hostname>:<sip listen port>."
        ),
    )
    lease_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description=(
            "Liveness lease in the call records, renewed every lease_s/3: the open calls of a"
            " gateway not seen for this long (by the database's clock) are closed as"
            ' "gateway restarted".'
        ),
    )

    @field_validator("url")
    @classmethod
    def _validate_url(cls, value: str) -> str:
        scheme = value.partition("://")[0].lower()
        if scheme in ("postgresql", "postgres"):
            if len(value) <= len(scheme) + 3:
                invalid("postgresql:// URL without a server or database", show_input=False)
            return value
        if not value.startswith("sqlite:///") or value == "sqlite:///":
            # The input is not echoed: it may be a URL with a password.
            invalid(
                "must be sqlite:///PATH or postgresql://user:password@host:port/dbname",
                show_input=False,
            )
        return value
