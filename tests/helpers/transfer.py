"""Helpers of the transfer tests: a brain that asks for a transfer and a session with a fake
transferrer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.pipeline.session import ConversationOptions
from gateway.policy.transfer import TransferOutcome
from gateway.providers.base import BrainReply, CallContext
from tests.helpers.session import (
    Call,
    QuickBrain,
    start_call,
)


class TransferBrain(QuickBrain):
    """Answers every turn with `reply` and `actions` (the greeting is plain)."""

    def __init__(self, reply: str, actions: Sequence[str]) -> None:
        super().__init__(replies=[reply])
        self.actions = tuple(actions)
        self.notes: list[str] = []

    def observe(self, ctx: CallContext, note: str) -> None:
        self.notes.append(note)

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        base = await super().respond(text, ctx)
        return BrainReply(base.text, self.actions, "transfer")


def start(
    brain: QuickBrain, options: ConversationOptions, outcome: TransferOutcome | None
) -> tuple[Call, FakeTransfer]:
    holder: list[Call] = []
    transfer = FakeTransfer(holder, outcome)
    call = start_call(brain, options, transfer=transfer)
    holder.append(call)
    return call, transfer


class FakeTransfer:
    """Records each transfer request; answers with `outcome` once `release` is set."""

    def __init__(self, call: list[Call], outcome: TransferOutcome | None) -> None:
        self.call = call
        self.outcome = outcome
        self.targets: list[str] = []
        self.agent_was_quiet: list[bool] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, target: str) -> TransferOutcome:
        self.targets.append(target)
        # The handover line is on the wire before the transfer starts.
        self.agent_was_quiet.append(not self.call[0].session.agent_speaking())
        await self.release.wait()
        if self.outcome is None:
            await asyncio.sleep(3600)  # never answers
        assert self.outcome is not None
        return self.outcome
