"""How the SIP guard's refusals reach the log: one line per refusal, but a source refused
again within a minute is counted, not logged (a scan or a flood must not flood the log).

`AgentUA` reports each refusal of its guard (`gateway.sip.guard`) here; that happens on
the pj thread. No pjsua2 here.
"""

from __future__ import annotations

import logging
import time

from gateway.sip.allowlist import source_ip
from gateway.sip.screen import CHALLENGED, Refusal

# The user agent's log lines keep its logger name, wherever they are written.
log = logging.getLogger("gateway.sip.agent")


class RefusalLog:
    """One WARNING per refused source per `window_s`; repeats are counted, not logged."""

    def __init__(self, window_s: float = 60.0, max_sources: int = 1024) -> None:
        self.window_s = window_s
        self.max_sources = max_sources
        self._seen: dict[str, tuple[float, int]] = {}

    def note(self, key: str, now: float) -> int | None:
        """None: stay quiet; otherwise log now (returns how many were suppressed before)."""
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if len(self._seen) >= self.max_sources:
            self._seen.clear()  # a scan from many sources: forget, stay bounded
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0

    def report(self, method: str, source: str, refusal: Refusal) -> None:
        """Log one refusal of a request (`method`, or "response") from `source`: a drain
        at INFO, a digest challenge at DEBUG, anything else as a rate-limited WARNING."""
        what = (
            f"dropped ({refusal.why})"
            if refusal.drop
            else (f"refused with {refusal.code}: {refusal.why}")
        )
        if refusal.code == 503 and refusal.why == "draining":
            log.info("%s from %s %s", method, source, what)
            return
        if refusal.code == 401 and refusal.why.startswith(CHALLENGED):
            log.debug("%s from %s %s", method, source, what)
            return
        key = f"{source_ip(source) or source}/{refusal.code}"
        suppressed = self.note(key, time.monotonic())
        if suppressed is None:
            return
        more = f" ({suppressed} more refused since the last warning)" if suppressed else ""
        log.warning("%s from %s %s%s", method, source, what, more)
