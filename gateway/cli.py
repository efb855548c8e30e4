"""`sipagent` command line: serve, call, dial, demo, calls."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from sip_config import ConfigError, Settings, load_settings, parse_listen


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "edge", False):
        overrides["edge"] = {"enabled": True}
    if getattr(args, "listen", None) is not None:
        host, port = parse_listen(args.listen)
        # With the edge on, --listen is the pool's one public address: the edge's.
        edge = bool(overrides) or load_settings(args.config).edge.enabled
        section = "edge" if edge else "sip"
        overrides.setdefault(section, {}).update({"listen_host": host, "listen_port": port})
    return load_settings(args.config, overrides=overrides or None)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE (got {text!r})")
    if any(not (ch.isalnum() or ch in "-_.!%*+`'~") for ch in name):
        raise argparse.ArgumentTypeError(f"not a header name: {name!r}")
    if any(ord(ch) < 32 for ch in value):
        raise argparse.ArgumentTypeError("header values cannot hold control characters")
    return name, value


def _credentials(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD")
    return user, password


def _dtmf_digits(text: str) -> str:
    keys = text.strip().upper()
    if not keys or any(ch not in "0123456789*#ABCD" for ch in keys):
        raise argparse.ArgumentTypeError(f"keypad keys are 0-9, *, # and A-D (got {text!r})")
    return keys


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 600 seconds (got {text})")
    return value


def _session_interval(text: str) -> int:
    value = _positive_int(text)
    if value < 90:
        raise argparse.ArgumentTypeError(f"RFC 4028 allows no less than 90 seconds (got {value})")
    return value


def _codec(text: str) -> str:
    codec = text.strip().upper()
    if codec not in ("PCMU", "PCMA"):
        raise argparse.ArgumentTypeError(f"PCMU or PCMA (got {text!r})")
    return codec


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the agent."""
    settings = _settings(args)
    _setup_logging(settings.log_level)
    from gateway.pool.supervisor import run_supervisor

    # The one place that joins the pool and the answer_url app: gateway.pool imports no
    # xml_app (the app imports the pool's state and outcomes).
    from xml_app.pool_app import start_pool_app

    return run_supervisor(settings, args.workers, start_app=start_pool_app)


# `sipagent call` steps that only a SIP call has: step kind -> its flag.
_SIP_ONLY_STEPS = {
    "hold": "--put-on-hold",
    "switch-codec": "--switch-codec",
    "refresh": "--refresh",
}
_STREAM_SCHEMES = ("ws://", "wss://")


def _call_problem(args: argparse.Namespace) -> str:
    """Why these `sipagent call` arguments do not make one call ("" when they do)."""
    target = args.answer_url or args.uri  # the parser lets exactly one through
    if args.answer_url and not args.answer_url.lower().startswith(("http://", "https://")):
        return f"--answer-url takes an http:// or https:// URL (got {args.answer_url!r})"
    stream = bool(args.answer_url) or target.lower().startswith(_STREAM_SCHEMES)
    if not stream:
        if target.lower().startswith(("http://", "https://")):
            return f"an answer_url goes with --answer-url (got {target!r})"
        given = [
            flag
            for flag, value in (
                ("--auth-token", args.auth_token),
                ("--extra-headers", args.extra_headers),
                ("--no-stop", args.no_stop),
                ("--from", args.caller),
                ("--to", args.called),
                ("--call-uuid", args.call_uuid),
            )
            if value
        ]
        return f"{given[0]} is for a Plivo stream (ws://, wss://, --answer-url)" if given else ""
    sip_only = [flag for kind, _ in args.steps or [] if (flag := _SIP_ONLY_STEPS.get(kind))]
    if args.dtmf_method == "info":
        sip_only.append("--dtmf-method info")
    if args.codecs != "PCMU,PCMA":
        sip_only.append("--codecs")
    for flag, value in (("--session-expires", args.session_expires), ("--auth", args.auth)):
        if value:
            sip_only.append(flag)
    if sip_only:
        return f"{sip_only[0]} is SIP only: not on a Plivo stream"
    return ""


def cmd_call(args: argparse.Namespace) -> int:
    """Softphone for testing: a SIP call, or Plivo's side of an audio stream."""
    _setup_logging("DEBUG" if args.verbose else "WARNING")
    problem = _call_problem(args)
    if problem:
        print(f"sipagent call: {problem}", file=sys.stderr)
        return 2
    from gateway.devtools.softphone import CallScript, run_softphone

    script = CallScript.from_args(args)
    if args.auth_token is None:
        # The gateway's own token, as `serve` reads it from the environment.
        script.auth_token = os.environ.get("SIPAGENT_APP__AUTH_TOKEN", "")
    return run_softphone(args.answer_url or args.uri, script)


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the agent and call it once."""
    from gateway.devtools.demo import run_demo

    return run_demo(config=args.config, port=args.port)


def _open_records(args: argparse.Namespace) -> Any:
    """The call-record store named by ``records.url`` (same configuration as `serve`)."""
    from gateway.records.store import CallRecords

    settings = load_settings(args.config)
    # An SQLite file that is not there is an error here, not a new empty store.
    return CallRecords.open(settings.records.url, create=False)


def _records_error(exc: Exception) -> int:
    text = " ".join(str(exc).split()).removeprefix("records: ")
    print(f"sipagent: call records: {text}", file=sys.stderr)
    return 1


def cmd_calls_list(args: argparse.Namespace) -> int:
    """Print the most recent calls."""
    from gateway.records.model import RecordsError
    from gateway.records.report import format_calls

    try:
        with _open_records(args) as records:
            calls = records.recent(args.limit)
    except RecordsError as exc:
        return _records_error(exc)
    if args.json:
        print(json.dumps(calls, indent=2, sort_keys=True))
    else:
        print(format_calls(calls))
    return 0


def cmd_calls_show(args: argparse.Namespace) -> int:
    """Print one call and its transcript."""
    from gateway.records.model import RecordsError
    from gateway.records.report import format_call

    try:
        with _open_records(args) as records:
            call = records.find(args.id)
            turns = [] if call is None else records.turns(str(call["call_uuid"]))
    except RecordsError as exc:
        return _records_error(exc)
    if call is None:
        print(f"sipagent: no call {args.id!r} in the call records", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"call": call, "turns": turns}, indent=2, sort_keys=True))
    else:
        print(format_call(call, turns))
    return 0


def _limit(text: str) -> int:
    value = _positive_int(text)
    if value > 100_000:
        raise argparse.ArgumentTypeError(f"at most 100000 (got {value})")
    return value


def cmd_dial(args: argparse.Namespace) -> int:
    """Ask a running `sipagent serve` to place an outbound call (POST /calls)."""
    import json
    import urllib.error
    import urllib.request

    settings = load_settings(args.config)
    o = settings.outbound
    if not o.api_key:
        raise ConfigError(
            "outbound.api_key: required by `sipagent dial` (SIPAGENT_OUTBOUND__API_KEY)"
        )
    base = args.app_url or o.app_url
    if not base:
        host = settings.app.listen_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        base = f"http://{host}:{settings.app.listen_port}"
    body: dict[str, Any] = {"to": args.destination, "via": args.via}
    if args.caller:
        body["from"] = args.caller
    if args.timezone:
        body["timezone"] = args.timezone
    if args.headers:
        body["headers"] = dict(args.headers)
    req = urllib.request.Request(
        base.rstrip("/") + "/calls",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {o.api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            status, text = int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = int(exc.code), exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"sipagent dial: cannot reach the app at {base}: {reason}", file=sys.stderr)
        return 3
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        answer = {"error": text.strip()}
    if status == 201:
        print(f"sipagent dial: call {answer.get('call_id')} placed via {answer.get('via')}")
        print(json.dumps(answer, sort_keys=True))
        return 0
    print(
        f"sipagent dial: refused ({status}): {answer.get('error', text.strip())}", file=sys.stderr
    )
    return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="sipagent", description="SIP voice-agent gateway")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the agent")
    s.add_argument("--config", type=Path, help="TOML settings file")
    s.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="SIP UDP address of the first worker (worker i listens on PORT+i); with the"
        " edge, the edge's address",
    )
    s.add_argument(
        "--edge",
        action="store_true",
        help="put Kamailio in front of the workers: one SIP address for the pool (edge.*)",
    )
    s.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes, 4 calls each (default: pool.workers, or sized to the machine)",
    )
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser(
        "call", help="call a SIP URI as a test softphone, or a stream bot as Plivo would"
    )
    # The URI, or the answer_url whose <Stream> is called: one of the two.
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "uri",
        nargs="?",
        help="e.g. sip:agent@127.0.0.1:5060, or a Plivo stream bot's ws:// or wss:// URL",
    )
    target.add_argument(
        "--answer-url",
        metavar="URL",
        help="instead of a URI, play Plivo fully: POST this answer_url as for an incoming"
        " call and connect to the <Stream> of the XML it returns",
    )
    c.add_argument(
        "--say",
        dest="steps",
        action="append",
        type=lambda t: ("say", t),
        metavar="TEXT",
        help="speak TEXT (Piper) after the agent stops talking",
    )
    c.add_argument(
        "--play",
        dest="steps",
        action="append",
        type=lambda t: ("play", t),
        metavar="WAV",
        help="play a WAV file after the agent stops talking",
    )
    c.add_argument(
        "--barge",
        dest="steps",
        action="append",
        type=lambda t: ("barge", t),
        metavar="TEXT",
        help="speak TEXT while the agent's next turn is playing",
    )
    c.add_argument(
        "--dtmf",
        dest="steps",
        action="append",
        type=lambda t: ("dtmf", _dtmf_digits(t)),
        metavar="KEYS",
        help="press keypad KEYS (e.g. 1 or 123456#) after the agent stops talking",
    )
    c.add_argument(
        "--barge-dtmf",
        dest="steps",
        action="append",
        type=lambda t: ("barge-dtmf", _dtmf_digits(t)),
        metavar="KEYS",
        help="press KEYS while the agent's next turn is playing",
    )
    c.add_argument(
        "--put-on-hold",
        dest="steps",
        action="append",
        type=lambda t: ("hold", str(_seconds(t))),
        metavar="S",
        help="put the agent on hold for S seconds (part-way into the turn it is playing, see"
        " --barge-after, or at once when it is quiet), playing a hold announcement",
    )
    c.add_argument(
        "--switch-codec",
        dest="steps",
        action="append",
        type=lambda t: ("switch-codec", _codec(t)),
        metavar="CODEC",
        help="once the agent is quiet, re-INVITE offering only CODEC (PCMU or PCMA)",
    )
    c.add_argument(
        "--refresh",
        dest="steps",
        action="append_const",
        const=("refresh", ""),
        help="once the agent is quiet, refresh the session with an UPDATE",
    )
    c.add_argument(
        "--session-expires",
        type=_session_interval,
        default=0,
        metavar="S",
        help="ask for SIP session timers (RFC 4028) with this interval, at least 90",
    )
    c.add_argument(
        "--dtmf-method",
        choices=("rfc4733", "info"),
        default="rfc4733",
        help="how keys are sent: RFC 4733 telephone-events (default) or SIP INFO",
    )
    c.add_argument(
        "--barge-after",
        type=float,
        default=1.5,
        metavar="S",
        help="seconds into the agent's turn at which --barge starts (1.5)",
    )
    c.add_argument("--record", type=Path, metavar="WAV", help="write what the agent said")
    c.add_argument("--transcribe", action="store_true", help="transcribe the agent's turns")
    c.add_argument(
        "--expect",
        type=Path,
        metavar="PLAYBOOK",
        help="transcribe expecting this playbook's replies (what the agent says)",
    )
    c.add_argument("--json", action="store_true", help="print a JSON report at the end")
    c.add_argument("--codecs", default="PCMU,PCMA", help="codecs to offer, in order")
    c.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait for each agent turn (20)"
    )
    c.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="stay on the line this many seconds after the last turn (SIGUSR1 ends it early)",
    )
    c.add_argument(
        "--no-hangup",
        action="store_true",
        help="do not hang up; wait for the agent to end the call",
    )
    c.add_argument(
        "--vanish", action="store_true", help="at the end stop sending RTP and exit without BYE"
    )
    c.add_argument(
        "--header",
        dest="headers",
        action="append",
        type=_header,
        metavar="NAME:VALUE",
        help="add a header to the INVITE (on a stream: to the WebSocket upgrade), e.g."
        " X-PH-CallUUID:1234 (repeatable)",
    )
    c.add_argument(
        "--auth",
        type=_credentials,
        metavar="USER:PASSWORD",
        help="answer the agent's digest challenge with these (sip.inbound_auth)",
    )
    stream = c.add_argument_group("Plivo audio stream (ws://, wss://, --answer-url)")
    stream.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help="sign the upgrade (and the answer_url request) with this Plivo auth token"
        " (default: $SIPAGENT_APP__AUTH_TOKEN; empty: unsigned)",
    )
    stream.add_argument(
        "--extra-headers",
        metavar="K=V,...",
        help="the start event's extra_headers, as the XML's extraHeaders would set them"
        " (with --answer-url: the XML's)",
    )
    stream.add_argument(
        "--no-stop",
        action="store_true",
        help="hang up by closing the WebSocket, without a stop event first",
    )
    stream.add_argument("--from", dest="caller", metavar="NUMBER", help="answer_url From")
    stream.add_argument("--to", dest="called", metavar="NUMBER", help="answer_url To")
    stream.add_argument(
        "--call-uuid", metavar="UUID", help="answer_url CallUUID (default: a new one)"
    )
    c.add_argument("-v", "--verbose", action="store_true")
    c.set_defaults(func=cmd_call, steps=None)

    o = sub.add_parser("dial", help="place an outbound call through a running serve")
    o.add_argument("destination", metavar="NUMBER_OR_URI", help="+14155550123 or sip:user@host")
    o.add_argument("--config", type=Path, help="TOML settings file (outbound.api_key, app)")
    o.add_argument("--via", choices=("sip", "plivo"), default="sip", help="how to place it")
    o.add_argument("--from", dest="caller", metavar="NUMBER", help="caller ID (via plivo)")
    o.add_argument("--timezone", metavar="ZONE", help="the callee's IANA time zone")
    o.add_argument("--app-url", metavar="URL", help="the app's URL (outbound.app_url)")
    o.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds (30)")
    o.add_argument(
        "--header",
        dest="headers",
        action="append",
        type=_header,
        metavar="NAME:VALUE",
        help="add a header to the INVITE (repeatable)",
    )
    o.set_defaults(func=cmd_dial)

    d = sub.add_parser("demo", help="start the agent and place one local call")
    d.add_argument("--config", type=Path, help="TOML settings file")
    d.add_argument("--port", type=int, default=0, help="SIP port for the agent (free one)")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("calls", help="call records and transcripts (records.url)")
    rsub = r.add_subparsers(dest="calls_command", required=True)
    rl = rsub.add_parser("list", help="the most recent calls, newest first")
    rl.add_argument("--config", type=Path, help="TOML settings file")
    rl.add_argument("--limit", type=_limit, default=20, metavar="N", help="calls to list (20)")
    rl.add_argument("--json", action="store_true", help="print the records as JSON")
    rl.set_defaults(func=cmd_calls_list)
    rs = rsub.add_parser("show", help="one call with its transcript")
    rs.add_argument("id", help="CallUUID or SIP Call-ID, or a unique prefix of either")
    rs.add_argument("--config", type=Path, help="TOML settings file")
    rs.add_argument("--json", action="store_true", help="print the record as JSON")
    rs.set_defaults(func=cmd_calls_show)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sipagent` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"sipagent: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
