"""Mutated SIP requests for fuzzing the agent on the wire (seeded, so a run can be repeated).

`Mutator.message()` takes a well-formed request (INVITE with and without SDP, in and out of
a dialog, OPTIONS, BYE, CANCEL, INFO) and applies one to three mutations: byte flips,
insertions, deletions and repeats; truncation; a header repeated, dropped, emptied or
given a huge, numeric-edge, non-UTF-8 or control-character value; a broken request line or
method; a wrong Content-Length; and SDP damage (many media lines, long or odd addresses,
odd ports, IPv6, huge attribute and format lists).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from gateway.devtools.demo import rtp_base_for
from tests.helpers.sipraw import RawSip, Response, dialog_of, sdp_offer

_EDGE_NUMBERS = (
    "0",
    "-1",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e9",
    "0x10",
    "",
)
_METHODS = ("INVITE", "OPTIONS", "BYE", "CANCEL", "INFO", "UPDATE", "PRACK", "REFER", "ACK")


class Mutator:
    """Deterministic for a given seed, target and sender."""

    def __init__(self, seed: int, sip: RawSip, target: tuple[str, int]) -> None:
        self.rng = random.Random(seed)
        self.sip = sip
        self.target = target

    # -- seeds ----------------------------------------------------------------------------
    def seed_message(self) -> bytes:
        """A well-formed request to mutate."""
        rng = self.rng
        kind = rng.choice(("invite-sdp", "invite-sdp", "invite", "in-dialog", "other"))
        if kind == "invite-sdp":
            return self.sip.request("INVITE", self.target, body=sdp_offer(port=40000))
        if kind == "invite":
            return self.sip.request("INVITE", self.target)
        if kind == "in-dialog":
            method = rng.choice(("INVITE", "BYE", "INFO", "UPDATE"))
            body = sdp_offer() if method in ("INVITE", "UPDATE") else ""
            return self.sip.request(
                method, self.target, to_tag="fz" + str(rng.randrange(999)), body=body
            )
        return self.sip.request(rng.choice(_METHODS), self.target)

    # -- mutations ------------------------------------------------------------------------
    def message(self) -> bytes:
        """One mutated request (at most 4000 bytes, a UDP datagram pjsip reads whole)."""
        data = self.seed_message()
        for _ in range(self.rng.randint(1, 3)):
            mutation = self.rng.choice(self._mutations)
            try:
                data = mutation(self, data) or data
            except (ValueError, IndexError, StopIteration):
                continue  # too little left of the message for this mutation
        return data[:4000]

    def _flip(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(len(buf))
            buf[i] = self.rng.randrange(256)
        return bytes(buf)

    def _insert(self, data: bytes) -> bytes:
        i = self.rng.randrange(len(data) + 1)
        junk = self.rng.choice(
            (b"\x00", b"\r\n", b"\r\n\r\n", b";", b":", b"<", b">", b'"', b"%", b"\\", b"\xff\xfe")
        )
        return data[:i] + junk * self.rng.randint(1, 64) + data[i:]

    def _delete(self, data: bytes) -> bytes:
        i = self.rng.randrange(len(data))
        return data[:i] + data[i + self.rng.randint(1, 64) :]

    def _repeat(self, data: bytes) -> bytes:
        i = self.rng.randrange(len(data))
        j = min(len(data), i + self.rng.randint(1, 80))
        return data[:j] + data[i:j] * self.rng.randint(2, 40) + data[j:]

    def _truncate(self, data: bytes) -> bytes:
        return data[: self.rng.randrange(1, len(data))]

    def _headers(self, data: bytes) -> tuple[list[bytes], bytes]:
        head, _, body = data.partition(b"\r\n\r\n")
        return head.split(b"\r\n"), body

    @staticmethod
    def _join(lines: list[bytes], body: bytes) -> bytes:
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _header_repeat(self, data: bytes) -> bytes:
        lines, body = self._headers(data)
        i = self.rng.randrange(1, len(lines))
        lines[i + 1 : i + 1] = [lines[i]] * self.rng.randint(2, 60)
        return self._join(lines, body)

    def _header_drop(self, data: bytes) -> bytes:
        lines, body = self._headers(data)
        del lines[self.rng.randrange(1, len(lines))]
        return self._join(lines, body)

    def _header_value(self, data: bytes) -> bytes:
        lines, body = self._headers(data)
        i = self.rng.randrange(1, len(lines))
        name = lines[i].split(b":", 1)[0]
        value = self.rng.choice(
            (
                b"",
                b"A" * self.rng.choice((255, 256, 1024, 3000)),
                self.rng.choice(_EDGE_NUMBERS).encode(),
                b"\xc0\xaf\xed\xa0\x80\xff",
                b"%s%n%x" * 8,
                b"<sip:" + b"x" * 300 + b"@[::1]>;tag=" + b"t" * 200,
                b'"' * 33,
                b"\x01\x02\x7f",
            )
        )
        lines[i] = name + b": " + value
        return self._join(lines, body)

    def _request_line(self, data: bytes) -> bytes:
        lines, body = self._headers(data)
        words = lines[0].split(b" ")
        pick = self.rng.randrange(4)
        if pick == 0:
            words[0] = self.rng.choice((b"INV ITE", b"invite", b"X" * 200, b"!!", b"REGISTER"))
        elif pick == 1 and len(words) > 1:
            words[1] = self.rng.choice(
                (
                    b"sip:",
                    b"tel:+1",
                    b"sips:a@b;" + b"p=1;" * 100,
                    b"<sip:a@b>",
                    b"sip:a@" + b"9" * 300,
                )
            )
        elif pick == 2:
            words[-1] = self.rng.choice((b"SIP/3.0", b"SIP/2", b"HTTP/1.1", b""))
        else:
            words = words[:1]
        lines[0] = b" ".join(words)
        return self._join(lines, body)

    def _content_length(self, data: bytes) -> bytes:
        lines, body = self._headers(data)
        value = self.rng.choice((*_EDGE_NUMBERS, "5", "100000", str(len(body) + 1)))
        lines = [ln for ln in lines if not ln.lower().startswith((b"content-length:", b"l:"))]
        lines.append(b"Content-Length: " + value.encode())
        return self._join(lines, body)

    def _sdp(self, data: bytes) -> bytes:
        lines, _ = self._headers(data)
        rng = self.rng
        pick = rng.randrange(8)
        if pick == 0:
            body = sdp_offer(audio_lines=rng.choice((3, 16, 40)))
        elif pick == 1:
            body = sdp_offer(
                connection=rng.choice(("a" * rng.choice((253, 254, 255, 400)), "x.example"))
            )
        elif pick == 2:
            body = sdp_offer(connection="::1").replace("IN IP4 ::1", "IN IP6 ::1")
        elif pick == 3:
            body = sdp_offer().replace("m=audio 40000", "m=audio " + rng.choice(_EDGE_NUMBERS))
        elif pick == 4:
            body = sdp_offer(codecs=" ".join(str(i) for i in range(rng.choice((33, 128)))))
        elif pick == 5:
            body = sdp_offer() + "a=rtcp:1 IN IP4 " + "r" * 300 + "\r\n"
        elif pick == 6:
            body = sdp_offer() + "a=x:" + "y" * 2000 + "\r\n" + "a=z\r\n" * 80
        else:
            body = sdp_offer().replace("v=0", "v=1").replace("\r\n", "\n")
        lines = [
            ln
            for ln in lines
            if not ln.lower().startswith((b"content-length:", b"content-type:", b"l:", b"c:"))
        ]
        lines += [b"Content-Type: application/sdp", f"Content-Length: {len(body)}".encode()]
        return self._join(lines, body.encode())

    _mutations = (
        _flip,
        _insert,
        _delete,
        _repeat,
        _truncate,
        _header_repeat,
        _header_drop,
        _header_value,
        _header_value,
        _request_line,
        _content_length,
        _sdp,
        _sdp,
        _sdp,
    )


def fuzz(
    target: tuple[str, int],
    count: int,
    *,
    seed: int,
    rate: float = 50.0,
    sources: tuple[str, ...] = ("127.0.0.1", "127.0.0.2"),
) -> dict[int, int]:
    """Send `count` mutated requests to `target` at `rate` a second, alternating between
    `sources` (an allowed one and a stranger); returns how many answers of each status came
    back."""
    senders = [RawSip(src) for src in sources]
    mutators = [Mutator(seed * 1000 + i, s, target) for i, s in enumerate(senders)]
    codes: dict[int, int] = {}
    start = time.monotonic()
    try:
        for n in range(count):
            i = n % len(senders)
            senders[i].send(mutators[i].message(), target)
            wait = start + (n + 1) / rate - time.monotonic()
            for resp in senders[i].receive(max(0.0, wait)):
                codes[resp.code] = codes.get(resp.code, 0) + 1
                _hang_up(senders[i], resp, target)
        for sender in senders:
            for resp in sender.receive(0.5):
                codes[resp.code] = codes.get(resp.code, 0) + 1
    finally:
        for sender in senders:
            sender.close()
    return codes


def _hang_up(sip: RawSip, answer: Response, target: tuple[str, int]) -> None:
    """A call the agent answered is ACKed and hung up, so its slot is free again at once
    (a fuzzer that never ACKs holds it until pjsua gives up on the ACK, 32 s)."""
    if answer.code != 200 or not (answer.header("cseq") or "").endswith("INVITE"):
        return
    dialog = dialog_of(answer, target)
    if dialog is not None:
        with contextlib.suppress(OSError, ValueError):
            sip.send(dialog.request(sip, "ACK"), target)
            sip.send(dialog.request(sip, "BYE"), target)


def pool_env(workdir: Path, port: int) -> dict[str, str]:
    """Environment of a `sipagent serve` pool under attack: fake providers, allow-list
    127.0.0.1/32, no app, records in `workdir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPAGENT_")}
    env.update(
        {
            "SIPAGENT_PROVIDERS__STT": "fake",
            "SIPAGENT_PROVIDERS__TTS": "fake",
            "SIPAGENT_PROVIDERS__BRAIN": "fake",
            "SIPAGENT_APP__ENABLED": "false",
            "SIPAGENT_SIP__ALLOW_NETWORKS": "127.0.0.1/32",
            "SIPAGENT_SIP__RTP_PORT_START": str(rtp_base_for(port, 40 * 8)),
            "SIPAGENT_RECORDS__URL": f"sqlite:///{workdir / 'records.db'}",
            "SIPAGENT_POOL__DRAIN_TIMEOUT_S": "2",
        }
    )
    return env


def question_call(port: int) -> dict[str, object]:
    """One softphone call with a question; its JSON report."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "call",
            f"sip:agent@127.0.0.1:{port}",
            "--say",
            "What are your opening hours?",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            report: dict[str, object] = json.loads(line)
            return report
    return {"answered": False, "error": out.stderr[-500:]}
