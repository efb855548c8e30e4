"""The pocketsphinx provider: decoding in a child process, streamed, with failures."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.audio.pcm import split_frames
from gateway.providers.base import EXPECT_DIGITS
from gateway.providers.pocketsphinx_stt import (
    PocketsphinxStt,
    SttProcessError,
    decode_stream,
    new_decoder,
    transcribe,
)
from gateway.providers.scripted import DEMO_PLAYBOOK, PlaybookFile
from tests.helpers.speech import recognise


@pytest.fixture(scope="module")
def stt() -> Iterator[PocketsphinxStt]:
    provider = PocketsphinxStt(decoders=2)
    yield provider
    asyncio.run(provider.close())


def test_streamed_speech_is_transcribed(
    stt: PocketsphinxStt, speech_8k: Callable[[str], bytes]
) -> None:
    text = asyncio.run(recognise(stt, speech_8k("I would like to order a birthday cake")))
    assert "would like to order" in text, text


def test_two_streams_at_once_keep_their_words_apart(
    stt: PocketsphinxStt, speech_8k: Callable[[str], bytes]
) -> None:
    a = speech_8k("I would like to order a birthday cake")
    b = speech_8k("where are you located")

    async def both() -> list[str]:
        sa, sb = await stt.open_stream(), await stt.open_stream()
        fa, fb = split_frames(a), split_frames(b)
        for i in range(max(len(fa), len(fb))):
            if i < len(fa):
                await sa.feed(fa[i])
            if i < len(fb):
                await sb.feed(fb[i])
        return list(await asyncio.gather(sa.finish(), sb.finish()))

    # Piper's speech varies from run to run (it adds noise): assert on the words the
    # recogniser always gets, and that neither stream hears the other's.
    ta, tb = asyncio.run(both())
    assert "would like to order" in ta and "where" not in ta, ta
    assert "where" in tb and "you" in tb and "order" not in tb, tb


def test_cancelled_stream_frees_its_decoder(
    stt: PocketsphinxStt, speech_8k: Callable[[str], bytes]
) -> None:
    pcm = speech_8k("where are you located")

    async def run() -> str:
        for _ in range(5):  # more than the pool holds: decoders must come back
            stream = await stt.open_stream()
            await stream.feed(pcm[:3200])
            await stream.cancel()
            await stream.cancel()
        return await recognise(stt, pcm)

    assert "where" in asyncio.run(run())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_decoding_does_not_hold_this_process(stt: PocketsphinxStt) -> None:
    """A long decode runs in the child: this process (its media clock) spends next to no CPU
    on it. Measured as CPU time, not as a thread's wall-clock gaps, so a loaded machine
    cannot fail it (a decode in this process: parent ≈ child; measured 0.002 s vs 0.43 s)."""
    noise = bytes(range(256)) * 250  # 4 s of loud, speech-like garbage at 8 kHz
    asyncio.run(recognise(stt, b"\x00" * 1600))  # the child is up and warm
    pid = stt._proc.pid
    child_before, ours_before = _cpu_seconds(pid), time.process_time()
    asyncio.run(recognise(stt, noise))
    child, ours = _cpu_seconds(pid) - child_before, time.process_time() - ours_before
    assert child >= 0.05, f"the child spent {child:.3f} s: did it decode?"
    assert ours < 0.25 * child, f"this process spent {ours:.3f} s, the child {child:.3f} s"


def test_a_dead_child_fails_the_waiter_and_is_restarted(
    speech_8k: Callable[[str], bytes],
) -> None:
    provider = PocketsphinxStt(decoders=1)
    pcm = speech_8k("where are you located")

    async def run() -> str:
        stream = await provider.open_stream()
        await stream.feed(pcm[:6400])
        provider._proc.kill()
        provider._proc.join(5)
        with pytest.raises(SttProcessError):
            await asyncio.wait_for(stream.finish(), 5)
        return await recognise(provider, pcm)

    try:
        assert "where" in asyncio.run(run())
    finally:
        asyncio.run(provider.close())


def test_transcribe_in_process(speech_8k: Callable[[str], bytes]) -> None:
    assert "where" in transcribe(speech_8k("where are you located"))


@pytest.mark.parametrize(
    ("said", "heard"),
    [
        ("What are your opening hours?", "opening hours"),
        ("Can I speak to a human please", "human"),
        ("one two three four", "one two three four"),
    ],
)
def test_a_fresh_decoder_hears_the_first_turn(
    steady_speech_8k: Callable[[str], bytes], said: str, heard: str
) -> None:
    # A decoder's first utterance was decoded from a cold cepstral mean: these came out as
    # "what are your opening are hot", "when" and "what do the report".
    provider = PocketsphinxStt(decoders=1)
    try:
        assert heard in asyncio.run(recognise(provider, bytes(3200) + steady_speech_8k(said)))
    finally:
        asyncio.run(provider.close())


def test_while_an_entry_is_asked_for_the_decoder_listens_for_digits(
    phone_line: Callable[[str], bytes], demo_text: str
) -> None:
    said = {"Eight eight one.": "eight eight one", "Nine nine two four.": "nine nine two four"}
    # The playbook's model hears a bakery's words, and a number with a word wrong in it
    # that is read again from the N-best list as the number (pocketsphinx_stt.NUMBER_MARGIN).
    playbook = new_decoder(demo_text)
    assert decode_stream(phone_line("Eight eight one."), playbook) == "a cake one"
    assert decode_stream(phone_line("Nine nine two four."), playbook) == "nine nine two four"
    assert playbook.hyp_text() == "nine ninety four"  # its best reading
    provider = PocketsphinxStt(decoders=1, playbook=PlaybookFile(DEMO_PLAYBOOK))

    def heard(text: str, expect: str | None) -> str:
        return asyncio.run(recognise(provider, phone_line(text), expect))

    try:
        assert [heard(s, EXPECT_DIGITS) for s in said] == list(said.values())
        # A caller who answers with something else is still heard.
        assert heard("Can I talk to someone?", EXPECT_DIGITS) == "can i talk to someone"
        # And the playbook's model again when nothing is expected: here the two differ.
        parking = "Is there parking near the bakery?"
        assert heard(parking, EXPECT_DIGITS) != "is there parking near the bakery"
        assert heard(parking, None) == "is there parking near the bakery"
    finally:
        asyncio.run(provider.close())
