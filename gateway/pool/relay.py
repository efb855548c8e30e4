"""The answer_url app's requests to the workers: a reply the bot pushed goes to the worker
holding the call, an outbound call to a worker with a free slot.

A request is a command with a fresh ``request_id``; the worker's `PushResult` /
`DialResult` carries it back (the supervisor's message handler passes it to `Relay.answer`).
`push` and `dial` run on the supervisor's event loop; the app calls `push_threadsafe` and
`dial_threadsafe` from its waitress request threads, which wait for the loop's answer with
a timeout (UNAVAILABLE when the pool is not running or does not answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway.pool import protocol
from gateway.pool.outcomes import DialOutcome, DialStatus, PushOutcome, PushStatus
from gateway.pool.processes import Child, Pool, WorkerProcesses
from gateway.pool.protocol import Command, DialResult, PushResult

log = logging.getLogger("sipagent.pool")

_PUSH_TIMEOUT_S = 3.0  # a worker answers a pushed reply at once (rendering happens later)
_DIAL_TIMEOUT_S = 5.0  # a worker answers "dial" once its INVITE is sent

_T = TypeVar("_T")


class Relay:
    """Pushed replies and outbound calls for the pool's workers; see the module docstring."""

    def __init__(self, pool: Pool, workers: WorkerProcesses) -> None:
        self.pool = pool
        self.workers = workers
        # The supervisor's loop, once it runs (requests from other threads are run on it).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._requests: dict[int, asyncio.Future[PushResult | DialResult]] = {}
        self._last_request = 0

    def answer(self, msg: PushResult | DialResult) -> None:
        """A worker's answer: wakes the request with its id (none when it timed out)."""
        waiter = self._requests.get(msg.request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def _ask(
        self, child: Child, request: Callable[[int], Command], timeout: float
    ) -> PushResult | DialResult:
        """Send ``request(id)`` to a worker and wait for the result with that id; raises
        TimeoutError, ConnectionError or RuntimeError when there is none."""
        self._last_request += 1
        request_id = self._last_request
        waiter: asyncio.Future[PushResult | DialResult] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = waiter
        try:
            await protocol.send(child.writer, request(request_id))
            return await asyncio.wait_for(waiter, timeout)
        finally:
            self._requests.pop(request_id, None)

    # -- pushed bot replies ---------------------------------------------------------------
    async def push(self, key: str, payload: dict[str, Any]) -> PushOutcome:
        """Hand a reply the bot pushed to the worker holding call `key` (SIP Call-ID or
        CallUUID); the worker's outcome, or NO_CALL / UNAVAILABLE (it did not answer)."""
        found = self.pool.state.find_call(key)
        child = self.workers.by_index.get(found[0]) if found is not None else None
        if found is None or child is None or not child.up.is_set():
            return PushOutcome(PushStatus.NO_CALL, "no call with that id is in progress")
        sip_call_id = found[1]
        try:
            answer = await self._ask(
                child, lambda i: protocol.PushReply(i, sip_call_id, payload), _PUSH_TIMEOUT_S
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            answer = None
        if not isinstance(answer, PushResult):
            return PushOutcome(PushStatus.UNAVAILABLE, "the worker holding the call did not answer")
        return answer.outcome

    # -- outbound calls -------------------------------------------------------------------
    async def dial(self, call_id: str, uri: str, headers: dict[str, str]) -> DialOutcome:
        """Place an outbound call from a worker with a free slot (held for ``call_id`` in
        `PoolState` until the call starts or ends).  PLACED (with the SIP Call-ID) once the
        INVITE is sent; the outcome arrives later with the worker's `CallEnded`."""
        state = self.pool.state
        # Held while the callee's phone rings (the call counts once it is answered).
        hold = self.pool.settings.outbound.ring_timeout_s + _DIAL_TIMEOUT_S
        target = state.reserve_for(call_id, hold)
        child = self.workers.by_index.get(target.worker) if target is not None else None
        if target is None or child is None or not child.up.is_set():
            state.release(call_id)
            return DialOutcome(DialStatus.UNAVAILABLE, "no worker can place a call now")
        try:
            answer = await self._ask(
                child,
                lambda i: protocol.PlaceCall(i, call_id, uri, headers),
                _DIAL_TIMEOUT_S,
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            answer = None
        if not isinstance(answer, DialResult):
            state.release(call_id)
            return DialOutcome(DialStatus.UNAVAILABLE, "the worker did not answer")
        if answer.outcome.status is not DialStatus.PLACED:
            state.release(call_id)
        else:
            log.info("outbound call %s to %s placed by worker %d", call_id, uri, target.worker)
        return answer.outcome

    # -- from the app's threads -----------------------------------------------------------
    def dial_threadsafe(self, call_id: str, uri: str, headers: dict[str, str]) -> DialOutcome:
        """`dial` from another thread (the app's request threads)."""
        return self._from_thread(
            lambda: self.dial(call_id, uri, headers),
            _DIAL_TIMEOUT_S,
            lambda why: DialOutcome(DialStatus.UNAVAILABLE, why),
        )

    def push_threadsafe(self, key: str, payload: dict[str, Any]) -> PushOutcome:
        """`push` from another thread (the app's request threads)."""
        return self._from_thread(
            lambda: self.push(key, payload),
            _PUSH_TIMEOUT_S,
            lambda why: PushOutcome(PushStatus.UNAVAILABLE, why),
        )

    def _from_thread(
        self,
        request: Callable[[], Coroutine[Any, Any, _T]],
        timeout_s: float,
        unavailable: Callable[[str], _T],
    ) -> _T:
        """Run a pool request on the supervisor's loop from another thread; `unavailable`
        when the pool is not running or does not answer within `timeout_s` (plus a second)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return unavailable("the worker pool is not running")
        coro = request()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:
            coro.close()
            return unavailable("the worker pool is not running")
        try:
            return future.result(timeout_s + 1.0)
        except Exception:
            future.cancel()
            return unavailable("the worker pool did not answer")
