"""Offline speech-to-text: pocketsphinx with its bundled en-US model, in a child process.

pocketsphinx holds the GIL while it decodes (measured: a 3 s buffer blocks every other
Python thread for ~0.5 s; `end_utt` ~75 ms). In the agent process that stalls pjmedia's
clock thread, whose frame callbacks need the GIL, so every call in the process hears gaps:
with 4 calls in one process the agent's audio had 100-370 ms holes. Decoding therefore runs
in a child process (spawned, so it inherits no pjsua2 state) that owns the decoders; the
agent only sends audio chunks over a pipe and reads transcripts back on a reader thread.

Decoders are created once, in the child, at start-up (one per concurrent call plus a spare)
and lent to one utterance at a time. Audio is decoded while the caller speaks, so at the end
of the turn only the last chunk and the final search remain.

The decoders expect the playbook: their language model is the playbook's own, interpolated
with the general English model (gateway/providers/sphinx_bias.py), built in the child at
start-up and built again there when the playbook file changes. While a keypad entry that
may be spoken is asked for, an utterance is decoded with a model of digits instead
(`open_stream`'s `expect`). A number misheard by a word is read again from the
utterance's N-best list (`NUMBER_MARGIN`). Their acoustic model is adapted to the phone
line's 8 kHz G.711 speech (`PHONE_LINE_MLLR`), and each utterance to the caller's voice:
its first 600 ms are held back until its pitch sets the decoder's frequency warp
(`Utterance`, gateway/providers/sphinx_vtln.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.audio.pcm import SAMPLE_RATE, Resampler
from gateway.providers.base import (
    DIGIT_WORDS,
    EXPECT_DIGITS,
    SttProvider,
    SttStream,
    spoken_entry,
)
from gateway.providers.scripted import PlaybookFile
from gateway.providers.sphinx_bias import (
    ENTRY_WEIGHT,
    corpus,
    entry_corpus,
    playbook_phrases,
    spoken_digits,
    write_arpa,
)
from gateway.providers.sphinx_native import (
    LanguageModel,
    NativeDecoder,
    dictionary_path,
    general_lm_path,
)
from gateway.providers.sphinx_vtln import HOLD_MS, median_pitch, shifted_mean, warp_for
from sip_config import Settings

log = logging.getLogger(__name__)

MODEL_RATE = 16000
CHUNK_MS = 60
_CHUNK_BYTES = SAMPLE_RATE * 2 * CHUNK_MS // 1000


# Where live cepstral mean normalisation starts. pocketsphinx's default start
# (40,3,-1,0,...) is far from the mean of G.711 telephone speech, and live CMN needs about
# one utterance to get there, so a fresh decoder misheard the first caller turn
# ("what a real been in yard" for "what are your opening hours"). This is the mean the
# decoder itself reached (`get_cmn`) after three turns of 8 kHz speech through G.711.
# Measured on 100 syntheses of "What are your opening hours?" streamed in 60 ms chunks:
# 97 % heard right from the default start, 100 % from this one; of 12 each of "I would
# like to order a birthday cake", "Can I speak to a human please" and "one two three
# four", 2, 0 and 0 from the default start, 12, 12 and 12 from this one.
# Measured again once resampling stopped adding dither (which had lifted the silences'
# spectrum): the same three turns reach this. Setting the mean is warming the decoder with
# that audio, without decoding it: live CMN weighs the set mean as a full window of frames.
PHONE_LINE_CMN = "48.0,30.1,-32.7,37.8,-17.8,-0.6,7.8,-25.9,13.9,-13.0,0.7,7.7,-15.1"


# The playbook model's share in the interpolation (providers.pocketsphinx_playbook_weight).
DEFAULT_PLAYBOOK_WEIGHT = 0.5

# The bundled acoustic model was trained on 16 kHz speech; a call's is 8 kHz through G.711,
# nothing above 4 kHz, and the model's upper filters hear nothing where it learnt the
# hiss of "s", "z" and "f" ("seven" heard as "and then", "zero" as "near"). This global
# MLLR transform (pocketsphinx's -mllr) moves the model's means toward speech as a phone
# line carries it. It was estimated with CMU Sphinx's own adaptation tools (sphinx_fe, bw,
# mllr_solve) from Piper speech sent through the G.711 line: scripts/adapt_phone_line.py
# makes it again. providers.pocketsphinx_phone_line_adaptation turns it off.
PHONE_LINE_MLLR = Path(__file__).with_name("phone_line.mllr")

# Gaussians the decoder scores per codebook and frame (pocketsphinx's -topn, default 4).
# The model's codebooks were trained on wideband speech; on the phone line's the best few
# are less often the right ones. Measured with scripts/bench/offline_recognition.py
# (flite voices, biased and adapted), topn 4 / 8 / 16 / 32: intent 261 / 264 / 263 / 263
# of 280, digits 59 / 63 / 64 / 65 of 80, WER 17.6 / 15.9 / 15.4 / 15.4 %, decoding
# real-time factor p50 0.20 / 0.24 / 0.28 / 0.36. 8 takes most of the gain for a fifth
# more CPU. Part of the phone-line adaptation, with the dither below:
# providers.pocketsphinx_phone_line_adaptation turns them off with the transform.
GAUSSIANS = 8

# The line's audio, upsampled to the model's 16 kHz, has nothing above 4 kHz: the model's
# upper filters see near-digital silence, whose log energies swing with every rounding.
# pocketsphinx's dither (-dither: 1-bit random noise added to the samples) gives them a
# steady floor. Measured with scripts/bench/offline_recognition.py (flite voices, after):
# intent 264 of 280 without, 268, 267 and 266 with dither from pocketsphinx's own seed,
# seed 1 and seed 7; digits 63, 62, 63, 63 of 80, WER 15.9, 15.7, 15.5, 15.3 %. A fixed
# seed: each decoder's dither, and so its transcripts, are the same on every run.
DITHER_SEED = 1


def _decoder(adapt: bool) -> NativeDecoder:
    """A decoder with the phone line's cepstral start, and when `adapt` the acoustic model
    adapted to the line (its transform, more Gaussians scored, dither)."""
    if not adapt:
        return NativeDecoder(MODEL_RATE, cmn=PHONE_LINE_CMN)
    return NativeDecoder(
        MODEL_RATE,
        cmn=PHONE_LINE_CMN,
        mllr=PHONE_LINE_MLLR,
        topn=GAUSSIANS,
        dither_seed=DITHER_SEED,
        vtln=True,
    )


class LanguageModels:
    """Builds decoders' language models in one process; the general model is read once
    (memory-mapped) and shared by every model built from it."""

    def __init__(self, decoder: NativeDecoder) -> None:
        self._decoder = decoder
        self.general = LanguageModel.read(decoder, general_lm_path())

    def build(self, text: str | None, weight: float) -> LanguageModel:
        """The general model interpolated with one trained on `text` (the general model
        alone when there is no text or no weight)."""
        if not text or weight <= 0.0:
            return self.general
        with tempfile.TemporaryDirectory(prefix="sipagent-lm-") as tmp:
            path = Path(tmp) / "playbook.arpa"
            write_arpa(text, path)
            playbook = LanguageModel.read(self._decoder, path)
        try:
            return LanguageModel.interpolate(
                self._decoder,
                [("general", self.general, 1.0 - weight), ("playbook", playbook, weight)],
            )
        finally:
            playbook.close()  # the set holds its own reference


def new_decoder(
    text: str | None = None, weight: float = DEFAULT_PLAYBOOK_WEIGHT, adapt: bool = True
) -> Any:
    """A decoder with the bundled en-US model at 16 kHz, adapted to the phone line (unless
    not `adapt`), its cepstral normalisation starting where a phone line's speech puts it,
    expecting `text` (a playbook corpus, see `sphinx_bias.playbook_corpus`) with `weight`;
    the general model alone without it."""
    decoder = _decoder(adapt)
    decoder.use_model(LanguageModels(decoder).build(text, weight))
    return decoder


# A number heard with a word wrong in it ("excuse seven three" for "six two seven three":
# the telephone band loses most of an "s") is read again from the utterance's N-best list:
# the likeliest reading of digits alone is taken when its path score is within
# NUMBER_MARGIN of the best. Digits alone, no lead-in: "it is seven three" is a reading too.
# Only when the best reading looks like a number: while a keypad entry is asked for, when
# it has a digit word in it (a caller who answers "hang on" or coughs is not turned into
# "nine nine"); otherwise when at least half its words are digits (NUMBER_SHARE), so that a
# sentence stays a sentence. Measured with the bench's voices (scripts/bench/
# offline_recognition.py; throwaway probes for the margins):
# - on the digits decoder ("asked"): of flite's 80 digit strings 71 heard right without
#   it, 77 / 78 / 78 with margins 400 / 500 / 600; of espeak-ng's, 15 and 20 / 25 / 25. Of
#   400 other short answers ("hang on", "I don't know", "goodbye", "um"...), 16 were heard
#   as an entry without it and 16 with it; of 19 noises, none either way;
# - on the playbook's decoder: flite's digit strings 69 → 78 of 80 (74 at margin 300; a
#   share of 0.75: 75), espeak-ng's 16 → 18; and not one of their 1,120 intent sentences,
#   100 other questions, 60 bare words, 400 short answers or 19 noises read differently.
#   In the bench itself ("after"): digits 68 → 75 and asked 69 → 79 of 80, intent the same.
# The N-best search takes ~2 ms, and only for such readings.
NUMBER_MARGIN = 500
NUMBER_SHARE = 0.5
NUMBER_NBEST = 200  # readings looked at, at most


def _hypothesis(decoder: Any) -> str:
    return spoken_digits(str(decoder.hyp_text()))


def _digits_alone(text: str) -> bool:
    words = text.split()
    return bool(words) and all(word in DIGIT_WORDS for word in words)


def _number_reading(decoder: Any, heard: str, entry: bool) -> str:
    """`heard`, or the likeliest reading of the utterance that is digits alone when `heard`
    looks like a number with a word wrong in it (see NUMBER_MARGIN); `entry`: a keypad
    entry is asked for."""
    words = heard.split()
    digits = sum(1 for word in words if word in DIGIT_WORDS)
    if not digits or digits == len(words) or spoken_entry(heard) is not None:
        return heard
    if not entry and digits < NUMBER_SHARE * len(words):
        return heard
    readings = decoder.nbest(NUMBER_NBEST)
    if not readings:
        return heard
    best = max(score for _, score in readings)
    for text, score in readings:
        reading = spoken_digits(text)
        if score >= best - NUMBER_MARGIN and _digits_alone(reading):
            return reading
    return heard


class Utterance:
    """One utterance on a decoder, fed as it comes. With `warp` (the adapted decoders), the
    first `sphinx_vtln.HOLD_MS` of audio are held back, the decoder's frequency warp is set
    from the caller's pitch in them, and decoding starts then. A number misheard by a word is
    read again from the N-best list (NUMBER_MARGIN), more readily with `entry` (a keypad
    entry is asked for)."""

    def __init__(
        self, decoder: Any, rate: int = SAMPLE_RATE, warp: bool = True, entry: bool = False
    ) -> None:
        self.decoder = decoder
        self._entry = entry
        self._rate = rate
        self._rs = Resampler(rate, MODEL_RATE) if rate != MODEL_RATE else None
        # The chunks held back, decoded as they came once the warp is set (the decoder's
        # live cepstral mean moves with each chunk: one big chunk would be heard otherwise).
        self._held: list[bytes] | None = [] if warp else None
        self._held_bytes = 0
        self._hold = rate * 2 * HOLD_MS // 1000
        if not warp:
            decoder.start_utt()

    def feed(self, pcm: bytes, last: bool = False) -> None:
        """Decode `pcm` (int16 mono at the utterance's rate); `last`: the end of it."""
        if self._held is None:
            self._decode(pcm, last)
            return
        self._held.append(pcm)
        self._held_bytes += len(pcm)
        if not last and self._held_bytes < self._hold:
            return
        chunks, self._held = self._held, None
        warp, was = warp_for(median_pitch(b"".join(chunks), self._rate)), self.decoder.warp
        if warp != was:
            self.decoder.set_warp(warp, shifted_mean(self.decoder.get_cmn(), was, warp))
        self.decoder.start_utt()
        for i, chunk in enumerate(chunks):
            self._decode(chunk, last and i == len(chunks) - 1)

    def _decode(self, pcm: bytes, last: bool) -> None:
        data = self._rs.process(pcm, last=last) if self._rs is not None else pcm
        if data:
            self.decoder.process_raw(data, False, False)

    def finish(self, pcm: bytes = b"") -> str:
        """Decode the last of the audio; the transcript."""
        self.feed(pcm, last=True)
        self.decoder.end_utt()
        return _number_reading(self.decoder, _hypothesis(self.decoder), self._entry)

    def cancel(self) -> None:
        """Drop the utterance (the decoder is ready for the next)."""
        if self._held is None:
            self.decoder.end_utt()
        self._held = None


def transcribe(pcm8k: bytes, decoder: Any | None = None) -> str:
    """Transcribe a whole 8 kHz utterance in this process (tools and tests, not calls)."""
    decoder = decoder if decoder is not None else new_decoder()
    return Utterance(decoder, SAMPLE_RATE, decoder.vtln).finish(pcm8k)


def decode_stream(
    pcm: bytes, decoder: Any | None = None, rate: int = SAMPLE_RATE, entry: bool = False
) -> str:
    """Transcribe an utterance fed as a call feeds it (60 ms chunks, resampled to the
    model's rate as they come), in this process: tools and benchmarks, not calls. `rate`:
    the audio's, 8 kHz as a call's, or the model's own 16 kHz (fed as it is); `entry`: as
    while a keypad entry is asked for (`Utterance`)."""
    decoder = decoder if decoder is not None else new_decoder()
    utterance = Utterance(decoder, rate, decoder.vtln, entry)
    starts = range(0, len(pcm), rate * 2 * CHUNK_MS // 1000) or range(1)
    for start, end in itertools.pairwise(starts):
        utterance.feed(pcm[start:end])
    return utterance.finish(pcm[starts[-1] :])


class SttProcessError(RuntimeError):
    """The decoding process died or refused a request."""


# -- the child process ---------------------------------------------------------------------
def _serve(conn: Connection, decoders: int, text: str, weight: float, adapt: bool) -> None:
    """Child main loop. Messages: (op, stream_id, payload); replies: (kind, stream_id,
    text|error); ("start", id, expect) decodes with the digits model when `expect` is
    `EXPECT_DIGITS`, else with the playbook's; ("bias", 0, corpus) builds the decoders'
    playbook model again from a new corpus."""
    first = _decoder(adapt)
    models = LanguageModels(first)
    problem = ""
    try:
        model = models.build(text, weight)
    except Exception as exc:  # a bad corpus must not cost the offline pipeline
        problem = f"playbook language model not built, the general model is used: {exc}"
        model = models.general
    entry_model = models.build(entry_corpus(), ENTRY_WEIGHT)
    generation = 1
    # id(decoder) -> (generation of its playbook search, that search, its digits search)
    searches: dict[int, tuple[int, str, str]] = {}

    def fresh() -> NativeDecoder:
        return _decoder(adapt)

    def tune(decoder: NativeDecoder, expect: str = "") -> NativeDecoder:
        known = searches.get(id(decoder)) or (0, "", decoder.add_model(entry_model))
        if known[0] != generation:
            known = (generation, decoder.add_model(model), known[2])
        searches[id(decoder)] = known
        decoder.activate(known[2] if expect == EXPECT_DIGITS else known[1])
        return decoder

    pool = [tune(first)] + [tune(fresh()) for _ in range(decoders - 1)]
    median_pitch(bytes(SAMPLE_RATE), SAMPLE_RATE)  # load the pitch tracker (~0.1 s) now
    active: dict[int, Utterance] = {}
    failed: dict[int, str] = {}  # a stream whose decoding failed, reported at its "end"

    conn.send(("ready", 0, problem))
    while True:
        try:
            op, sid, payload = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if op == "start":
                expect = payload.decode()
                decoder = tune(pool.pop() if pool else fresh(), expect)
                entry = expect == EXPECT_DIGITS
                active[sid] = Utterance(decoder, SAMPLE_RATE, decoder.vtln, entry)
            elif op == "data" and sid in active:
                active[sid].feed(payload)
            elif op in ("end", "cancel") and sid in active:
                utterance = active.pop(sid)
                pool.append(utterance.decoder)  # lent again only after this message
                if op == "cancel":
                    utterance.cancel()
                    continue
                try:
                    heard = utterance.finish(payload)
                except Exception:
                    with contextlib.suppress(Exception):
                        utterance.cancel()
                    raise
                conn.send(("text", sid, heard))
            elif op == "end":
                conn.send(("error", sid, failed.pop(sid, "unknown stream")))
            elif op == "cancel":
                failed.pop(sid, None)
            elif op == "bias":
                try:
                    model = models.build(payload.decode(), weight)
                except Exception as exc:
                    conn.send(("model", 0, f"playbook language model not rebuilt: {exc}"))
                else:
                    generation += 1
                    pool = [tune(d) for d in pool]  # the others when their utterance ends
                    conn.send(("model", 0, ""))
            elif op == "stop":
                return
        except Exception as exc:  # the stream fails, the child lives on
            broken = active.pop(sid, None)
            if broken is not None:
                with contextlib.suppress(Exception):
                    broken.cancel()
                pool.append(broken.decoder)
            message = f"{type(exc).__name__}: {exc}"
            if op == "end":
                with contextlib.suppress(Exception):
                    conn.send(("error", sid, message))
            else:
                failed[sid] = message


# -- the agent side ------------------------------------------------------------------------
class PocketsphinxStream(SttStream):
    """One utterance, decoded in the child process as it is fed."""

    def __init__(self, provider: PocketsphinxStt, sid: int) -> None:
        self._provider = provider
        self._sid = sid
        self._buf = bytearray()
        self._result: asyncio.Future[str] | None = None
        self._closed = False

    async def feed(self, pcm: bytes) -> None:
        """Send audio on in 60 ms chunks."""
        if self._closed:
            return
        self._buf += pcm
        if len(self._buf) >= _CHUNK_BYTES:
            self._provider.send("data", self._sid, bytes(self._buf))
            self._buf.clear()

    async def finish(self) -> str:
        """Send the rest and wait for the transcript."""
        if self._result is None:
            if self._closed:
                return ""
            self._closed = True
            self._result = self._provider.expect(self._sid)
            self._provider.send("end", self._sid, bytes(self._buf))
            self._buf.clear()
        return await asyncio.shield(self._result)

    async def cancel(self) -> None:
        """Drop the utterance (safe to call more than once, or after finish)."""
        if self._closed:
            return
        self._closed = True
        self._provider.send("cancel", self._sid, b"")


class PocketsphinxStt(SttProvider):
    """Speech-to-text through a pocketsphinx child process shared by the process's calls."""

    name = "pocketsphinx"

    def __init__(
        self,
        decoders: int = 2,
        start_timeout_s: float = 60.0,
        playbook: PlaybookFile | None = None,
        weight: float = DEFAULT_PLAYBOOK_WEIGHT,
        adapt: bool = True,
    ) -> None:
        """Start the decoding process: `decoders` decoders expecting `playbook` (and the
        phrases of any call) with `weight` against the general model, their acoustic model
        adapted to the phone line when `adapt`."""
        self._decoders = decoders
        self._adapt = adapt
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[str]]] = {}
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._proc: Any = None
        self._playbook = playbook
        self._weight = weight
        self._version = playbook.version if playbook is not None else 0
        self._text = self._corpus()
        self.models_built = 0  # language models the child built again (playbook changes)
        self._rebuilt = threading.Condition()
        self._start(start_timeout_s)

    def _corpus(self) -> str:
        """The playbook model's training text; words the recogniser cannot hear are
        logged (they are not in its pronunciation dictionary)."""
        playbook = self._playbook.current() if self._playbook is not None else None
        text, unknown = corpus(playbook_phrases(playbook), dictionary_path())
        if unknown:
            log.warning(
                "pocketsphinx cannot recognise these playbook words (not in its dictionary): %s",
                ", ".join(unknown),
            )
        return text

    def _start(self, timeout: float) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process running pjsua2
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_serve,
            args=(child, self._decoders, self._text, self._weight, self._adapt),
            name="sipagent-stt",
            daemon=True,
        )
        proc.start()
        child.close()
        if not parent.poll(timeout):
            proc.kill()
            raise SttProcessError("pocketsphinx process did not start")
        _, _, problem = parent.recv()  # ("ready", 0, problem)
        if problem:
            log.error("pocketsphinx: %s", problem)
        self._conn, self._proc = parent, proc
        threading.Thread(target=self._read, args=(parent,), name="stt-reader", daemon=True).start()

    def _follow_playbook(self) -> None:
        """Have the child build its model again when the playbook file changed."""
        if self._playbook is None:
            return
        self._playbook.current()
        if self._playbook.version == self._version:
            return
        self._version = self._playbook.version
        self._text = self._corpus()
        self.send("bias", 0, self._text.encode())

    def wait_models_built(self, count: int, timeout: float) -> bool:
        """Wait until the child has built `count` models again (tests, tools)."""
        with self._rebuilt:
            return self._rebuilt.wait_for(lambda: self.models_built >= count, timeout)

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                kind, sid, text = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "model":
                if text:
                    log.error("pocketsphinx: %s", text)
                else:
                    log.info("pocketsphinx: language model rebuilt for the changed playbook")
                with self._rebuilt:
                    self.models_built += 1
                    self._rebuilt.notify_all()
                continue
            with self._lock:
                waiter = self._pending.pop(sid, None)
            if waiter is None:
                continue
            loop, fut = waiter
            if kind == "text":
                loop.call_soon_threadsafe(_settle, fut, text, None)
            else:
                loop.call_soon_threadsafe(_settle, fut, None, SttProcessError(text))
        # The child is gone: fail whoever waits; the next utterance restarts it.
        with self._lock:
            waiters, self._pending = list(self._pending.values()), {}
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(
                    _settle, fut, None, SttProcessError("pocketsphinx process died")
                )

    def expect(self, sid: int) -> asyncio.Future[str]:
        """A future for the transcript of stream `sid` (call on the event loop)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        with self._lock:
            self._pending[sid] = (loop, fut)
        return fut

    def send(self, op: str, sid: int, payload: bytes) -> None:
        """Hand a request to the child; a dead child fails the stream's waiter."""
        conn = self._conn
        try:
            if conn is None:
                raise OSError("closed")
            conn.send((op, sid, payload))
        except (OSError, ValueError):
            with self._lock:
                waiter = self._pending.pop(sid, None)
            if waiter is not None:
                waiter[0].call_soon_threadsafe(
                    _settle, waiter[1], None, SttProcessError("pocketsphinx process is down")
                )

    async def open_stream(self, expect: str | None = None) -> PocketsphinxStream:
        """Start recognising a new utterance (restarting the child if it died), listening
        for digits when `expect` is `EXPECT_DIGITS`."""
        if self._proc is None or not self._proc.is_alive():
            log.warning("pocketsphinx process is down; restarting it")
            await asyncio.to_thread(self._start, 60.0)
        self._follow_playbook()
        sid = next(self._ids)
        self.send("start", sid, (expect or "").encode())
        return PocketsphinxStream(self, sid)

    async def close(self) -> None:
        """Stop the child process."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop", 0, b""))
            conn.close()
        if self._proc is not None:
            await asyncio.to_thread(self._proc.join, 5)
            if self._proc.is_alive():
                self._proc.kill()


def _settle(fut: asyncio.Future[str], text: str | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(text or "")


def build(s: Settings) -> PocketsphinxStt:
    """The provider as the settings configure it (the registry's factory for it)."""
    # One decoder per call this process can hold: a call's pieces reach the decoding process
    # in order (an early final's "end" before the next piece's "start"), so a call never
    # needs two at once. Each decoder costs ~100 MB of RSS in that process.
    # The playbook is what callers are answered from only with the scripted brain; with
    # another brain the decoders expect the phrases of any call.
    scripted = s.providers.brain == "scripted" and s.playbook is not None
    playbook = PlaybookFile(s.playbook) if scripted and s.playbook is not None else None
    return PocketsphinxStt(
        decoders=s.sip.max_calls,
        playbook=playbook,
        weight=s.providers.pocketsphinx_playbook_weight,
        adapt=s.providers.pocketsphinx_phone_line_adaptation,
    )
