"""Serve the answer_url app with waitress (a production WSGI server) on a background thread.

The Flask development server is never used.  The listening socket is bound here, so port 0
picks a free port and :attr:`AppServer.port` tells which.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Final

from flask import Flask
from waitress import wasyncore
from waitress.server import BaseWSGIServer, create_server

__all__ = ["AppServer", "serve_app"]

log = logging.getLogger(__name__)

# How often the event loop looks at the stop flag; also the longest close() waits for it.
_LOOP_TICK_S: Final = 0.1
_TASK_SHUTDOWN_S: Final = 5  # waitress takes whole seconds


class AppServer:
    """A running waitress server; stop it with :meth:`close`."""

    def __init__(
        self, server: BaseWSGIServer, socket_map: dict[int, socket.socket], sock: socket.socket
    ) -> None:
        """Wrap a created (not yet running) server; use :func:`serve_app` instead."""
        self._server = server
        self._map = socket_map
        bound = sock.getsockname()
        self.host: str = str(bound[0])
        self.port: int = int(bound[1])
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="answer-url-http", daemon=True)

    @property
    def url(self) -> str:
        """``http://host:port`` the server listens on (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the serving thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start serving on the background thread."""
        self._thread.start()

    def _run(self) -> None:
        # waitress's own run() loops until its socket map is empty; this loop also stops
        # on request, so close() never has to close sockets under a running select().
        try:
            while not self._stop.is_set() and self._map:
                wasyncore.loop(timeout=_LOOP_TICK_S, map=self._map, count=1)
        except Exception:
            log.exception("answer_url HTTP server stopped on an error")

    def close(self) -> None:
        """Stop accepting, let requests in progress finish (up to a few seconds), close
        every socket and join the thread.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.accepting = False
        self._server.task_dispatcher.shutdown(timeout=_TASK_SHUTDOWN_S)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=_TASK_SHUTDOWN_S + 1)
        for dispatcher in list(self._map.values()):
            with contextlib.suppress(OSError):  # a peer may have closed it already
                dispatcher.close()
        self._map.clear()

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _allow_open_files(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (up to the hard
    limit); return the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", target, exc)
    return int(soft) if soft != resource.RLIM_INFINITY else wanted


def serve_app(
    app: Flask,
    host: str,
    port: int,
    threads: int = 8,
    *,
    max_connections: int = 1000,
    idle_timeout_s: int = 60,
) -> AppServer:
    """Serve ``app`` with waitress on ``host:port`` (0: any free port) with ``threads``
    worker threads, in a daemon thread.  Returns once the socket is listening.

    Idle and slow connections hold no thread (waitress reads and writes them on its event
    loop), but waitress stops accepting at its connection limit (100 by default), which a
    few idle clients could fill and so block Plivo's callbacks: up to ``max_connections``
    are taken (the open-file limit is raised to fit, and poll() replaces select(), which
    stops at 1024 descriptors), each closed after ``idle_timeout_s`` without traffic.

    Raises:
        OSError: the address cannot be resolved or bound.
    """
    limit = _allow_open_files(max_connections + 256)  # room for SIP, records, pipes
    max_connections = max(1, min(max_connections, limit - 256))
    family, socktype, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        socket_map: dict[int, socket.socket] = {}
        server = create_server(
            app,
            map=socket_map,
            sockets=[sock],
            threads=threads,
            ident="sipagent",
            connection_limit=max_connections,
            channel_timeout=idle_timeout_s,
            asyncore_use_poll=True,
        )
    except BaseException:
        sock.close()
        raise
    if not isinstance(server, BaseWSGIServer):  # one socket always gives one server
        server.close()
        sock.close()
        raise RuntimeError("waitress created several servers for one socket")
    served = AppServer(server, socket_map, sock)
    served.start()
    log.info("answer_url app listening on %s", served.url)
    return served
