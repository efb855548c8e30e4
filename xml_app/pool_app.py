"""The answer_url app as `sipagent serve` runs it: over the worker pool's state and
requests, served on waitress threads in the supervisor's process.

The pool knows the app only as a `gateway.pool.supervisor.StartApp`, which this function
is: the entry point (`gateway.cli serve`) hands it to the pool, so the pool never imports
`xml_app`, while the app imports the pool's state and outcomes.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.pool.metrics import PoolMetrics
from gateway.pool.outcomes import PlaceCall, PushReply
from gateway.pool.state import PoolState
from gateway.records.store import CallRecords
from sip_config import ConfigError, Settings
from xml_app.app import create_app
from xml_app.server import AppServer, serve_app


def start_pool_app(
    settings: Settings,
    pool: PoolState,
    records: CallRecords,
    push: PushReply,
    dial: PlaceCall,
    say: Callable[[str], None],
    metrics: PoolMetrics,
) -> tuple[AppServer, str] | None:
    """Build and serve the app; returns the server and the URL Plivo reaches it at, or
    None when its settings leave it nothing to do (said on ``say``).  Raises ConfigError
    naming ``app.listen_port`` when it cannot listen."""
    try:
        app = create_app(settings, pool, records, push=push, dial=dial, metrics=metrics)
    except ConfigError as exc:
        say(f"answer_url app not started: {exc}")
        return None
    a = settings.app
    try:
        server = serve_app(
            app,
            a.listen_host,
            a.listen_port,
            a.threads,
            max_connections=a.max_connections,
            idle_timeout_s=a.idle_timeout_s,
        )
    except OSError as exc:
        raise ConfigError(
            f"app.listen_port: the answer_url app cannot listen on"
            f" {a.listen_host}:{a.listen_port}: {exc.strerror or exc}"
        ) from None
    say(f"answer_url app listening on {server.url}")
    return server, a.public_url or server.url
