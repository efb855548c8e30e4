"""Supervisor ⇄ worker control messages: one JSON object per line over a socketpair.

Supervisor → worker: ``{"cmd": "config", "settings": {...}}`` (first), then
``{"cmd": "start", "index": i, "sip_port": p, "rtp_port_start": r, "rtp_port_range": n}``,
``{"cmd": "drain"}``, ``{"cmd": "stop"}``, ``{"cmd": "push", "id": n, "call_id": ...,
"payload": {...}}`` (a reply the bot pushed), ``{"cmd": "dial", "id": n, "call_id": ...,
"uri": ..., "headers": {...}}`` (place an outbound call).  End of file means "stop".

Worker → supervisor: ``loaded`` (providers ready), ``up`` (uri, port), ``error`` (message,
fatal), ``call_start`` / ``call_end`` (sip_call_id, call_uuid, from, to, reason),
``turn`` (a turn record), ``reg`` (registered, status), ``push_result`` (id, status,
message: the answer to ``push``), ``dial_result`` (id, status 201/400/503, message,
sip_call_id: the answer to ``dial``); ``call_start`` carries ``direction`` and
``call_end`` an outbound call's ``outcome`` (answered, busy, no-answer, failed).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MAX_LINE = 4 * 1024 * 1024  # settings can be large-ish; anything bigger is a bug


async def send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """Write one message and flush it."""
    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at end of file.  A malformed line raises ValueError."""
    line = await reader.readline()
    if not line:
        return None
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"control message is not an object: {line[:80]!r}")
    return message
