"""Shared by the offline recogniser's tests: a turn streamed as a call streams it, and an
intent whose word the demo playbook does not know."""

from __future__ import annotations

from gateway.audio.pcm import split_frames
from gateway.providers.pocketsphinx_stt import PocketsphinxStt

# A bread the demo playbook does not know, whose word the pronunciation dictionary has:
# the general English model hears Piper's steady voice say it as "number make all" (the
# softphone's varying voice it sometimes hears right).
PUMPERNICKEL_INTENT = """
[[intents]]
name = "special"
keywords = ["pumpernickel"]
examples = ["Do you have pumpernickel bread?"]
reply = "Our pumpernickel comes out of the oven at noon."
"""


async def recognise(stt: PocketsphinxStt, pcm: bytes, expect: str | None = None) -> str:
    """Stream `pcm` in 20 ms frames, as a call does, then the pause that ends the turn;
    `expect` as `open_stream` takes it."""
    stream = await stt.open_stream(expect)
    for frame in split_frames(pcm + bytes(3200)):
        await stream.feed(frame)
    return await stream.finish()
