"""The SIP guard: a pjsip module, ahead of pjsua's, that answers hostile or unwanted
requests statelessly before pjsua2 opens media sockets or parses their SDP.

pjsua2 offers no hook before it acts on an INVITE (``onIncomingCall`` runs after the call's
RTP and RTCP sockets are bound), so the guard registers a plain pjsip module through the
C API the wheel exports (``pjsip_endpt_register_module``), with ctypes. Its priority puts
it after the transaction layer (retransmissions of a request pjsua2 already took are
absorbed there and never counted twice) and before the dialog layer and pjsua's modules,
so it sees every new request and every in-dialog one.

The module reads three things from pjsip's ``pjsip_rx_data``: the message bytes
(``msg_info.msg_buf`` / ``len``) and the source (``pkt_info.src_name`` / ``src_port``). Their
offsets are those of pjproject 2.15.1 on 64-bit Linux, the wheel this project pins; a
self-test at start-up sends the guard a probe over UDP and refuses to run when what it
reads is not what was sent (another wheel build would fail there, not on a caller).

Everything here runs on the pj thread (the module's callback runs inside
``libHandleEvents``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import pjsua2 as pj

from gateway.sip.screen import Refusal

log = logging.getLogger(__name__)

# pjsip_rx_data on x86_64, pjproject 2.15.1 (PJSIP_MAX_PKT_LEN 4000, PJ_INET6_ADDRSTRLEN 46):
#   tp_info: pool, transport, tp_data (3 pointers) + pjsip_rx_data_op_key (34 + 1 pointers)
#   pkt_info: timestamp (16) packet[4000] zero(4) len(8, aligned) src_addr(28)
#             src_addr_len(4) src_name[46] src_port(4, aligned)
#   msg_info: msg_buf (pointer), len (int), ...
_POOL = 0
_SRC_NAME = 4368
_SRC_NAME_LEN = 46
_SRC_PORT = 4416
_MSG_BUF = 4424
_MSG_LEN = 4432
# pjsip_hdr: prev, next, type (+pad), name, sname, vptr.
_HDR_SIZE = 64
# Between mod-tsx-layer (16) and mod-ua (32).
_PRIORITY = 31

_RX = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _PjStr(ctypes.Structure):
    _fields_ = (("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t))


class _Module(ctypes.Structure):
    _fields_ = (
        ("prev", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("name", _PjStr),
        ("id", ctypes.c_int),
        ("priority", ctypes.c_int),
        ("load", ctypes.c_void_p),
        ("start", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
        ("unload", ctypes.c_void_p),
        ("on_rx_request", _RX),
        ("on_rx_response", _RX),
        ("on_tx_request", ctypes.c_void_p),
        ("on_tx_response", ctypes.c_void_p),
        ("on_tsx_state", ctypes.c_void_p),
    )


def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(pj._pjsua2.__file__)
    lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
    lib.pjsua_get_pjsip_endpt.argtypes = ()
    lib.pjsip_endpt_register_module.restype = ctypes.c_int
    lib.pjsip_endpt_register_module.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    lib.pjsip_endpt_unregister_module.restype = ctypes.c_int
    lib.pjsip_endpt_unregister_module.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    lib.pjsip_endpt_respond_stateless.restype = ctypes.c_int
    lib.pjsip_endpt_respond_stateless.argtypes = (
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    )
    lib.pjsip_generic_string_hdr_create.restype = ctypes.c_void_p
    lib.pjsip_generic_string_hdr_create.argtypes = (
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    )
    lib.pj_list_insert_before.restype = None
    lib.pj_list_insert_before.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    return lib


# What the guard asks its owner: (message bytes, "ip:port") -> a Refusal or None (pass).
Decide = Callable[[bytes, str], Refusal | None]


class GuardError(RuntimeError):
    """The guard cannot run on this pjsua2 build."""


class SipGuard:
    """Installs the module on the pj thread and routes each message to `on_request` /
    `on_response`; answers (or drops) what they refuse."""

    def __init__(self, on_request: Decide, on_response: Decide) -> None:
        self.on_request = on_request
        self.on_response = on_response
        self._lib: ctypes.CDLL | None = None
        self._endpt: int | None = None
        self._module: _Module | None = None
        self._name = b"mod-sipagent-guard"
        # Keep the callbacks alive as long as the module is registered.
        self._rx_request = _RX(self._rx_request_cb)
        self._rx_response = _RX(self._rx_response_cb)
        self._probe: bytes | None = None
        self._probe_seen: tuple[str, bytes] | None = None
        self.errors = 0
        self.refused = 0

    # -- life cycle (pj thread) -----------------------------------------------------------
    def install(self) -> None:
        """Register the module with pjsua's SIP endpoint (after libInit)."""
        lib = _library()
        endpt = lib.pjsua_get_pjsip_endpt()
        if not endpt:
            raise GuardError("pjsua has no SIP endpoint yet")
        mod = _Module()
        mod.name = _PjStr(self._name, len(self._name))
        mod.id = -1
        mod.priority = _PRIORITY
        mod.on_rx_request = self._rx_request
        mod.on_rx_response = self._rx_response
        status = lib.pjsip_endpt_register_module(endpt, ctypes.addressof(mod))
        if status != 0:
            raise GuardError(f"cannot register the SIP guard module (pj status {status})")
        self._lib, self._endpt, self._module = lib, endpt, mod

    def uninstall(self) -> None:
        """Unregister the module (before libDestroy)."""
        if self._lib is not None and self._endpt and self._module is not None:
            self._lib.pjsip_endpt_unregister_module(self._endpt, ctypes.addressof(self._module))
        self._lib = self._endpt = self._module = None

    def self_test(self, ep: Any, host: str, port: int, timeout: float = 3.0) -> None:
        """Send the guard an OPTIONS over UDP from `host` and check that the bytes and the
        source it reads are what was sent, and that its answer arrives. Pumps pjsua2's
        events itself (pj thread). Raises GuardError otherwise."""
        try:
            # pjsip names the source by its address, so probe from an address, not a name.
            target = "127.0.0.1" if host in ("", "0.0.0.0") else socket.gethostbyname(host)
        except OSError as exc:
            raise GuardError(f"cannot resolve {host} for the self-test: {exc}") from None
        token = secrets.token_hex(8)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((target, 0))
            sock.setblocking(False)
            src_port = sock.getsockname()[1]
            probe = (
                f"OPTIONS sip:guard-test@{target}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {target}:{src_port};branch=z9hG4bK{token};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:guard-test@{target}>;tag={token}\r\n"
                f"To: <sip:guard-test@{target}>\r\n"
                f"Call-ID: sipagent-guard-{token}\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            self._probe, self._probe_seen = probe, None
            try:
                sock.sendto(probe, (target, port))
                answer = b""
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and not answer:
                    ep.libHandleEvents(10)
                    with contextlib.suppress(BlockingIOError):
                        answer = sock.recv(4096)
            finally:
                self._probe = None
        seen = self._probe_seen
        if seen is None:
            raise GuardError("the SIP guard did not see its self-test request")
        if seen != (f"{target}:{src_port}", probe):
            raise GuardError(
                "the SIP guard read another message or source than it was sent: this pjsua2"
                " build's pjsip_rx_data layout is not the one the guard knows (2.15.1, 64-bit)"
            )
        if not answer.startswith(b"SIP/2.0 200 ") or f"sipagent-guard-{token}".encode() not in (
            answer
        ):
            raise GuardError("the SIP guard's self-test answer did not arrive")

    # -- the module's callbacks (pj thread, inside libHandleEvents) ------------------------
    def _read(self, rdata: int) -> tuple[bytes, str]:
        buf = ctypes.c_void_p.from_address(rdata + _MSG_BUF).value
        size = ctypes.c_int.from_address(rdata + _MSG_LEN).value
        if not buf or size <= 0 or size > 65536:
            raise ValueError("no message in rx data")
        raw = ctypes.string_at(buf, size)
        name = ctypes.string_at(rdata + _SRC_NAME, _SRC_NAME_LEN).split(b"\0", 1)[0]
        port = ctypes.c_int.from_address(rdata + _SRC_PORT).value
        return raw, f"{name.decode('ascii', 'replace')}:{port}"

    def _rx_request_cb(self, rdata: int) -> int:
        try:
            raw, source = self._read(rdata)
            if self._probe is not None and raw == self._probe:
                self._probe_seen = (source, raw)
                self._respond(rdata, Refusal(200, "OK", "self-test"))
                return 1
            refusal = self.on_request(raw, source)
            if refusal is None:
                return 0
            self.refused += 1
            if not refusal.drop:
                self._respond(rdata, refusal)
            return 1
        except Exception:
            self._error("request")
            return 0

    def _rx_response_cb(self, rdata: int) -> int:
        try:
            raw, source = self._read(rdata)
            refusal = self.on_response(raw, source)
            return 0 if refusal is None else 1
        except Exception:
            self._error("response")
            return 0

    def _error(self, what: str) -> None:
        self.errors += 1
        if self.errors <= 5 or self.errors % 1000 == 0:
            log.exception("SIP guard: checking a %s failed (%d so far)", what, self.errors)

    def _respond(self, rdata: int, refusal: Refusal) -> None:
        lib = self._lib
        assert lib is not None and self._endpt
        keep: list[Any] = []

        def pj_str(text: str) -> int:
            data = text.encode("utf-8")
            s = _PjStr(data, len(data))
            keep.append((data, s))
            return ctypes.addressof(s)

        hdr_list = None
        if refusal.headers:
            pool = ctypes.c_void_p.from_address(rdata + _POOL).value
            sentinel = ctypes.create_string_buffer(_HDR_SIZE)
            keep.append(sentinel)
            head = ctypes.addressof(sentinel)
            ctypes.c_void_p.from_address(head).value = head
            ctypes.c_void_p.from_address(head + 8).value = head
            for name, value in refusal.headers:
                hdr = lib.pjsip_generic_string_hdr_create(pool, pj_str(name), pj_str(value))
                if hdr:
                    lib.pj_list_insert_before(head, hdr)
            hdr_list = head
        status = lib.pjsip_endpt_respond_stateless(
            self._endpt, rdata, refusal.code, pj_str(refusal.reason), hdr_list, None
        )
        if status != 0:
            log.debug("SIP guard: stateless %d not sent (pj status %d)", refusal.code, status)
