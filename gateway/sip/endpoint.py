"""The pj thread: one thread owns the pjsua2 Endpoint and makes every pjsua2 call.

Other threads hand it work with `PjThread.submit()` (returns a concurrent Future) or
`PjThread.post()` (fire and forget). pjsua2 objects never leave this thread: the asyncio side
talks about calls by id. Objects are deleted here, explicitly, after libHandleEvents returns
(never inside their own callbacks, never by the garbage collector on another thread).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pjsua2 as pj

from gateway.audio.pcm import FRAME_BYTES, SILENCE_FRAME
from gateway.audio.ring import InboundRing, PlayoutRing
from gateway.sip.frames import read_frame, write_frame

log = logging.getLogger(__name__)
T = TypeVar("T")

CODEC_IDS = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1"}


class SipError(RuntimeError):
    """A SIP stack operation failed (message is meant for the user)."""


@dataclass
class EndpointOptions:
    """What the Endpoint needs; built from settings by the caller."""

    host: str = "127.0.0.1"
    port: int = 5060
    public_host: str | None = None
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    max_calls: int = 4
    user_agent: str = ""  # empty: no User-Agent header
    log_level: int = 1
    # Jitter buffer prefetch in ms: a small start, room to adapt on a jittery path.
    jb_init_ms: int = 40
    jb_min_pre_ms: int = 20
    jb_max_pre_ms: int = 200


class MediaBridgePort(pj.AudioMediaPort):  # type: ignore[misc]
    """Moves 20 ms frames between the conference bridge and two rings.

    Runs on pjmedia's clock thread: copy bytes, touch a deque, return. Nothing else.
    """

    def __init__(self, inbound: InboundRing, playout: PlayoutRing) -> None:
        super().__init__()
        self.inbound = inbound
        self.playout = playout
        # On hold: what arrives is replaced by silence and the playout queue waits.
        self.held = False

    def onFrameReceived(self, frame: Any) -> None:
        data = read_frame(frame)
        if len(data) == FRAME_BYTES:
            self.inbound.push(SILENCE_FRAME if self.held else data)

    def onFrameRequested(self, frame: Any) -> None:
        if self.held:
            self.playout.idle_tick()
            write_frame(frame, SILENCE_FRAME)
            return
        data = self.playout.pop()
        write_frame(frame, data if data is not None else SILENCE_FRAME)


def add_sip_headers(op: Any, headers: Mapping[str, str]) -> None:
    """Put extra SIP headers on a pjsua2 operation parameter (``CallOpParam``)."""
    for name, value in headers.items():
        header = pj.SipHeader()
        header.hName = name
        header.hValue = value
        op.txOption.headers.append(header)


def create_bridge_port(name: str, inbound: InboundRing, playout: PlayoutRing) -> MediaBridgePort:
    """A registered 8 kHz mono 16-bit 20 ms port (pj thread only)."""
    fmt = pj.MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.clockRate = 8000
    fmt.channelCount = 1
    fmt.bitsPerSample = 16
    fmt.frameTimeUsec = 20000
    port = MediaBridgePort(inbound, playout)
    port.createPort(name, fmt)
    return port


class BridgePortPool:
    """Media ports, created on demand and reused; none is destroyed while calls run.

    pjmedia's conference bridge may still touch a port during the clock tick after it was
    removed, and a destroyed `AudioMediaPort` frees the memory it would touch: deleting a
    port right after its call ended crashed a process now and then. A released port is
    idle (its call's conference slot is gone) and waits for the next call; `clear()` drops
    them all just before libDestroy. Pj thread only.
    """

    def __init__(self) -> None:
        self._free: list[MediaBridgePort] = []
        self._all: list[MediaBridgePort] = []

    def acquire(self, inbound: InboundRing, playout: PlayoutRing) -> MediaBridgePort:
        """A port wired to these rings."""
        if self._free:
            port = self._free.pop()
        else:
            port = create_bridge_port(f"bridge{len(self._all)}", InboundRing(1), PlayoutRing())
            self._all.append(port)
        port.inbound = inbound
        port.playout = playout
        port.held = False
        return port

    def release(self, port: MediaBridgePort) -> None:
        """Unwire a port from its call's rings and keep it for the next call."""
        port.inbound = InboundRing(1)
        port.playout = PlayoutRing()
        port.held = False
        self._free.append(port)

    def clear(self) -> None:
        """Forget every port (before libDestroy, on the pj thread)."""
        self._free.clear()
        self._all.clear()


class PjThread:
    """Owns the Endpoint; runs pjsua2 work from a queue between `libHandleEvents` polls."""

    def __init__(self, options: EndpointOptions, name: str = "pj") -> None:
        self.options = options
        self.ep: Any = None
        self.transport_id: int = -1
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._tickers: list[tuple[float, float, Callable[[], None]]] = []
        self._garbage: list[Any] = []
        self._on_init: list[Callable[[], None]] = []
        self._on_started: list[Callable[[], None]] = []
        self._on_stopping: list[Callable[[], None]] = []
        self._on_destroy: list[Callable[[], None]] = []

    # -- life cycle -------------------------------------------------------------------------
    def on_init(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the pj thread after libInit, before the SIP transport exists (so
        it is in place before the first packet can arrive)."""
        self._on_init.append(fn)

    def on_started(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the pj thread once the library is up (before `start` returns)."""
        self._on_started.append(fn)

    def on_stopping(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the pj thread before the library is destroyed."""
        self._on_stopping.append(fn)

    def on_destroy(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the pj thread just before libDestroy (drop pjsua2 objects here)."""
        self._on_destroy.append(fn)

    def start(self, timeout: float = 20.0) -> None:
        """Start the thread and wait until SIP is listening; raises SipError on failure."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SipError("SIP stack did not start in time")
        if self._error is not None:
            raise SipError(str(self._error)) from self._error

    def stop(self, timeout: float = 10.0) -> None:
        """Hang up everything, destroy the library and join the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the pj thread is still running."""
        return self._thread.is_alive()

    # -- work hand-off ----------------------------------------------------------------------
    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn` on the pj thread; its result or exception lands in the Future."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the waiter
                fut.set_exception(exc)

        self._queue.put(job)
        return fut

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the pj thread, logging (not raising) its errors."""

        def job() -> None:
            try:
                fn()
            except Exception:
                log.exception("pj thread job failed")

        self._queue.put(job)

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        """Run `fn` on the pj thread every `interval` seconds (pj thread only)."""
        self._tickers.append((interval, time.monotonic() + interval, fn))

    def dispose(self, *objs: Any) -> None:
        """Keep pjsua2 objects alive until the current callback returns, then delete them."""
        self._garbage.extend(objs)

    # -- the thread -------------------------------------------------------------------------
    def _init_library(self) -> None:
        o = self.options
        ep = pj.Endpoint()
        # libCreate logs a banner to stdout at its default level before our LogConfig
        # applies; keep stdout clean for the commands that print reports there.
        saved = os.dup(1)
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
            ep.libCreate()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = o.max_calls
        cfg.uaConfig.userAgent = o.user_agent
        cfg.logConfig.level = o.log_level
        cfg.logConfig.consoleLevel = o.log_level
        cfg.medConfig.clockRate = 8000
        cfg.medConfig.sndClockRate = 8000
        cfg.medConfig.channelCount = 1
        cfg.medConfig.audioFramePtime = 20
        cfg.medConfig.ptime = 20
        cfg.medConfig.noVad = True  # keep RTP flowing through silence
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.quality = 4
        cfg.medConfig.jbInit = o.jb_init_ms
        cfg.medConfig.jbMinPre = o.jb_min_pre_ms
        cfg.medConfig.jbMaxPre = o.jb_max_pre_ms
        ep.libInit(cfg)
        self.ep = ep
        for fn in self._on_init:
            fn()
        tcfg = pj.TransportConfig()
        tcfg.port = o.port
        if o.host not in ("", "0.0.0.0"):
            tcfg.boundAddress = o.host
        if o.public_host:
            tcfg.publicAddress = o.public_host
        try:
            self.transport_id = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        except pj.Error as exc:
            raise SipError(
                f"cannot listen on udp {o.host}:{o.port}: {exc.reason.strip()}"
                " (port in use or address not on this machine?)"
            ) from None
        ep.libStart()
        ep.audDevManager().setNullDev()
        self.set_codecs(o.codecs)

    def set_codecs(self, order: tuple[str, ...]) -> None:
        """Enable exactly the named codecs, first = highest priority (pj thread only; the
        next offer or answer uses them).

        Names are "PCMU"/"PCMA" or a prefix of a pjsua2 codec id ("GSM", "speex/8000").
        """
        ids = [info.codecId for info in self.ep.codecEnum2()]
        prio: dict[str, int] = dict.fromkeys(ids, 0)
        for rank, name in enumerate(order):
            full = CODEC_IDS.get(name.upper(), name)
            for cid in ids:
                if cid == full or cid.lower().startswith(full.lower() + "/"):
                    prio[cid] = max(prio[cid], 250 - rank)
        if not any(prio.values()):
            raise SipError(f"none of the codecs {', '.join(order)} is available")
        for cid, p in prio.items():
            self.ep.codecSetPriority(cid, p)

    def local_port(self) -> int:
        """The UDP port SIP listens on (pj thread only)."""
        info = self.ep.transportGetInfo(self.transport_id)
        return int(info.localName.split(":")[-1])

    def _run(self) -> None:
        try:
            self._init_library()
            for fn in self._on_started:
                fn()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self._destroy()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                # SIP and timer events end the wait at once; only jobs posted from other
                # threads (hang-ups, drain) wait for it. 40 ms instead of 10 saves ~7 ms of
                # CPU per second per idle worker (measured by scripts/bench/capacity.py).
                self.ep.libHandleEvents(40)
                self._drain()
                self._tick()
                if self._garbage:
                    self._garbage.clear()
        except Exception:
            log.exception("pj thread crashed")
        finally:
            for fn in self._on_stopping:
                try:
                    fn()
                except Exception:
                    log.exception("shutdown hook failed")
            # Let BYEs go out and callbacks run before destroying.
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                self.ep.libHandleEvents(20)
                self._drain()
                self._garbage.clear()
            self._destroy()

    def _drain(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            job()

    def _tick(self) -> None:
        if not self._tickers:
            return
        now = time.monotonic()
        for i, (interval, due, fn) in enumerate(self._tickers):
            if now >= due:
                self._tickers[i] = (interval, now + interval, fn)
                try:
                    fn()
                except Exception:
                    log.exception("periodic pj job failed")

    def _destroy(self) -> None:
        for fn in self._on_destroy:
            try:
                fn()
            except Exception:
                log.exception("destroy hook failed")
        self._garbage.clear()
        if self.ep is not None:
            try:
                self.ep.libDestroy()
            except Exception:
                log.exception("libDestroy failed")
            self.ep = None
