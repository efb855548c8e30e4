"""Text for `sipagent calls list` and `sipagent calls show` (pure formatting, no I/O)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["call_start", "format_call", "format_calls"]

_LIST_COLUMNS: Final = ("START", "CALL", "FROM", "TO", "DURATION", "HANGUP", "WORKER", "TURNS")
_LATENCY_PARTS: Final = (
    ("eot", "eot_wait_ms"),
    ("stt", "stt_ms"),
    ("brain", "brain_ms"),
    ("tts", "tts_first_ms"),
    ("playout", "playout_ms"),
)
# Fields of `calls show`, in order; times are printed as local date and time.
_SHOW_FIELDS: Final = (
    ("CallUUID", "call_uuid"),
    ("SIP Call-ID", "sip_call_id"),
    ("From", "from_number"),
    ("To", "to_number"),
    ("SIP From", "sip_from"),
    ("SIP To", "sip_to"),
    ("Direction", "direction"),
    ("Route", "route"),
    ("Worker", "worker"),
    ("Answered", "answer_at"),
    ("SIP start", "start_at"),
    ("SIP end", "sip_end_at"),
    ("Ended", "end_at"),
    ("Duration", "duration_s"),
    ("Hang-up cause", "hangup_cause"),
    ("End reason", "end_reason"),
    ("Dial status", "dial_status"),
    ("Dial hang-up cause", "dial_hangup_cause"),
    ("Dial B-leg", "dial_b_leg_uuid"),
    ("SIP headers", "sip_headers"),
    ("Recording", "recording"),
)
_TIME_FIELDS: Final = frozenset({"answer_at", "start_at", "sip_end_at", "end_at"})


def call_start(call: Mapping[str, Any]) -> float | None:
    """When the call began: its answer_url request, else its SIP start, else its first event."""
    for name in ("answer_at", "start_at", "created_at"):
        value = call.get(name)
        if isinstance(value, int | float):
            return float(value)
    return None


def _clock(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    whole = round(seconds)
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{seconds:.1f}s"


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def format_calls(calls: Sequence[Mapping[str, Any]]) -> str:
    """A table of calls (``CallRecords.recent()`` rows), one line each."""
    if not calls:
        return "no calls recorded"
    rows = [_LIST_COLUMNS]
    for call in calls:
        rows.append(
            (
                _clock(call_start(call)),
                str(call["call_uuid"]),
                _text(call.get("from_number") or call.get("sip_from")),
                _text(call.get("to_number") or call.get("sip_to")),
                _duration(call.get("duration_s")),
                _text(call.get("hangup_cause") or call.get("end_reason")),
                _text(call.get("worker")),
                str(call.get("turn_count") or 0),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_LIST_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _ms(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def _turn_lines(turn: Mapping[str, Any], start: float | None) -> list[str]:
    at = turn.get("at")
    when = _clock(at) if isinstance(at, int | float) else "-"
    if isinstance(at, int | float) and start is not None:
        when += f" (+{at - start:.1f}s)"
    head = f"#{turn.get('turn')} {turn.get('kind')}  {when}"
    flags = [name for name in ("interrupted", "barge_in", "ahead") if turn.get(name)]
    if turn.get("discarded"):
        flags.append(f"{turn['discarded']} discarded")
    if flags:
        head += "  [" + ", ".join(f.replace("_", "-") for f in flags) + "]"
    lines = [head]
    if turn.get("user_text"):
        lines.append(f"    caller: {turn['user_text']}")
    if turn.get("agent_text"):
        lines.append(f"    agent:  {turn['agent_text']}")
    extra = []
    if turn.get("intent"):
        extra.append(f"intent {turn['intent']}")
    if turn.get("actions"):
        extra.append("actions " + ", ".join(str(a) for a in turn["actions"]))
    if extra:
        lines.append("    " + "; ".join(extra))
    parts = ", ".join(
        f"{label} {_ms(turn.get(name))}" for label, name in _LATENCY_PARTS if turn.get(name)
    )
    total = turn.get("total_ms")
    if total or parts:
        latency = f"    latency: {_ms(total)} ms"
        if parts:
            latency += f" ({parts})"
        lines.append(latency)
    return lines


def format_call(call: Mapping[str, Any], turns: Sequence[Mapping[str, Any]]) -> str:
    """A call's fields (those that are set) and its transcript with the latency parts."""
    label_width = max(len(label) for label, _ in _SHOW_FIELDS)
    lines = []
    for label, name in _SHOW_FIELDS:
        value = call.get(name)
        if value is None or value == "":
            continue
        if name in _TIME_FIELDS:
            text = _clock(float(value))
        elif name == "duration_s":
            text = _duration(value)
        else:
            text = str(value)
        lines.append(f"{label + ':':<{label_width + 1}} {text}")
    lines.append("")
    if not turns:
        lines.append("Transcript: no turns recorded")
        return "\n".join(lines)
    head = f"Transcript ({len(turns)} turns"
    ahead = sum(1 for t in turns if t.get("ahead"))
    dropped = sum(int(t.get("discarded") or 0) for t in turns)
    if ahead or dropped:
        # Replies generated in the caller's pause: kept, and dropped (tokens paid for).
        head += f"; {ahead} replies generated ahead, {dropped} discarded"
    lines.append(head + "):")
    start = call_start(call)
    for turn in turns:
        lines.extend("  " + line for line in _turn_lines(turn, start))
    return "\n".join(lines)
