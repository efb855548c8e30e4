"""The offline recogniser's acoustic model is adapted to the phone line: a global MLLR
transform (gateway/providers/phone_line.mllr, made by scripts/adapt_phone_line.py) moves
the 16 kHz model toward 8 kHz G.711 speech, and the adapted decoder scores more Gaussians
and dithers the audio (issue 17)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.providers import pocketsphinx_stt
from gateway.providers.pocketsphinx_stt import (
    DITHER_SEED,
    GAUSSIANS,
    MODEL_RATE,
    PHONE_LINE_MLLR,
    decode_stream,
    new_decoder,
)
from gateway.providers.sphinx_native import NativeDecoder, SphinxError
from sip_config import load_settings


def test_the_transform_ships_with_the_package() -> None:
    lines = PHONE_LINE_MLLR.read_text().split("\n")
    # One class, three feature streams of 13 dimensions (the model's 1s_c_d_dd, split
    # 0-12/13-25/26-38): pocketsphinx's MLLR file format.
    assert lines[:3] == ["1", "3", "13"]


@pytest.mark.parametrize(
    ("said", "heard"),
    [
        # Unadapted (with the playbook's bias too): "six of them to read your all".
        ("Six seven three zero.", "six seven three zero"),
        # Unadapted: "kevin kevin durant took".
        ("Seven seven zero six.", "seven seven zero six"),
        # Unadapted: "i like to be to someone".
        ("Can I speak to someone?", "can i speak to someone"),
    ],
)
def test_the_adapted_model_hears_the_hiss_the_line_took_away(
    phone_line: Callable[[str], bytes], demo_text: str, said: str, heard: str
) -> None:
    pcm = phone_line(said)
    unadapted = decode_stream(pcm, new_decoder(demo_text, adapt=False))
    assert unadapted != heard  # the test means something: the shipped model mishears it
    assert decode_stream(pcm, new_decoder(demo_text)) == heard, unadapted


def test_a_missing_transform_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SphinxError, match="acoustic model"):
        NativeDecoder(MODEL_RATE, mllr=tmp_path / "nothing.mllr")


def test_the_setting_turns_the_adaptation_off(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    monkeypatch.setattr(pocketsphinx_stt, "PocketsphinxStt", lambda **kw: seen.append(kw["adapt"]))
    pocketsphinx_stt.build(load_settings(env_file=None))
    pocketsphinx_stt.build(
        load_settings(
            env_file=None, overrides={"providers": {"pocketsphinx_phone_line_adaptation": False}}
        )
    )
    assert seen == [True, False]


def test_the_adapted_decoder_scores_more_gaussians(
    phone_line: Callable[[str], bytes], demo_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pocketsphinx's default (-topn 4) hears "read eight" here (see GAUSSIANS)."""
    pcm = phone_line("Three eight.")
    decoder = new_decoder(demo_text)
    assert decoder.number("topn") == GAUSSIANS == 8
    assert decode_stream(pcm, decoder) == "three eight"
    monkeypatch.setattr(pocketsphinx_stt, "GAUSSIANS", None)
    default = new_decoder(demo_text)
    decode_stream(pcm, default)
    # Its best reading (the transcript reads the number again from the N-best list).
    assert default.hyp_text() != "three eight"


def test_the_adapted_decoder_dithers_from_a_fixed_seed(
    phone_line: Callable[[str], bytes], demo_text: str
) -> None:
    adapted, shipped = new_decoder(demo_text), new_decoder(demo_text, adapt=False)
    assert adapted.flag("dither") and adapted.number("seed") == DITHER_SEED
    assert not shipped.flag("dither") and shipped.number("topn") == 4
    # Seeded: the same audio on two new decoders is heard the same, run after run.
    pcm = phone_line("I would like to order a birthday cake for Saturday.")
    heard = {decode_stream(pcm, new_decoder(demo_text)) for _ in range(3)}
    assert heard == {"i would like to order a birthday cake for saturday"}
