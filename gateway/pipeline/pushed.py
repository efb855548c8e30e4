"""Replies the brain's owner pushes (an external bot answering later, `Brain.pushes`).

A reply may promise one (`BrainReply.pending_s`): until it is due the caller's silence is
expected, and once due without one the turn has failed. A pushed reply waits until the
turn in progress is over (the session's floor, an event), then plays as an agent turn of
its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.pipeline import clock
from gateway.pipeline.record import TurnRecord
from gateway.providers.base import Brain, BrainReply, ProviderError


class PushedReplies:
    """The pushed replies of one call, and the one owed."""

    def __init__(self, brain: Brain, call_id: str) -> None:
        self.brain = brain
        self.call_id = call_id
        # Monotonic time by which the brain promised a pushed reply (BrainReply.pending_s).
        self.due: float | None = None

    def promised(self, reply: BrainReply) -> None:
        """A reply was spoken: it may promise a pushed one, or settle the one owed."""
        if reply.pending_s is not None:
            self.due = clock.now() + reply.pending_s
        elif reply.text or getattr(reply, "audio", None):
            self.due = None  # answered: nothing is owed any more

    def waiting(self, now: float) -> bool:
        """A pushed reply is owed and not yet due: silence is expected."""
        return self.due is not None and now < self.due

    def overdue(self, now: float) -> ProviderError | None:
        """The failure of a pushed reply that did not come in time (reported once)."""
        if self.due is None or now < self.due:
            return None
        self.due = None
        return ProviderError(self.brain.name, "timeout", "no pushed reply in time")

    async def run(
        self,
        floor_free: Callable[[], Awaitable[None]],
        play: Callable[[BrainReply | None, Exception | None, TurnRecord], None],
    ) -> None:
        """Play each pushed reply (`play`) once the turn in progress is over (`floor_free`
        returns when nobody has the floor); one that could not be prepared is played as its
        error (the apology)."""
        while True:
            error: Exception | None = None
            try:
                reply = await self.brain.wait_pushed(self.call_id)
            except Exception as exc:
                reply, error = None, exc
            if reply is None and error is None:
                return  # the brain forgot the call: nothing more will come
            await floor_free()
            self.due = None
            play(reply, error, TurnRecord(call_id=self.call_id, turn=0, kind="pushed"))


def failing(exc: Exception) -> Awaitable[None]:
    """A reply that fails with `exc` (so it is apologised for like any failed turn)."""

    async def fail() -> None:
        raise exc

    return fail()
