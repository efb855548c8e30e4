"""Registering the agent's account with a registrar (register mode): the options, the
retry backoff, the status line, and `Registration`, which keeps the account registered.

pjsua refreshes a registration before it expires; a failure is retried here with
exponential backoff (pjsua's own retry has one fixed interval and is switched off). Calls
in progress are never dropped because of a registration failure.

`RetryBackoff` and `registration_status` are pure. `Registration` is owned by `AgentUA`
(one per account, register mode only) and runs on the pj thread, but for its `registered`
and `status`, which any thread may read (snapshots).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pjsua2 as pj

from gateway.sip.endpoint import PjThread

# The user agent's log lines keep its logger name, wherever they are written.
log = logging.getLogger("gateway.sip.agent")


@dataclass(frozen=True)
class RegistrationOptions:
    """Register the agent's account with a registrar (digest auth)."""

    registrar: str  # host[:port]
    domain: str  # the address-of-record is sip:<username>@<domain>
    username: str
    password: str
    auth_user: str | None = None
    expires_s: int = 300
    first_retry_s: float = 5.0
    max_retry_s: float = 60.0


class RetryBackoff:
    """Delays between registration attempts: `first`, then doubling, capped at `cap`."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next_delay(self) -> float:
        """The delay before the next attempt (advances the backoff)."""
        delay = min(self._next, self.cap)
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        """After a success: the next failure is retried after `first` again."""
        self._next = self.first


def _secs(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def registration_status(
    code: int,
    reason: str,
    *,
    registrar: str,
    username: str,
    expires: int = 0,
    retry_in: float | None = None,
) -> str:
    """A one-line account of a REGISTER outcome for logs and `registration_changed`.

    >>> registration_status(200, "OK", registrar="r", username="a", expires=300)
    '200 OK, expires in 300 s'
    """
    head = f"{code} {reason.strip()}".strip() if code > 0 else (reason.strip() or "error")
    if 200 <= code < 300:
        if expires > 0:
            return f"{head}, expires in {expires} s"
        return f"{head}, unregistered"
    if code in (401, 403, 407):
        why = (
            f"the registrar rejected the credentials of {username}"
            " (check registration.accounts password)"
        )
    elif code == 404:
        why = (
            f"the registrar does not know {username}"
            " (check registration.accounts username and registration.domain)"
        )
    elif code == 408:
        why = f"registrar {registrar} did not answer"
    elif code <= 0:
        why = f"cannot send REGISTER to registrar {registrar}"
    elif code in (502, 503, 504):
        why = f"registrar {registrar} is unreachable or unavailable"
    else:
        why = f"registrar {registrar} refused the registration"
    text = f"{head}: {why}"
    if retry_in is not None:
        text += f", retrying in {_secs(retry_in)} s"
    return text


class Registration:
    """Keeps the account ``sip:<username>@<domain>`` registered.

    `configure` fills the account's config before it is created, `start` sends the first
    REGISTER, `on_state` takes every REGISTER outcome (the account's ``onRegState``) and
    `stop` sends the un-REGISTER on shutdown. Each change is logged and passed to
    `report` (``CallEvents.registration_changed``).
    """

    def __init__(
        self,
        options: RegistrationOptions,
        account: Callable[[], Any | None],
        report: Callable[[bool, str], None],
    ) -> None:
        self.options = options
        self.uri = f"sip:{options.username}@{options.domain}"
        # Written on the pj thread, read anywhere (snapshots).
        self.registered = False
        self.status = "not registered yet"
        # The account is the user agent's; asked for each time, never kept here (a
        # pjsua2 object must be deleted on the pj thread before libDestroy).
        self._account = account
        self._report = report
        self._backoff = RetryBackoff(options.first_retry_s, options.max_retry_s)
        self._retry_at: float | None = None
        self._results = 0  # onRegState calls so far
        self._stopping = False

    def configure(self, cfg: Any) -> None:
        """Fill the registration part of the account's ``pj.AccountConfig``."""
        reg = self.options
        rc = cfg.regConfig
        rc.registrarUri = f"sip:{reg.registrar}"
        rc.timeoutSec = reg.expires_s
        # Refresh a tenth of the expiry early (5..30 s), so a refresh that needs a few
        # retransmissions still lands before the binding expires. pjsua never refreshes
        # sooner than 5 s, also when the registrar grants less than we asked for.
        rc.delayBeforeRefreshSec = max(5, min(30, reg.expires_s // 10))
        # pjsua's retry uses one fixed interval: off; `on_state` retries with backoff.
        rc.retryIntervalSec = 0
        rc.firstRetryIntervalSec = 0
        rc.randomRetryIntervalSec = 0
        rc.dropCallsOnFail = False  # a registrar outage must not cut calls in progress
        rc.registerOnAdd = False  # `register_now` sends it and handles a synchronous error
        rc.unregWaitMsec = 1000  # bounds libDestroy's wait for an un-REGISTER answer
        cred = pj.AuthCredInfo("digest", "*", reg.auth_user or reg.username, 0, reg.password)
        cfg.sipConfig.authCreds.append(cred)

    def start(self, pj_thread: PjThread) -> None:
        """The account exists: send the first REGISTER and check for due retries."""
        pj_thread.every(0.1, self._retry_timer)
        log.info("registering %s with %s", self.uri, self.options.registrar)
        self.register_now()

    def register_now(self) -> None:
        """Send a REGISTER (a failure to send counts as a failed attempt)."""
        acc = self._account()
        if acc is None or self._stopping:
            return
        seen = self._results
        try:
            acc.setRegistration(True)
        except pj.Error as exc:
            # pjsip may already have reported this failure through onRegState (a send
            # that fails at once); count and report it once.
            if self._results == seen:
                self._failed(0, exc.reason.strip() or "cannot send REGISTER")

    def _retry_timer(self) -> None:
        """Ten times a second: send the scheduled retry when it is due."""
        if self._retry_at is not None and time.monotonic() >= self._retry_at:
            self._retry_at = None
            self.register_now()

    def on_state(self, prm: Any) -> None:
        """`onRegState`: a REGISTER (or refresh, or un-REGISTER) completed."""
        reg = self.options
        self._results += 1
        code = int(prm.code)
        reason = str(prm.reason)
        if 200 <= code < 300:
            expires = int(prm.expiration)
            status = registration_status(
                code, reason, registrar=reg.registrar, username=reg.username, expires=expires
            )
            if expires > 0:
                self._backoff.reset()
                self._retry_at = None
                if self.registered:
                    log.debug("registration of %s refreshed: %s", self.uri, status)
                    self.status = status
                    return
                self._set(True, status)
            else:
                self._set(False, status, asked=True)
            return
        if self._stopping:
            self._set(False, f"{code} {reason}".strip(), asked=True)
            return
        self._failed(code, reason)

    def _failed(self, code: int, reason: str) -> None:
        reg = self.options
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        status = registration_status(
            code, reason, registrar=reg.registrar, username=reg.username, retry_in=delay
        )
        self._set(False, status)

    def _set(self, registered: bool, status: str, asked: bool = False) -> None:
        self.registered = registered
        self.status = status
        if registered:
            log.info("registered %s: %s", self.uri, status)
        elif asked:
            log.info("unregistered %s: %s", self.uri, status)
        else:
            log.warning("not registered %s: %s", self.uri, status)
        try:
            self._report(registered, status)
        except Exception:
            log.exception("registration_changed handler failed")

    def stop(self) -> None:
        """Before shutdown: un-REGISTER if registered. Best effort: the pj thread gives it
        about a second (`PjThread` stop loop) and libDestroy waits at most unregWaitMsec."""
        self._stopping = True
        self._retry_at = None
        acc = self._account()
        if acc is None:
            return
        try:
            if acc.getInfo().regIsActive:
                acc.setRegistration(False)
        except pj.Error as exc:
            log.debug("un-REGISTER of %s not sent: %s", self.uri, exc.reason.strip())
