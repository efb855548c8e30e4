"""Supervisor ⇄ worker control messages over a socketpair: the classes below, one JSON
object per line (``{"type": <TYPE>, <field>: <value>, ...}``).

Both sides go through `encode` / `decode` (or `send` / `receive`), so the classes are the
whole protocol: a field added to a message, or to a record a message carries, goes over the
pipe with no other change.  `decode` checks every field against its type; a line that is
not a message of this module raises `ProtocolError` (the line is consumed: the reader logs
it and reads on).

Supervisor → worker: `Configure` (always first), then `Start`, `Drain`, `Stop`, `PushReply`
(a reply the bot pushed), `PlaceCall` (an outbound call).  End of file means "stop".

Worker → supervisor: `Loaded` (providers ready), `Up`, `Failed` (cannot start), the call
events `CallStarted` / `CallEnded` / `TurnRecorded` (records, see `gateway.records.model`),
`CallActivity` (what the agent is doing on a call, for the console),
`LegChanged` (a call slot taken or freed by a call without a conversation),
`RegistrationChanged`, `Tallied` (counts for the metrics, see `gateway.tally`), and the
answers `PushResult` / `DialResult`, which carry the
``request_id`` of their request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Literal, TypeVar

from gateway.pipeline.activity import Activity
from gateway.pool.outcomes import DialOutcome, PushOutcome
from gateway.records.model import CallTurn, SipCallEnd, SipCallStart

_T = TypeVar("_T")

MAX_LINE = 4 * 1024 * 1024  # settings can be large-ish; anything bigger is a bug


class ProtocolError(ValueError):
    """A control line that is not a message of this protocol (says what is wrong)."""


# -- supervisor → worker ---------------------------------------------------------------------


@dataclass(frozen=True)
class Configure:
    """The worker's settings, as ``Settings.model_dump(mode="json")``."""

    TYPE: ClassVar[str] = "config"
    settings: dict[str, Any]


@dataclass(frozen=True)
class BehindEdge:
    """How a worker behind the edge differs: it listens on loopback, takes requests from
    the edge only (``allow_networks``), sends the calls it places through the edge, leaves
    the callers' credentials to the edge, and takes media where it is told."""

    sip_host: str
    allow_networks: tuple[str, ...]
    outbound_proxy: str
    media_host: str | None
    media_public_host: str | None


@dataclass(frozen=True)
class Start:
    """Become worker ``index``: its SIP port and RTP port range."""

    TYPE: ClassVar[str] = "start"
    index: int
    sip_port: int
    rtp_port_start: int
    rtp_port_range: int
    edge: BehindEdge | None = None
    kind: Literal["sip", "stream"] = "sip"  # stream: a WebSocket on sip_port, no RTP


@dataclass(frozen=True)
class Drain:
    """Accept no new calls."""

    TYPE: ClassVar[str] = "drain"


@dataclass(frozen=True)
class Stop:
    """Hang up and exit."""

    TYPE: ClassVar[str] = "stop"


@dataclass(frozen=True)
class PushReply:
    """Hand the bot's ``payload`` to call ``sip_call_id``; answered by `PushResult`."""

    TYPE: ClassVar[str] = "push"
    request_id: int
    sip_call_id: str
    payload: dict[str, Any]  # JSON, as the bot sent it


@dataclass(frozen=True)
class PlaceCall:
    """Place an outbound call (``call_id``: our id of it); answered by `DialResult` once
    the INVITE is sent."""

    TYPE: ClassVar[str] = "dial"
    request_id: int
    call_id: str
    uri: str
    headers: dict[str, str]


# -- worker → supervisor ---------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """The providers are loaded: the worker can take `Start`."""

    TYPE: ClassVar[str] = "loaded"


@dataclass(frozen=True)
class Up:
    """SIP is up: the worker's URI and port."""

    TYPE: ClassVar[str] = "up"
    uri: str
    port: int


@dataclass(frozen=True)
class Failed:
    """The worker cannot start (it exits after this)."""

    TYPE: ClassVar[str] = "error"
    message: str


@dataclass(frozen=True)
class CallStarted:
    """A call's conversation started."""

    TYPE: ClassVar[str] = "call_start"
    record: SipCallStart


@dataclass(frozen=True)
class CallEnded:
    """A call ended."""

    TYPE: ClassVar[str] = "call_end"
    record: SipCallEnd


@dataclass(frozen=True)
class TurnRecorded:
    """An agent turn of a call is over."""

    TYPE: ClassVar[str] = "turn"
    record: CallTurn


@dataclass(frozen=True)
class CallActivity:
    """What the agent now does on call ``sip_call_id`` (sent when that changes)."""

    TYPE: ClassVar[str] = "activity"
    sip_call_id: str
    activity: Activity


@dataclass(frozen=True)
class LegChanged:
    """A call without a conversation (a warm transfer's call to the human) took a call
    slot (``up``) or freed it."""

    TYPE: ClassVar[str] = "leg"
    sip_call_id: str
    up: bool


@dataclass(frozen=True)
class RegistrationChanged:
    """The worker's registration state."""

    TYPE: ClassVar[str] = "reg"
    registered: bool
    status: str


@dataclass(frozen=True)
class VendorErrors:
    """``count`` errors of provider ``vendor`` of kind ``kind`` (`ProviderError.kind`)."""

    vendor: str
    kind: str
    count: int


@dataclass(frozen=True)
class Tallied:
    """What the worker counted since its last `Tallied` (deltas, see `gateway.tally`):
    vendor errors, failovers by stage, refused stream connections by reason."""

    TYPE: ClassVar[str] = "tally"
    vendor_errors: tuple[VendorErrors, ...] = ()
    failovers: dict[str, int] = dataclasses.field(default_factory=dict)
    streams_refused: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class PushResult:
    """The answer to `PushReply` ``request_id``."""

    TYPE: ClassVar[str] = "push_result"
    request_id: int
    outcome: PushOutcome


@dataclass(frozen=True)
class DialResult:
    """The answer to `PlaceCall` ``request_id``."""

    TYPE: ClassVar[str] = "dial_result"
    request_id: int
    outcome: DialOutcome


Command = Configure | Start | Drain | Stop | PushReply | PlaceCall
"""What the supervisor sends."""

Report = (
    Loaded
    | Up
    | Failed
    | CallStarted
    | CallEnded
    | TurnRecorded
    | CallActivity
    | LegChanged
    | RegistrationChanged
    | Tallied
    | PushResult
    | DialResult
)
"""What a worker sends."""

Message = Command | Report

_BY_TYPE: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (*typing.get_args(Command), *typing.get_args(Report))
}


# -- encoding --------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """One line: the message as a JSON object tagged with its type."""
    body = {"type": message.TYPE, **_plain_fields(message)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _plain_fields(obj: object) -> dict[str, object]:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


def _plain(value: object) -> object:
    """``value`` as JSON data: dataclasses as objects, enums as their values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain_fields(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# -- decoding --------------------------------------------------------------------------------


def decode(line: bytes) -> Message:
    """The message of one line; `ProtocolError` saying what is wrong when it is not one."""
    try:
        data = json.loads(line)
    except ValueError as exc:  # UnicodeDecodeError is one
        raise ProtocolError(f"not JSON ({exc}): {line[:80]!r}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"not a JSON object: {line[:80]!r}")
    tag = data.pop("type", None)
    cls = _BY_TYPE.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {tag!r}")
    return _build(cls, data, tag)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of dataclass ``cls`` (the annotations are strings)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _build(cls: type[_T], data: dict[str, Any], where: str) -> _T:
    """A ``cls`` dataclass from its JSON fields; every field checked against its type."""
    hints = _hints(cls)
    values: dict[str, object] = {}
    names = set()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        names.add(f.name)
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{where}: {f.name!r} is missing")
    extra = sorted(set(data) - names)
    if extra:
        raise ProtocolError(f"{where}: unknown field {extra[0]!r}")
    return cls(**values)


def _value(hint: Any, value: object, where: str) -> object:
    """``value`` (JSON data) as type ``hint``; ProtocolError naming ``where`` if it is not."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        problems = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _value(arg, value, where)
            except ProtocolError as exc:
                problems.append(str(exc))
        raise ProtocolError("; ".join(problems) or f"{where}: {value!r} is not None")
    if origin is Literal:
        if value in args:
            return value
        raise ProtocolError(f"{where}: {value!r} is not one of {list(args)}")
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise ProtocolError(f"{where}: {value!r} is not a {hint.__name__}") from None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: not an object")
        return _build(hint, value, where)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: not a list")
        return tuple(_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: not an object")
        return {str(k): _value(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ProtocolError(f"{where}: {value!r} is not a {name}")


# -- over the socket -------------------------------------------------------------------------


async def send(writer: asyncio.StreamWriter, message: Message) -> None:
    """Write one message and flush it."""
    writer.write(encode(message))
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at end of file.  A line that is not a message raises
    `ProtocolError`, and one longer than `MAX_LINE` a ValueError from the reader; either
    way the line is consumed: read on."""
    line = await reader.readline()
    if not line:
        return None
    return decode(line)
