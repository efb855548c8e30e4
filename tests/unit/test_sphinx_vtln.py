"""The offline recogniser normalises the caller's vocal tract: a high voice is heard through
a frequency warp chosen from its pitch (gateway/providers/sphinx_vtln.py, issue 17)."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from collections.abc import Callable

import numpy as np
import pytest

from gateway.audio.g711 import ulaw_decode, ulaw_encode
from gateway.audio.pcm import SAMPLE_RATE, read_wav, resample
from gateway.providers.pocketsphinx_stt import (
    PHONE_LINE_CMN,
    PocketsphinxStt,
    Utterance,
    decode_stream,
    new_decoder,
)
from gateway.providers.scripted import DEMO_PLAYBOOK, PlaybookFile
from gateway.providers.sphinx_vtln import (
    FULL_WARP,
    HIGH_HZ,
    LOW_HZ,
    WARP_CMN_SLOPE,
    median_pitch,
    shifted_mean,
    warp_for,
)
from tests.helpers.speech import recognise

# A woman's voice: Debian's flite "slt" (~170 Hz through the line). The offline bench
# (scripts/bench/offline_recognition.py) has her among its voices; none of these sentences
# is one of its utterances.
HIGH_VOICE = "slt"


@pytest.fixture(scope="module")
def high_voice(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], bytes]:
    """`text` said by HIGH_VOICE as a caller's speech reaches the recogniser: 8 kHz
    through G.711, between 200 ms of quiet."""
    flite = shutil.which("flite")
    if flite is None:  # .ci/run installs it and checks that it is there
        pytest.skip("Debian's flite is missing: apt-get install flite")
    folder = tmp_path_factory.mktemp("high-voice")

    def speak(text: str) -> bytes:
        path = folder / "said.wav"
        command = [flite, "-voice", HIGH_VOICE, "-t", text, "-o", str(path)]
        subprocess.run(command, check=True, capture_output=True)
        pcm, rate = read_wav(path)
        quiet = bytes(SAMPLE_RATE * 2 // 5)
        return quiet + ulaw_decode(ulaw_encode(resample(pcm, rate, SAMPLE_RATE))) + quiet

    return speak


def _tone(f0: float, seconds: float = 0.6) -> bytes:
    """A voiced-sounding signal: harmonics of `f0` at 8 kHz."""
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    wave = sum(np.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 12))
    return (np.asarray(wave) * 4000).astype("<i2").tobytes()


@pytest.mark.parametrize(
    ("pitch", "warp"),
    [
        (None, 1.0),
        (95.0, 1.0),
        (LOW_HZ, 1.0),
        ((LOW_HZ + HIGH_HZ) / 2, round(1 + (FULL_WARP - 1) / 2, 3)),
        (HIGH_HZ, FULL_WARP),
        (260.0, FULL_WARP),
    ],
)
def test_the_warp_follows_the_pitch(pitch: float | None, warp: float) -> None:
    assert warp_for(pitch) == warp


@pytest.mark.parametrize("f0", [95.0, 170.0, 220.0])
def test_the_pitch_of_a_voiced_sound(f0: float) -> None:
    measured = median_pitch(_tone(f0), SAMPLE_RATE)
    assert measured is not None and abs(measured - f0) < 3, measured


def test_no_pitch_in_quiet_noise_or_too_little_audio() -> None:
    noise = np.random.default_rng(1).normal(0, 300, SAMPLE_RATE).astype("<i2").tobytes()
    assert median_pitch(bytes(SAMPLE_RATE), SAMPLE_RATE) is None
    assert median_pitch(noise, SAMPLE_RATE) is None
    assert median_pitch(_tone(170.0)[:400], SAMPLE_RATE) is None


def test_the_mean_moves_with_the_warp() -> None:
    moved = shifted_mean(PHONE_LINE_CMN, 1.0, 1.2)
    pairs = zip(PHONE_LINE_CMN.split(","), moved.split(","), strict=True)
    step = [float(b) - float(a) for a, b in pairs]
    assert step == pytest.approx([0.2 * k for k in WARP_CMN_SLOPE], abs=0.01)
    assert shifted_mean("40,3,-1", 1.0, 1.2) == "40,3,-1"  # not a 13-value mean: as it was


def test_a_warp_keeps_the_cepstral_mean_it_is_given(demo_text: str) -> None:
    decoder = new_decoder(demo_text)
    assert decoder.warp == 1.0
    mean = shifted_mean(PHONE_LINE_CMN, 1.0, 1.2)
    decoder.set_warp(1.2, mean)
    assert decoder.warp == 1.2
    # Rebuilding the features reset the mean to pocketsphinx's default (40,3,-1,0,...).
    assert [float(v) for v in decoder.get_cmn().split(",")] == pytest.approx(
        [float(v) for v in mean.split(",")], abs=0.01
    )
    decoder.set_warp(1.2, PHONE_LINE_CMN)  # the same warp: nothing is rebuilt or reset
    assert decoder.get_cmn().split(",")[4] == mean.split(",")[4]


def test_a_low_voice_is_not_warped_nor_held_back(
    phone_line: Callable[[str], bytes], demo_text: str
) -> None:
    """The test softphone's voice (Piper's joe, ~95 Hz) is decoded as without the warp: the
    held-back chunks are decoded as they came."""
    warped, plain = new_decoder(demo_text), new_decoder(demo_text)
    plain.vtln = False
    said = ["What time do you close on Saturday?", "Eight six zero five.", "Goodbye."]
    heard = [decode_stream(phone_line(s), warped) for s in said]
    assert heard == [decode_stream(phone_line(s), plain) for s in said]
    assert heard[0] == "what time do you close on saturday"
    assert warped.warp == 1.0


SAID_HIGH = ["Yes.", "No.", "Goodbye.", "Three one four one."]
HEARD_HIGH = ["yes", "no", "goodbye", "three one four one"]


def test_a_high_voice_is_heard_through_the_warp(
    high_voice: Callable[[str], bytes], demo_text: str
) -> None:
    warped, plain = new_decoder(demo_text), new_decoder(demo_text)
    plain.vtln = False
    heard = [decode_stream(high_voice(s), warped) for s in SAID_HIGH]
    unwarped = [decode_stream(high_voice(s), plain) for s in SAID_HIGH]
    assert warped.warp == FULL_WARP
    assert heard == HEARD_HIGH, heard
    # Unwarped, "then" and "three line for one".
    assert unwarped[0] != "yes" and unwarped[3] != HEARD_HIGH[3], unwarped


def test_the_call_process_decodes_through_the_warp(high_voice: Callable[[str], bytes]) -> None:
    provider = PocketsphinxStt(decoders=1, playbook=PlaybookFile(DEMO_PLAYBOOK))
    try:
        heard = [asyncio.run(recognise(provider, high_voice(s))) for s in SAID_HIGH]
    finally:
        asyncio.run(provider.close())
    assert heard == HEARD_HIGH


def test_an_utterance_cancelled_before_its_warp_frees_the_decoder(demo_text: str) -> None:
    decoder = new_decoder(demo_text)
    held = Utterance(decoder)
    held.feed(_tone(200.0, 0.2))  # less than the hold: decoding has not started
    held.cancel()
    assert Utterance(decoder).finish(_tone(200.0, 0.8)) == ""  # the decoder starts again
