"""The few pocketsphinx C calls its Python binding does not offer: a decoder whose language
model is an interpolated set (pocketsphinx's `ngram_model_set_init` with weights).

pocketsphinx 5's Python `Decoder` can load one n-gram model per search, and its
`NGramModel` cannot be combined with another. Its C library can: an `ngram_model_set`
built with weights scores each word by linear interpolation of its models,
P(w | h) = sum_i weight_i * P_i(w | h). That is how the playbook's small model is mixed with
the general English model, so that the playbook's phrases are expected while anything else
a caller says still comes through.

The library is the one inside the `pocketsphinx` wheel (`_pocketsphinx*.so`), whose public
C API (pocketsphinx.h, pocketsphinx/model.h, pocketsphinx/search.h) exports these symbols;
it is called through ctypes. Only documented entry points are used, never the layout of
the binding's objects. Everything here runs in the decoding child process
(gateway/providers/pocketsphinx_stt.py), one thread.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
from ctypes import POINTER, c_char_p, c_float, c_int, c_int32, c_long, c_size_t, c_void_p
from functools import cache
from pathlib import Path
from typing import Any

NGRAM_AUTO = 0  # ngram_file_type_t: guess ARPA or binary from the file


class SphinxError(RuntimeError):
    """pocketsphinx refused a model or a request."""


@cache
def _lib() -> Any:
    spec = importlib.util.find_spec("pocketsphinx._pocketsphinx")
    if spec is None or spec.origin is None:
        raise SphinxError("the pocketsphinx package has no compiled library")
    lib = ctypes.CDLL(spec.origin)

    def sig(name: str, restype: Any, *argtypes: Any) -> None:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = list(argtypes)

    sig("err_set_loglevel_str", c_char_p, c_char_p)
    sig("ps_config_parse_json", c_void_p, c_void_p, c_char_p)
    sig("ps_config_free", c_int, c_void_p)
    sig("ps_init", c_void_p, c_void_p)
    sig("ps_free", c_int, c_void_p)
    sig("ps_get_config", c_void_p, c_void_p)
    sig("ps_config_int", c_long, c_void_p, c_char_p)
    sig("ps_config_bool", c_int, c_void_p, c_char_p)
    sig("ps_config_str", c_char_p, c_void_p, c_char_p)
    sig("ps_config_set_str", c_void_p, c_void_p, c_char_p, c_char_p)
    sig("ps_reinit_feat", c_int, c_void_p, c_void_p)
    sig("ps_get_logmath", c_void_p, c_void_p)
    sig("ps_set_cmn", c_int, c_void_p, c_char_p)
    sig("ps_get_cmn", c_char_p, c_void_p, c_int)
    sig("ps_add_lm", c_int, c_void_p, c_char_p, c_void_p)
    sig("ps_activate_search", c_int, c_void_p, c_char_p)
    sig("ps_start_utt", c_int, c_void_p)
    sig("ps_process_raw", c_int, c_void_p, c_char_p, c_size_t, c_int, c_int)
    sig("ps_end_utt", c_int, c_void_p)
    sig("ps_get_hyp", c_char_p, c_void_p, POINTER(c_int32))
    sig("ps_nbest", c_void_p, c_void_p)
    sig("ps_nbest_next", c_void_p, c_void_p)
    sig("ps_nbest_hyp", c_char_p, c_void_p, POINTER(c_int32))
    sig("ps_nbest_free", None, c_void_p)
    sig("ngram_model_read", c_void_p, c_void_p, c_char_p, c_int, c_void_p)
    sig("ngram_model_free", c_int, c_void_p)
    sig(
        "ngram_model_set_init",
        c_void_p,
        c_void_p,
        POINTER(c_void_p),
        POINTER(c_char_p),
        POINTER(c_float),
        c_int32,
    )
    lib.err_set_loglevel_str(b"FATAL")  # errors come back as return codes instead
    return lib


def model_dir() -> Path:
    """The en-US acoustic model, dictionary and general language model in the wheel."""
    from pocketsphinx import get_model_path

    return Path(get_model_path()) / "en-us"


def general_lm_path() -> Path:
    """pocketsphinx's general English trigram model."""
    return model_dir() / "en-us.lm.bin"


def dictionary_path() -> Path:
    """The pronunciation dictionary (CMUdict)."""
    return model_dir() / "cmudict-en-us.dict"


class LanguageModel:
    """An n-gram model in pocketsphinx's memory: one read from a file, or an interpolated
    set of several. Freed with `close` (decoders that use it keep their own reference)."""

    def __init__(self, ptr: int) -> None:
        self._ptr: int | None = ptr

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise SphinxError("language model is closed")
        return self._ptr

    @classmethod
    def read(cls, decoder: NativeDecoder, path: Path) -> LanguageModel:
        """Read an ARPA or binary model for `decoder`'s configuration and log base."""
        lib = _lib()
        ptr = lib.ngram_model_read(
            decoder.config, str(path).encode(), NGRAM_AUTO, lib.ps_get_logmath(decoder.ps)
        )
        if not ptr:
            raise SphinxError(f"pocketsphinx could not read the language model {path}")
        return cls(ptr)

    @classmethod
    def interpolate(
        cls, decoder: NativeDecoder, models: list[tuple[str, LanguageModel, float]]
    ) -> LanguageModel:
        """A set of `models` ((name, model, weight), weights summing to 1) that scores
        each word by linear interpolation of theirs."""
        n = len(models)
        ptrs = (c_void_p * n)(*[m.ptr for _, m, _ in models])
        names = (c_char_p * n)(*[name.encode() for name, _, _ in models])
        weights = (c_float * n)(*[w for _, _, w in models])
        ptr = _lib().ngram_model_set_init(decoder.config, ptrs, names, weights, n)
        if not ptr:
            raise SphinxError("pocketsphinx could not combine the language models")
        return cls(ptr)

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            _lib().ngram_model_free(ptr)

    def __del__(self) -> None:
        self.close()


class NativeDecoder:
    """A pocketsphinx decoder (en-US acoustic model, CMUdict) driven through the C API,
    with the method names of the Python binding's `Decoder` that the STT code uses."""

    def __init__(
        self,
        samprate: int,
        cmn: str = "",
        mllr: Path | None = None,
        topn: int | None = None,
        dither_seed: int | None = None,
        vtln: bool = False,
    ) -> None:
        """`cmn`: where cepstral mean normalisation starts (see `set_cmn`); `mllr`: an MLLR
        transform of the acoustic model's means (pocketsphinx's ``-mllr``), None for none;
        `topn`: Gaussians scored per codebook and frame (``-topn``), None for the default;
        `dither_seed`: add 1-bit random noise to the audio (``-dither``), from this seed
        (``-seed``), None for none; `vtln`: utterances set the frequency warp from the
        caller's pitch (`set_warp`, `pocketsphinx_stt.Utterance`)."""
        self._ps: int | None = None  # closing a decoder that failed to start is a no-op
        self.vtln = vtln
        lib = _lib()
        options: dict[str, str | int | bool] = {
            "hmm": str(model_dir() / "en-us"),
            "dict": str(dictionary_path()),
            "samprate": samprate,
            "warp_type": "inverse_linear",  # for set_warp; no warp until then
        }
        if mllr is not None:
            options["mllr"] = str(mllr)
        if topn is not None:
            options["topn"] = topn
        if dither_seed is not None:
            options["dither"] = True
            options["seed"] = dither_seed
        config = lib.ps_config_parse_json(None, json.dumps(options).encode())
        if not config:
            raise SphinxError("pocketsphinx refused its configuration")
        ps = lib.ps_init(config)
        lib.ps_config_free(config)  # the decoder holds its own reference
        if not ps:
            also = f" or the transform {mllr}" if mllr is not None else ""
            raise SphinxError(f"pocketsphinx could not load its acoustic model{also}")
        self._ps = ps
        self._search = 0
        if cmn:
            self.set_cmn(cmn)

    @property
    def ps(self) -> int:
        if self._ps is None:
            raise SphinxError("decoder is closed")
        return self._ps

    @property
    def config(self) -> int:
        return int(_lib().ps_get_config(self.ps))

    def number(self, name: str) -> int:
        """A whole-number setting of the decoder's configuration (e.g. "topn")."""
        return int(_lib().ps_config_int(self.config, name.encode()))

    def flag(self, name: str) -> bool:
        """A true/false setting of the decoder's configuration (e.g. "dither")."""
        return bool(_lib().ps_config_bool(self.config, name.encode()))

    def text(self, name: str) -> str:
        """A text setting of the decoder's configuration ("" when unset)."""
        value = _lib().ps_config_str(self.config, name.encode())
        return value.decode() if value else ""

    def set_warp(self, factor: float, cmn: str = "") -> None:
        """Warp the frequency axis of the features (vocal tract length normalisation:
        pocketsphinx's ``-warp_type inverse_linear`` with ``-warp_params``, frequencies
        divided by `factor`; 1 is none). Between utterances. Rebuilding the features resets
        the cepstral mean: it goes on from `cmn` (see `set_cmn`), by default from where it
        was."""
        value = f"{factor:.3f}"
        if value == f"{self.warp:.3f}":
            return
        lib = _lib()
        cmn = cmn or self.get_cmn()
        lib.ps_config_set_str(self.config, b"warp_params", value.encode())
        if lib.ps_reinit_feat(self.ps, None) < 0:
            raise SphinxError(f"pocketsphinx refused the frequency warp {factor}")
        if cmn:
            self.set_cmn(cmn)

    @property
    def warp(self) -> float:
        """The frequency warp in use (see `set_warp`)."""
        return float(self.text("warp_params") or 1.0)

    def add_model(self, lm: LanguageModel) -> str:
        """Add a search with `lm`; returns its name for `activate`."""
        self._search += 1
        name = f"lm{self._search}"
        if _lib().ps_add_lm(self.ps, name.encode(), lm.ptr) < 0:
            raise SphinxError("pocketsphinx could not use the language model")
        return name

    def activate(self, search: str) -> None:
        """Decode the next utterances with the search `search` (between utterances)."""
        if _lib().ps_activate_search(self.ps, search.encode()) < 0:
            raise SphinxError(f"pocketsphinx has no search {search!r}")

    def use_model(self, lm: LanguageModel) -> None:
        """Decode the next utterances with `lm` (call between utterances)."""
        self.activate(self.add_model(lm))

    def set_cmn(self, cmn: str) -> None:
        """Where live cepstral mean normalisation starts (comma-separated means)."""
        if _lib().ps_set_cmn(self.ps, cmn.encode()) < 0:
            raise SphinxError(f"pocketsphinx refused the cepstral mean {cmn!r}")

    def get_cmn(self, update: bool = False) -> str:
        value = _lib().ps_get_cmn(self.ps, int(update))
        return value.decode() if value else ""

    def start_utt(self) -> None:
        if _lib().ps_start_utt(self.ps) < 0:
            raise SphinxError("pocketsphinx could not start an utterance")

    def process_raw(self, data: bytes, no_search: bool = False, full_utt: bool = False) -> None:
        if _lib().ps_process_raw(self.ps, data, len(data) // 2, int(no_search), int(full_utt)) < 0:
            raise SphinxError("pocketsphinx could not decode the audio")

    def end_utt(self) -> None:
        if _lib().ps_end_utt(self.ps) < 0:
            raise SphinxError("pocketsphinx could not end the utterance")

    def hyp_text(self) -> str:
        """The best hypothesis of the last utterance ("" when none)."""
        score = c_int32()
        text = _lib().ps_get_hyp(self.ps, ctypes.byref(score))
        return text.decode().strip() if text else ""

    def nbest(self, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` hypotheses of the last utterance from its word lattice (pocketsphinx's
        A* N-best search), best first as the search finds them, each with its path score
        (the decoder's log scale: higher is likelier); repeats are kept."""
        lib = _lib()
        found: list[tuple[str, int]] = []
        it = lib.ps_nbest(self.ps)
        try:
            while it and len(found) < limit:
                score = c_int32()
                text = lib.ps_nbest_hyp(it, ctypes.byref(score))
                found.append((text.decode().strip() if text else "", score.value))
                it = lib.ps_nbest_next(it)  # NULL (and freed) after the last
        finally:
            if it:
                lib.ps_nbest_free(it)
        return found

    def close(self) -> None:
        ps, self._ps = self._ps, None
        if ps is not None:
            _lib().ps_free(ps)

    def __del__(self) -> None:
        self.close()
