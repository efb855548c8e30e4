"""Wire-test helpers: a real Kamailio registrar/proxy and one agent worker process.

`Kamailio` runs Debian's ``kamailio`` in the foreground on 127.0.0.1 with a generated
config: digest-authenticated REGISTER (``auth`` with the passwords written into the
config, no database), an in-memory location table (``usrloc`` db_mode 0), and requests
to registered users looked up and relayed with ``t_relay()`` (record-routed). The script
logs one ``KAMEV|...`` line per registrar decision or routed request; `Kamailio.events`
returns them time-stamped on arrival. `Kamailio.contacts` asks the running registrar
(``kamcmd ul.lookup`` over a ctl socket in its temp dir) who is registered.

`WorkerProcess` runs one agent worker (``gateway.pool.worker.AgentWorker``) from a TOML file in
a child process (``python -m tests.helpers.kamailio CONFIG``), independent of ``sipagent serve``.
SIGUSR1 makes it stop accepting calls (``AgentUA.set_accepting(False)``), SIGUSR2 resumes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.devtools.demo import free_udp_port, rtp_base_for, stop_process

REPO = Path(__file__).resolve().parents[2]
EVENT_TAG = "KAMEV|"
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def kamailio_binary() -> str | None:
    """Path of the kamailio binary (Debian installs it in /usr/sbin), or None."""
    for name in ("kamailio", "/usr/sbin/kamailio"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _kamcmd_binary() -> str:
    return shutil.which("kamcmd") or shutil.which("/usr/sbin/kamcmd") or "kamcmd"


@dataclass(frozen=True)
class KamEvent:
    """One ``KAMEV`` line: what the registrar/proxy did, when the line arrived here."""

    at: float  # time.monotonic()
    kind: str  # REGISTER, CHALLENGED, REJECTED, REGISTERED, UNREGISTERED, ROUTED, NOTFOUND
    fields: dict[str, str]

    @property
    def user(self) -> str:
        """The user the event is about (To user of a REGISTER, R-URI user of a call)."""
        return self.fields.get("user", "")


_CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
disable_tcp=yes
auto_aliases=no
listen=udp:{host}:{port}

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "ctl.so"

modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", {min_expires})
modparam("registrar", "max_expires", {max_expires})
modparam("registrar", "default_expires", {max_expires})
# A fixed secret keeps nonces valid across restarts: a REGISTER retransmitted into the
# restarted registrar is accepted like any other.
modparam("auth", "secret", "sipagent-wire-tests")
modparam("ctl", "binrpc", "unix:{ctl}")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("OPTIONS") && $rU == $null) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            xlog("L_NOTICE", "KAMEV|ROUTED|method=$rm|user=$rU|dest=$ru|src=$si:$sp\\n");
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();
    if (is_method("REGISTER")) {{
        route(REGISTRAR);
        exit;
    }}
    if (is_method("INVITE")) {{
        record_route();
    }}
{pstn_route}
    if (!lookup("location")) {{
        xlog("L_NOTICE", "KAMEV|NOTFOUND|method=$rm|user=$rU|src=$si:$sp\\n");
        sl_send_reply("404", "Not Found");
        exit;
    }}
    xlog("L_NOTICE", "KAMEV|ROUTED|method=$rm|user=$tU|dest=$ru|src=$si:$sp\\n");
    t_relay();
    exit;
}}

route[REGISTRAR] {{
    if (is_present_hf("Authorization")) {{
        $var(auth) = "yes";
    }} else {{
        $var(auth) = "no";
    }}
    $var(id) = "user=" + $tU + "|callid=" + $ci + "|cseq=" + $cs;
    xlog("L_NOTICE", "KAMEV|REGISTER|$var(id)|auth=$var(auth)|expires=$hdr(Expires)\\n");
    $var(pw) = "";
{passwords}
    if (!pv_www_authenticate("$td", "$var(pw)", "0")) {{
        $var(rc) = $rc;
        if ($var(rc) == -2) {{
            xlog("L_NOTICE", "KAMEV|REJECTED|$var(id)|code=403\\n");
            sl_send_reply("403", "Forbidden");
            exit;
        }}
        xlog("L_NOTICE", "KAMEV|CHALLENGED|$var(id)|rc=$var(rc)\\n");
        auth_challenge("$td", "0");
        exit;
    }}
    if (!save("location")) {{
        sl_reply_error();
        exit;
    }}
    if ($hdr(Expires) == "0") {{
        xlog("L_NOTICE", "KAMEV|UNREGISTERED|$var(id)|contact=$ct\\n");
    }} else {{
        xlog("L_NOTICE", "KAMEV|REGISTERED|$var(id)|expires=$hdr(Expires)|contact=$ct\\n");
    }}
}}
"""


# Calls to numbers (an R-URI user of digits, '+' first or not) from a registered user go
# out to the "PSTN" gateway once the caller answered a proxy digest challenge (407), the
# way a registered Plivo endpoint's calls to numbers are authenticated.
_PSTN_ROUTE = """    if (is_method("INVITE") && $rU =~ "^[+]?[0-9]+$") {{
        $var(pw) = "";
{passwords}
        if (!pv_proxy_authenticate("$fd", "$var(pw)", "0")) {{
            xlog("L_NOTICE", "KAMEV|CHALLENGED|user=$fU|callid=$ci|cseq=$cs|rc=$rc\\n");
            proxy_challenge("$fd", "0");
            exit;
        }}
        consume_credentials();
        xlog("L_NOTICE", "KAMEV|PSTN|user=$rU|from=$fU|callid=$ci|src=$si:$sp\\n");
        $du = "sip:{pstn}";
        t_relay();
        exit;
    }}"""


def kamailio_config(
    port: int,
    users: Mapping[str, str],
    ctl: Path,
    *,
    host: str = "127.0.0.1",
    min_expires: int = 5,
    max_expires: int = 10,
    pstn: str | None = None,
) -> str:
    """The Kamailio config text: registrar for `users` (name → password) on udp host:port;
    with `pstn` (host:port), calls to numbers are authenticated and sent there."""
    lines = []
    for name, password in users.items():
        if not (_SAFE.match(name) and _SAFE.match(password)):
            raise ValueError(f"user {name!r}: names and passwords must be [A-Za-z0-9._-]")
        lines.append(f'    if ($au == "{name}") {{ $var(pw) = "{password}"; }}')
    passwords = "\n".join(lines)
    pstn_route = ""
    if pstn is not None:
        if not re.fullmatch(r"[0-9.]+:[0-9]+", pstn):
            raise ValueError(f"pstn must be host:port with an IPv4 address (got {pstn!r})")
        pstn_route = _PSTN_ROUTE.format(
            pstn=pstn, passwords="\n".join("    " + line for line in lines)
        )
    return _CONFIG.format(
        host=host,
        port=port,
        ctl=ctl,
        min_expires=min_expires,
        max_expires=max_expires,
        passwords=passwords,
        pstn_route=pstn_route,
    )


class Kamailio:
    """A Kamailio registrar/proxy child process on 127.0.0.1 (start, stop, restart).

    The UDP port stays the same across restarts; the location table does not (db_mode 0).
    Server-granted expiries are capped at `max_expires` so refreshes come quickly.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        port: int = 0,
        min_expires: int = 5,
        max_expires: int = 10,
        pstn: str | None = None,
    ) -> None:
        binary = kamailio_binary()
        if binary is None:
            raise RuntimeError("kamailio is not installed (apt-get install -y kamailio)")
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = port or free_udp_port()
        # A short directory: the ctl socket path must fit in sun_path (108 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="kam-"))
        self.ctl = self.dir / "ctl.sock"
        self.config = self.dir / "kamailio.cfg"
        self.config.write_text(
            kamailio_config(
                self.port,
                users,
                self.ctl,
                host=self.host,
                min_expires=min_expires,
                max_expires=max_expires,
                pstn=pstn,
            )
        )
        self.lines: list[str] = []
        self._events: list[KamEvent] = []
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        """host:port of the registrar, as `registration.registrar` wants it."""
        return f"{self.host}:{self.port}"

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Start Kamailio and wait until it answers an OPTIONS ping (generous: a full run
        once saw it silent for 10 s while four test workers loaded the two cores)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("kamailio is already running")
        self.ctl.unlink(missing_ok=True)
        cmd = [
            self.binary,
            "-f",
            str(self.config),
            "-DD",
            "-E",
            "-w",
            str(self.dir),
            "-P",
            str(self.dir / "kamailio.pid"),
            "-m",
            "32",
            "-M",
            "4",
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # its children share our pid as process group
        )
        self.starts += 1
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._ping(0.2):
                return
        tail = "\n".join(self.lines[-30:])
        self.stop()
        raise RuntimeError(f"kamailio did not start on udp {self.address}:\n{tail}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop Kamailio (SIGTERM, then SIGKILL) and every process it forked."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Children that outlived the main process (they share its process group).
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(2)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s` seconds, start again on the same port."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop and remove the temp directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Kamailio:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the Kamailio main process is alive."""
        return self.proc is not None and self.proc.poll() is None

    # -- what it saw --------------------------------------------------------------------------
    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:  # closed at end of output: this thread is its only reader
            for raw in proc.stderr:
                line = raw.rstrip("\n")
                now = time.monotonic()
                with self._lock:
                    self.lines.append(line)
                    if EVENT_TAG in line:
                        self._events.append(_parse_event(line, now))

    def events(self, kind: str | None = None, user: str | None = None) -> list[KamEvent]:
        """Events so far (all runs), oldest first, optionally of one kind and user."""
        with self._lock:
            evs = list(self._events)
        return [
            e for e in evs if (kind is None or e.kind == kind) and (user is None or e.user == user)
        ]

    def wait_event(
        self, kind: str, user: str | None = None, *, after: float = 0.0, timeout: float = 10.0
    ) -> KamEvent:
        """The first `kind` event (for `user`) that arrived after monotonic time `after`."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events(kind, user):
                if e.at > after:
                    return e
            if time.monotonic() >= deadline:
                tail = "\n".join(self.lines[-20:])
                raise AssertionError(
                    f"kamailio: no {kind} event for {user} in {timeout} s:\n{tail}"
                )
            time.sleep(0.05)

    def contacts(self, user: str) -> list[str]:
        """Contact URIs registered for `user` right now (asks the running registrar)."""
        proc = subprocess.run(
            [_kamcmd_binary(), "-s", f"unix:{self.ctl}", "ul.lookup", "location", user],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if proc.returncode != 0:
            if "not found" in (proc.stdout + proc.stderr).lower():
                return []
            raise RuntimeError(f"kamcmd ul.lookup failed: {proc.stdout}{proc.stderr}")
        return re.findall(r"Address:\s*(\S+)", proc.stdout)

    def _ping(self, wait: float) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((self.host, 0))
            s.settimeout(wait)
            lport = s.getsockname()[1]
            branch = "z9hG4bK" + uuid.uuid4().hex[:16]
            msg = (
                f"OPTIONS sip:{self.address} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.host}:{lport};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:probe@{self.host}>;tag={uuid.uuid4().hex[:8]}\r\n"
                f"To: <sip:{self.address}>\r\n"
                f"Call-ID: {uuid.uuid4().hex}\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.sendto(msg.encode(), (self.host, self.port))
            try:
                data = s.recv(4096)
            except OSError:
                return False
            return data.startswith(b"SIP/2.0 200")


def _parse_event(line: str, at: float) -> KamEvent:
    parts = line[line.index(EVENT_TAG) + len(EVENT_TAG) :].split("|")
    fields: dict[str, str] = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        fields[key] = value.strip()
    return KamEvent(at=at, kind=parts[0], fields=fields)


@contextmanager
def running_kamailio(users: Mapping[str, str], **kwargs: Any) -> Iterator[Kamailio]:
    """A started Kamailio, always stopped (and its temp dir removed) afterwards."""
    kam = Kamailio(users, **kwargs)
    try:
        kam.start()
        yield kam
    finally:
        kam.close()


# -- one agent worker in a child process ----------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(settings: Mapping[str, Any]) -> str:
    """TOML for a settings dict of scalars and one level of tables."""
    head = [f"{k} = {_toml_value(v)}" for k, v in settings.items() if not isinstance(v, Mapping)]
    out = [*head]
    for name, table in settings.items():
        if isinstance(table, Mapping):
            out.append(f"\n[{name}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"


def worker_settings(port: int, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """Settings for a test worker on 127.0.0.1:`port` with fake providers; `sections`
    (e.g. ``sip={...}``, ``registration={...}``) are merged over the defaults."""
    base: dict[str, Any] = {
        "log_level": "INFO",
        "sip": {
            "listen_host": "127.0.0.1",
            "listen_port": port,
            # Each worker gets its own RTP range so parallel test agents never collide.
            "rtp_port_start": rtp_base_for(port, 40),
            "rtp_port_range": 40,
        },
        "providers": {"stt": "fake", "tts": "fake", "brain": "fake"},
    }
    for name, table in sections.items():
        base[name] = {**base.get(name, {}), **table}
    return base


class WorkerProcess:
    """One agent worker as a child process; its log lines are collected with arrival times."""

    def __init__(self, config: Path, cwd: Path, port: int) -> None:
        self.port = port
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAGENT_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.lines: list[str] = []
        self.times: list[float] = []
        self.listening = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.kamailio", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
            cwd=cwd,  # no stray .env is read
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def target(self) -> str:
        """host:port of the worker's SIP transport."""
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:  # closed at end of output: this thread is its only reader
            for raw in self.proc.stderr:
                self.times.append(time.monotonic())
                self.lines.append(raw.rstrip("\n"))
                if "listening on udp" in raw:
                    self.listening.set()

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Wait for the "listening" line; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listening.wait(0.1):
                return
            if self.proc.poll() is not None:
                break
        raise AssertionError("worker did not start:\n" + self.tail())

    def tail(self, n: int = 30) -> str:
        """The last log lines, for failure messages."""
        return "\n".join(self.lines[-n:])

    def matching(self, needle: str, after: float = 0.0) -> list[tuple[float, str]]:
        """(arrival time, line) of log lines containing `needle` that arrived after `after`."""
        n = len(self.lines)
        return [
            (t, line)
            for t, line in zip(self.times[:n], self.lines[:n], strict=False)
            if t > after and needle in line
        ]

    def count(self, needle: str) -> int:
        """How many log lines contain `needle`."""
        return len(self.matching(needle))

    def wait_line(self, needle: str, timeout: float, after: float = 0.0) -> tuple[float, str]:
        """The first line containing `needle` (after time `after`); fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(needle, after)
            if found:
                return found[0]
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                raise AssertionError(f"worker never logged {needle!r}:\n{self.tail()}")
            time.sleep(0.05)

    def set_accepting(self, accepting: bool) -> None:
        """Ask the worker to take (SIGUSR2) or refuse (SIGUSR1) new calls."""
        self.proc.send_signal(signal.SIGUSR2 if accepting else signal.SIGUSR1)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        rc = stop_process(self.proc, timeout)
        self._reader.join(2)
        return rc


@contextmanager
def running_worker(tmp: Path, settings: Mapping[str, Any]) -> Iterator[WorkerProcess]:
    """Write `settings` to a TOML file, start a worker on it, always stop it."""
    config = tmp / f"worker-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(toml_text(settings))
    worker = WorkerProcess(config, tmp, port=int(settings["sip"]["listen_port"]))
    try:
        worker.wait_listening()
        yield worker
    finally:
        rc = worker.stop()
        assert rc == 0, f"worker exited with {rc}:\n{worker.tail()}"


def wait_until(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> float:
    """Poll `cond` until true; returns the monotonic time it became true; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.monotonic()
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


# -- sipp --------------------------------------------------------------------------------------
_REFUSED_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE refused with {code}">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true" />
  <recv response="{code}">{check}
  </recv>{reference}
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""

_RETRY_AFTER_CHECK = """
    <action>
      <ereg regexp="[0-9]+" search_in="hdr" header="Retry-After:" check_it="true"
            assign_to="retry_after" />
    </action>"""


def refused_scenario(tmp: Path, code: int, *, retry_after: bool = False) -> Path:
    """A sipp UAC scenario: one INVITE that must be refused with `code` (and, if asked,
    carry a numeric Retry-After), then the ACK."""
    path = tmp / f"refused-{code}.xml"
    check = _RETRY_AFTER_CHECK if retry_after else ""
    # sipp rejects a scenario whose variable is assigned but never used: mark it used.
    reference = '\n  <Reference variables="retry_after" />' if retry_after else ""
    path.write_text(_REFUSED_SCENARIO.format(code=code, check=check, reference=reference))
    return path


def sipp_available() -> bool:
    """Whether sipp (Debian sip-tester) is installed."""
    return shutil.which("sipp") is not None


def sipp_cmd(
    target: str,
    *,
    scenario: Path | None = None,
    source_ip: str = "127.0.0.1",
    pause_ms: int = 500,
    timeout_s: int = 20,
) -> list[str]:
    """sipp placing one call to `target` (host:port) from `source_ip`: the built-in
    ``uac`` (INVITE, 200, ACK, pause, BYE) or `scenario`."""
    cmd = ["sipp", *(["-sf", str(scenario)] if scenario else ["-sn", "uac"])]
    cmd += [target, "-s", "agent", "-m", "1", "-l", "1", "-i", source_ip, "-p", "0"]
    cmd += ["-mp", str(free_udp_port()), "-d", str(pause_ms), "-nostdin"]
    cmd += ["-timeout", f"{timeout_s}s", "-timeout_error", "-trace_err"]
    return cmd


def run_sipp(cwd: Path, target: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run one sipp call to completion (exit 0: the scenario passed)."""
    timeout = int(kwargs.get("timeout_s", 20)) + 10
    return subprocess.run(
        sipp_cmd(target, **kwargs), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def start_sipp(cwd: Path, target: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start one sipp call in the background (finish it with `finish_sipp`)."""
    return subprocess.Popen(
        sipp_cmd(target, **kwargs),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_sipp(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    """Wait for a background sipp; (exit status, output tail). Killed if it overruns."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return int(proc.returncode), (out[-1500:] + err[-1500:])


# -- the child process's entry --------------------------------------------------------------
async def _serve_worker(config: str) -> int:
    from gateway.pool.worker import AgentWorker
    from gateway.providers.registry import build_providers
    from gateway.sip.endpoint import SipError
    from sip_config import load_settings

    settings = load_settings(config, env_file=None)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    providers = await asyncio.to_thread(build_providers, settings)
    worker = AgentWorker(settings, providers)
    loop.add_signal_handler(signal.SIGUSR1, worker.ua.set_accepting, False)
    loop.add_signal_handler(signal.SIGUSR2, worker.ua.set_accepting, True)
    try:
        await worker.serve(stop)
    except SipError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 1
    finally:
        await providers.close()
    return 0


def main(argv: list[str]) -> int:
    """``python -m tests.helpers.kamailio CONFIG``: run one agent worker until SIGTERM."""
    import logging

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(_serve_worker(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
