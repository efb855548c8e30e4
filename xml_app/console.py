"""The call console (``/console``): server-rendered pages over the call records and the
pool's state, for an operator with the console's credential.

Pages (HTML from the templates in ``xml_app/templates/console``, one stylesheet and one
small script in ``xml_app/static/console``; nothing is fetched from elsewhere):

``/console``
    Recent calls, newest first; ``?q=`` keeps those whose caller or callee number
    contains it (digits compared, so ``+1 415`` finds ``14155550100``), ``?date=YYYY-MM-DD``
    those created on that day (UTC).  The search reads the latest `SEARCH_WINDOW` records.
``/console/calls/<id>``
    One call: its facts, its turns (who said what, interrupted turns marked), a latency
    waterfall per turn and the actions taken, and its stereo recording when it has one.
``/console/calls/<id>/recording.wav``
    The recording itself (``audio/wav``), when it lies in ``records.recording_dir``.
``/console/live`` and ``/console/live.json``
    The calls in progress across the pool and the pool's workers; the page polls the JSON.

Credential (``app.console_token``; empty: every console URL answers 404): the token as the
password of HTTP basic auth (any user name), as ``Authorization: Bearer <token>``, or once
as ``?token=<token>``, which sets an HttpOnly cookie (a keyed hash of the token, never the
token) scoped to ``/console`` and redirects to the same URL without it.  Without it every
console URL, the recording included, answers 401 with ``WWW-Authenticate: Basic``.

With ``records.redact_pii`` the numbers shown keep only their last 4 digits and the words
pass through `gateway.records.redact` (the store already keeps them redacted then).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, redirect, render_template, request, send_file
from werkzeug.wrappers import Response as BaseResponse

from gateway.pool.state import PoolState
from gateway.records.model import RecordsError
from gateway.records.redact import redact
from gateway.records.store import CallRecords
from sip_config import Settings

__all__ = ["COOKIE", "SEARCH_WINDOW", "WATERFALL_PARTS", "console_blueprint", "waterfall"]

COOKIE: Final = "sipagent_console"
"""Name of the console's session cookie."""

SEARCH_WINDOW: Final = 1000
"""How many of the latest records the recent-calls search looks through."""

WATERFALL_PARTS: Final = (
    ("eot_wait_ms", "end of turn"),
    ("stt_ms", "STT"),
    ("brain_ms", "brain"),
    ("tts_first_ms", "TTS"),
    ("playout_ms", "playout"),
)
"""The latency parts of a turn, in the order they happen, with their labels."""

_REALM: Final = 'Basic realm="sipagent console", charset="UTF-8"'
_PAGE_SIZE: Final = 100
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


def _cookie_value(token: str) -> str:
    # Keyed by the token itself: changing app.console_token ends every console session.
    return hmac.new(token.encode(), b"sipagent console session", hashlib.sha256).hexdigest()


def _authorised(token: str) -> bool:
    """Whether the current request carries the console's credential (constant-time)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    offered: str | None = None
    if scheme.lower() == "bearer":
        offered = value.strip()
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        offered = decoded.partition(":")[2]
    if offered is not None and hmac.compare_digest(offered.encode(), token.encode()):
        return True
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(
        cookie.encode(), _cookie_value(token).encode()
    )


def _digits(text: str | None) -> str:
    return re.sub(r"\D", "", text or "")


def _number(uri: str | None) -> str:
    """The user part of a SIP URI (``sip:+1415...@host`` -> ``+1415...``), or the text."""
    if not uri:
        return ""
    text = uri.strip().strip("<>")
    if text.lower().startswith(("sip:", "sips:")):
        text = text.split(":", 1)[1]
    return text.split("@", 1)[0].split(";", 1)[0]


def waterfall(turns: Sequence[Mapping[str, Any]]) -> tuple[float, list[list[dict[str, Any]]]]:
    """Bars of each turn's latency parts laid end to end on one time axis shared by all the
    turns: (the axis' length in ms, per turn a list of {part, label, ms, left, width}, with
    ``left`` and ``width`` in percent of the axis).  Parts that took no time are left out."""
    sums = [sum(float(t.get(p) or 0.0) for p, _ in WATERFALL_PARTS) for t in turns]
    axis = max([*sums, 1.0])
    groups: list[list[dict[str, Any]]] = []
    for turn in turns:
        at = 0.0
        bars: list[dict[str, Any]] = []
        for part, label in WATERFALL_PARTS:
            ms = max(0.0, float(turn.get(part) or 0.0))
            if ms > 0:
                bars.append(
                    {
                        "part": part.removesuffix("_ms"),
                        "label": label,
                        "ms": ms,
                        "left": round(100.0 * at / axis, 3),
                        "width": round(100.0 * ms / axis, 3),
                    }
                )
            at += ms
        groups.append(bars)
    return axis, groups


def console_blueprint(
    settings: Settings,
    pool: PoolState,
    records: CallRecords,
    *,
    clock: Callable[[], float] = time.time,
) -> Blueprint:
    """The console's routes under ``/console`` (mounted by `xml_app.app.create_app`).

    Args:
        settings: ``app.console_token`` (empty: 404 everywhere), ``records.redact_pii`` and
            ``records.recording_dir``.
        pool: the pool's state: live calls and workers.
        records: the call records.
        clock: unix time source (durations of live calls).
    """
    token = settings.app.console_token
    redacting = settings.records.redact_pii
    recording_dir = settings.records.recording_dir
    bp = Blueprint(
        "console",
        __name__,
        url_prefix="/console",
        template_folder="templates",
        static_folder="static/console",
        static_url_path="/static",
    )

    @bp.before_request
    def guard() -> BaseResponse | None:
        if not token:
            return Response("not found\n", status=404, mimetype="text/plain")
        if not _authorised(token):
            offered = request.args.get("token")
            if offered is None or not hmac.compare_digest(offered.encode(), token.encode()):
                return Response(
                    "console credential required\n",
                    status=401,
                    mimetype="text/plain",
                    headers={"WWW-Authenticate": _REALM},
                )
        offered = request.args.get("token")
        if offered is not None:
            # Take the token out of the address bar (and history) once it set the cookie.
            rest = {k: v for k, v in request.args.items() if k != "token"}
            target = request.path + ("?" + urlencode(rest) if rest else "")
            response = redirect(target, code=303)
            response.set_cookie(
                COOKIE,
                _cookie_value(token),
                httponly=True,
                samesite="Strict",
                path="/console",
                secure=request.is_secure,
            )
            return response
        return None

    @bp.after_request
    def private(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def show_number(uri: str | None) -> str:
        number = _number(uri)
        if not redacting or not number:
            return number
        digits = _digits(number)
        return "…" + digits[-4:] if len(digits) > 4 else "…"

    def show_text(text: str | None) -> str:
        if not text:
            return ""
        return redact(text) if redacting else text

    def when(at: float | None) -> str:
        if not at:
            return ""
        return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    def call_view(record: Mapping[str, Any]) -> dict[str, Any]:
        started = record.get("start_at") or record.get("answer_at") or record.get("created_at")
        return {
            "key": record["call_uuid"],
            "when": when(started),
            "from": show_number(record.get("from_number") or record.get("sip_from")),
            "to": show_number(record.get("to_number") or record.get("sip_to")),
            "direction": record.get("direction") or "",
            "worker": record.get("worker"),
            "duration": _duration(record),
            "outcome": record.get("outcome") or "",
            "end_reason": record.get("end_reason") or record.get("hangup_cause") or "",
            "turns": record.get("turn_count", 0),
            "recording": bool(record.get("recording")),
            "open": record.get("start_at") is not None and record.get("sip_end_at") is None,
        }

    def recording_file(record: Mapping[str, Any]) -> Path | None:
        """The call's recording, when it exists inside ``records.recording_dir``."""
        stored = record.get("recording")
        if not stored or recording_dir is None:
            return None
        base = Path(recording_dir).resolve()
        path = Path(stored).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return None
        return path

    def lookup(call_id: str) -> dict[str, Any] | None:
        try:
            return records.find(call_id)
        except RecordsError:
            return None

    @bp.get("/")
    def recent() -> str:
        q = request.args.get("q", "").strip()
        date = request.args.get("date", "").strip()
        rows = records.recent(SEARCH_WINDOW if q or date else _PAGE_SIZE)
        if q:
            want = _digits(q)
            rows = [
                r
                for r in rows
                if want
                and any(
                    want in _digits(r.get(name))
                    for name in ("from_number", "to_number", "sip_from", "sip_to")
                )
            ]
        if date and _DATE.fullmatch(date):
            rows = [r for r in rows if when(r.get("created_at")).startswith(date)]
        return render_template(
            "console/recent.html",
            calls=[call_view(r) for r in rows[:_PAGE_SIZE]],
            q=q,
            date=date,
            nav="recent",
        )

    @bp.get("/calls/<path:call_id>")
    def call_page(call_id: str) -> Response | str:
        record = lookup(call_id)
        if record is None:
            return Response("no such call\n", status=404, mimetype="text/plain")
        stored = records.turns(record["call_uuid"])
        turns = [
            {
                "turn": t["turn"],
                "kind": t["kind"],
                "user": show_text(t.get("user_text")),
                "agent": show_text(t.get("agent_text")),
                "intent": t.get("intent") or "",
                "actions": t.get("actions") or [],
                "interrupted": t.get("interrupted"),
                "barge_in": t.get("barge_in"),
                "total_ms": t.get("total_ms") or 0.0,
            }
            for t in stored
        ]
        axis, bars = waterfall(stored)
        return render_template(
            "console/call.html",
            call=call_view(record),
            turns=turns,
            bars=bars,
            axis_ms=axis,
            parts=WATERFALL_PARTS,
            has_recording=recording_file(record) is not None,
            nav="recent",
        )

    @bp.get("/calls/<path:call_id>/recording.wav")
    def recording(call_id: str) -> Response:
        record = lookup(call_id)
        path = recording_file(record) if record is not None else None
        if path is None:
            return Response("no recording\n", status=404, mimetype="text/plain")
        return send_file(path, mimetype="audio/wav", conditional=True, max_age=0)

    def live_state() -> dict[str, Any]:
        now = clock()
        calls = []
        for c in pool.live_calls():
            # A call routed by the app: the numbers Plivo gave /answer, not the SIP URIs
            # of Plivo's leg.
            record = records.get(c["call_uuid"]) if c["call_uuid"] else None
            numbers = record or {}
            calls.append(
                {
                    "worker": c["worker"],
                    "from": show_number(numbers.get("from_number") or c["from_uri"]),
                    "to": show_number(numbers.get("to_number") or c["to_uri"]),
                    "direction": c["direction"],
                    # One of `gateway.pipeline.activity.ACTIVITIES`, or None (none reported yet).
                    "activity": c["activity"],
                    "duration_s": max(0, round(now - c["started_at"])),
                    "key": c["call_uuid"] or "sip:" + c["sip_call_id"],
                }
            )
        workers = [
            {
                "index": w["index"],
                "kind": w["kind"],
                "state": _worker_state(w),
                "pid": w["pid"],
                "calls": w["calls"],
                "legs": w["legs"],
                "max_calls": w["max_calls"],
                "free": w["free"],
                "registration": w["registration"]
                if w["registered"] is not None
                else "not registering",
                "restarts": w["restarts"],
            }
            for w in pool.snapshot()
        ]
        return {"calls": calls, "workers": workers, "draining": pool.draining}

    @bp.get("/live")
    def live() -> str:
        return render_template("console/live.html", state=live_state(), nav="live")

    @bp.get("/live.json")
    def live_json() -> Response:
        return jsonify(live_state())

    return bp


def _duration(record: Mapping[str, Any]) -> str:
    seconds = record.get("duration_s")
    if seconds is None and record.get("start_at") and record.get("sip_end_at"):
        seconds = record["sip_end_at"] - record["start_at"]
    if seconds is None:
        return ""
    total = max(0, round(float(seconds)))
    return f"{total // 60}:{total % 60:02d}"


def _worker_state(w: Mapping[str, Any]) -> str:
    if not w["up"]:
        return "down"
    if w["registered"] is False:
        return "unregistered"
    if not w["accepting"]:
        return "draining"
    return "busy" if w["free"] == 0 else "up"
