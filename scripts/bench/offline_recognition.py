#!/usr/bin/env python3
"""Offline recognition: how well pocketsphinx hears callers that nothing is tuned to, with
its general model ("before") and biased toward the playbook ("after").

The caller utterances below were written for this bench: none is one of the playbook's
examples or keyword phrases, and no test says them. They are synthesised with voices other
than the test softphone's (Piper's "joe"): Debian's flite voices slt, rms, awb and kal16 at
a few speaking rates make 10 renditions (`FLITE`); espeak-ng's formant voices make 10 more
(`ESPEAK`, `--voices espeak`), which pocketsphinx hears far worse: a harder, secondary
figure. Each rendition reaches the recogniser as a caller's speech does: resampled to 8 kHz
over a faint line noise, through G.711 μ-law and back, cut as the agent's VAD cuts a turn
(its 200 ms pre-roll before the speech, a short pause after it), and fed to `decode_stream`
in 60 ms chunks. Nothing is cached on disk: synthesis is fast.

The bare words and digits are said in all 10 renditions of a set. The sentences (intent and
out-of-playbook) are said in 5 of them, every voice among the 5, half of the sentences by
the even renditions and half by the odd: decoding runs at ~0.3 of real time, and every
sentence in every rendition (`--full`) takes twice as long (~10 min for before and after on
two free cores, against ~5).

Figures per mode (rows):

- intent: the intent utterances whose transcript the bakery playbook matches to the intent
  meant (`Playbook.match`); "text ok": the same over only the utterances whose own text the
  playbook matches right, i.e. the recogniser's share once the playbook's is set aside;
- goodbye / yes / no / digits: a bare word, or spoken digits, heard when the transcript's
  words are exactly the utterance's (case and punctuation aside, "4" as "four");
- asked (biased modes): the digit strings again, decoded as while the agent asks for a
  keypad entry that may be spoken (the digits model, `sphinx_bias.entry_corpus`; a
  number misheard by a word is read again from its N-best list in every mode that has
  it, `pocketsphinx_stt.NUMBER_MARGIN`);
- WER: word error rate over all utterances (jiwer, on the same normalised words);
- fresh: the bare words, one digit string and one utterance per intent each decoded on a
  brand-new decoder, against the same audio on the decoder reused across the rendition's
  utterances ("reused", as a call process reuses its decoders): the first utterance should
  be as good;
- false acc: out-of-playbook questions the playbook matched to some intent (they should
  fall back);
- RTF: decoding CPU time / audio time, p50 and p95 (a bigger language model may be slower);
  build: seconds to create a decoder (p50).

Goal (issue): intent ≥ 95 %, and each bare word and the digits heard ≥ 9 times in 10.

"after" is `new_decoder(playbook_corpus(playbook))`, as the agent decodes: biased toward
the playbook at the default weight, and the acoustic model adapted to the phone line
(gateway/providers/phone_line.mllr). "before" is neither, "biased" and "adapted" one of
them each. `--weight W` (repeatable, or comma-separated) passes `weight=W` to "after", a
row per weight. `make_decoder` is the one place a mode's decoder is made.

`--wideband` hands the recogniser the same utterances at 16 kHz without G.711, the
bandwidth the acoustic model was trained on: how much of what is left is the telephone band.

Usage: python scripts/bench/offline_recognition.py [--voices flite|espeak|all]
           [--modes before,biased,adapted,after] [--weight W ...] [--full] [--processes 2]
           [--wideband]
           [--show-errors] [--json]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import multiprocessing
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.audio.g711 import ulaw_decode, ulaw_encode
from gateway.audio.pcm import SAMPLE_RATE, read_wav, resample, rms_dbfs
from gateway.providers.pocketsphinx_stt import MODEL_RATE, decode_stream, new_decoder
from gateway.providers.scripted import DEMO_PLAYBOOK, Playbook, load_playbook, normalize_words

# -- what callers say ----------------------------------------------------------------------
# Intent utterances: phone callers' own phrasing of what each intent of the bakery playbook
# (gateway/playbooks/demo.toml) answers. The even renditions of a voice set say the first,
# third, ... of each, the odd ones the others (`--full`: all say all). The first of each, one
# whose own text the playbook matches right, is also decoded fresh.
INTENT_UTTERANCES: dict[str, tuple[str, ...]] = {
    "hours": (
        "Hi there, what time do you guys open tomorrow?",
        "Are you still open right now?",
        "How late do you stay open on Saturdays?",
        "When does the bakery close tonight?",
        "Are you closed on Sundays?",
        "I was wondering what your hours are.",
        "Is the shop open over the weekend?",
        "What time do you close this evening?",
    ),
    "address": (
        "What's the address of the bakery?",
        "Whereabouts are you located?",
        "Could you tell me how to find you?",
        "Is there somewhere to park nearby?",
        "How do I get there from the highway?",
        "Where is your shop exactly?",
        "Can I get directions from the train station?",
        "Which part of town is your location in?",
    ),
    "menu": (
        "What sort of pastries do you make?",
        "How much does a dozen cookies cost?",
        "Have you got any vegan options?",
        "Could you read me the menu please?",
        "Are your muffins baked fresh?",
        "What's the price of a chocolate croissant?",
        "Do you bake rye bread?",
        "Do you make anything that's gluten free?",
    ),
    "order": (
        "I'd like to get a cake made for my daughter's party.",
        "Could I reserve a couple of loaves?",
        "Do you deliver to offices downtown?",
        "We need catering for a work lunch.",
        "I want to order some cupcakes for a party.",
        "Can you make a custom cake with a photo on it?",
        "I'd like to pre order a wedding cake.",
        "Could I pick up a birthday cake on Friday?",
    ),
    "human": (
        "Can I talk to somebody in the shop please?",
        "I'd rather speak with a real person.",
        "Could you put me through to the manager?",
        "Is there a member of staff I can talk to?",
        "Let me speak to an operator.",
        "I need a human, not a machine.",
        "Connect me to a representative please.",
        "Is there someone there I could ask?",
    ),
    "goodbye": (
        "Okay, thanks a lot, bye now.",
        "That's all I needed, goodbye.",
        "No, nothing else, thanks.",
        "Alright, I'll hang up now.",
        "Great, that is all, have a nice day.",
        "Cheers, bye bye.",
        "Perfect, thank you so much, goodbye.",
        "Okay, I'm done, bye.",
    ),
    "order_status": (
        "I'd like to track my order please.",
        "I have an order number, can you look it up?",
        "I'm calling to check the status of my order.",
        "Is my cake order ready yet?",
        "Is my order ready for pickup yet?",
        "Can I check on an order I placed last week?",
        "What's the order status for my pickup?",
        "Has my order been baked yet?",
    ),
}
# Questions the bakery does not answer: the playbook should fall back on them (said as the
# intent utterances are, in half the renditions).
OUTSIDE = (
    "Do you sell car insurance?",
    "Can you recommend a good plumber?",
    "I think I dialled the wrong number.",
    "Is this the dentist's office?",
    "What's the weather going to be like?",
)
BARE_WORDS = ("goodbye", "yes", "no")
# Spoken digits (an extension, an order number); the first is also decoded fresh.
DIGITS = (
    "one two three four",
    "four",
    "six two nine four one eight",
    "seven",
    "zero",
    "nine one one",
    "eight six zero five",
    "three five two",
)
FRESH_DIGITS = 1


@dataclass(frozen=True)
class Utterance:
    """One thing a caller says and how it is scored."""

    text: str
    kind: str  # "intent", "outside", "word" or "digits"
    expect: str | None  # intent meant ("intent"); the word, or "digits"; None ("outside")
    fresh: bool = False  # also decoded on a brand-new decoder
    half: int | None = None  # said in the even (0) or odd (1) renditions only; None: in all

    def said_in(self, rendition: int, full: bool) -> bool:
        """Whether rendition number `rendition` of its voice set says this utterance."""
        return full or self.half is None or rendition % 2 == self.half


def _utterances() -> tuple[Utterance, ...]:
    said = [
        Utterance(text, "intent", name, fresh=i == 0, half=i % 2)
        for name, texts in INTENT_UTTERANCES.items()
        for i, text in enumerate(texts)
    ]
    said += [Utterance(text, "outside", None, half=i % 2) for i, text in enumerate(OUTSIDE)]
    said += [Utterance(word, "word", word, fresh=True) for word in BARE_WORDS]
    said += [Utterance(d, "digits", "digits", fresh=i < FRESH_DIGITS) for i, d in enumerate(DIGITS)]
    return tuple(said)


UTTERANCES = _utterances()
# The order a reused decoder hears them in: mixed, as a day of calls mixes them, and the
# same every run.
CALL_ORDER = tuple(random.Random(7).sample(range(len(UTTERANCES)), len(UTTERANCES)))


# -- voices --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Voice:
    """One rendition: a synthesiser's voice at a speaking rate (and pitch, for espeak-ng)."""

    synth: str  # "flite" or "espeak-ng"
    name: str
    stretch: float = 1.0  # flite: duration_stretch (>1 speaks slower)
    wpm: int = 160  # espeak-ng: words per minute
    pitch: int = 50  # espeak-ng: 0-99

    @property
    def label(self) -> str:
        """Short name for tables and error lists."""
        if self.synth == "flite":
            return f"{self.name} x{self.stretch:g}"
        return f"{self.name} {self.wpm}wpm p{self.pitch}"

    def command(self, text: str, path: Path) -> list[str]:
        """The command that writes `text`, spoken, to the WAV file `path`."""
        if self.synth == "flite":
            stretch = f"duration_stretch={self.stretch:g}"
            return ["flite", "-voice", self.name, "--setf", stretch, "-t", text, "-o", str(path)]
        return [
            "espeak-ng", "-v", self.name, "-s", str(self.wpm), "-p", str(self.pitch),
            "-w", str(path), text,
        ]  # fmt: skip


# flite's voices: slt (US female), rms (US male), awb (Scottish male), kal16 (US male,
# diphone), each at its own rate and slower/faster (duration_stretch 0.9 is 10 % faster).
# The even and the odd renditions (each says half the sentences) both have every voice.
FLITE: tuple[Voice, ...] = (
    Voice("flite", "slt", 1.0),
    Voice("flite", "slt", 0.9),
    Voice("flite", "rms", 1.0),
    Voice("flite", "rms", 1.15),
    Voice("flite", "awb", 1.0),
    Voice("flite", "awb", 1.15),
    Voice("flite", "kal16", 1.0),
    Voice("flite", "kal16", 0.9),
    Voice("flite", "slt", 1.15),
    Voice("flite", "rms", 0.9),
)
# espeak-ng: accents, voice variants (+f = female, +m = male), rates and pitches.
ESPEAK: tuple[Voice, ...] = (
    Voice("espeak-ng", "en-us", wpm=160, pitch=50),
    Voice("espeak-ng", "en-us", wpm=140, pitch=40),
    Voice("espeak-ng", "en-gb", wpm=160, pitch=50),
    Voice("espeak-ng", "en-gb-x-rp+m3", wpm=160, pitch=45),
    Voice("espeak-ng", "en-us+f2", wpm=150, pitch=60),
    Voice("espeak-ng", "en-us+f4", wpm=140, pitch=70),
    Voice("espeak-ng", "en-gb-scotland", wpm=150, pitch=50),
    Voice("espeak-ng", "en-029", wpm=150, pitch=50),
    Voice("espeak-ng", "en-us+m5", wpm=170, pitch=40),
    Voice("espeak-ng", "en-us-nyc", wpm=155, pitch=50),
)
VOICE_SETS: dict[str, tuple[Voice, ...]] = {"flite": FLITE, "espeak": ESPEAK}

# -- the phone line ------------------------------------------------------------------------
# What the agent's turn detector hands the recogniser: its pre-roll (VadSettings.preroll_ms)
# before the first voiced frame, and after the last one the pause in which the transcript is
# finalised (early_final_ms, 100 ms of quiet, plus the word's fading tail) or the turn ends.
LEAD_MS = 200
TRAIL_MS = 200
VOICED_DBFS = -50.0  # a frame is speech above the turn detector's energy floor
NOISE_DBFS = -70.0  # the line's noise floor: near-silence, not digital zero


def line_audio(pcm: bytes, rate: int, seed: int, wideband: bool = False) -> bytes:
    """A synthesised utterance as the recogniser gets it from a call: 8 kHz over line noise,
    cut to the speech plus the VAD's margins, through G.711 μ-law and back. `wideband`: the
    same at the model's 16 kHz, without G.711 (what the telephone band costs)."""
    line_rate = MODEL_RATE if wideband else SAMPLE_RATE
    frame = line_rate // 50  # 20 ms
    speech = np.frombuffer(resample(pcm, rate, line_rate), dtype="<i2").astype(np.float64)
    frames = len(speech) // frame
    pcm_line = speech.astype("<i2").tobytes()
    loud = [rms_dbfs(pcm_line[i * frame * 2 : (i + 1) * frame * 2]) for i in range(frames)]
    voiced = [i for i, level in enumerate(loud) if level > VOICED_DBFS]
    if not voiced:
        raise RuntimeError("the synthesiser produced no speech")
    start = voiced[0] * frame - LEAD_MS * line_rate // 1000
    end = (voiced[-1] + 1) * frame + TRAIL_MS * line_rate // 1000
    segment = np.zeros(end - start)
    lo, hi = max(start, 0), min(end, len(speech))
    segment[lo - start : hi - start] = speech[lo:hi]
    noise_rms = 32768.0 * 10 ** (NOISE_DBFS / 20)
    segment += np.random.default_rng(seed).normal(0.0, noise_rms, segment.size)
    line = np.clip(np.round(segment), -32768, 32767).astype("<i2").tobytes()
    return line if wideband else ulaw_decode(ulaw_encode(line))


def caller_audio(voice: Voice, text: str, wideband: bool = False) -> bytes:
    """`text` in `voice`, as the recogniser gets it from a call (8 kHz int16 PCM)."""
    with tempfile.TemporaryDirectory(prefix="offline-recognition-") as tmp:
        path = Path(tmp) / "said.wav"
        subprocess.run(voice.command(text, path), check=True, capture_output=True)
        pcm, rate = read_wav(path)
    return line_audio(pcm, rate, zlib.crc32(f"{voice.label}|{text}".encode()), wideband)


# -- recognisers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Mode:
    """A recogniser to measure: the general model, or biased toward the playbook; its
    acoustic model as it ships, or adapted to the phone line."""

    name: str
    biased: bool
    weight: float | None = None  # the interpolation weight, None for the default
    adapted: bool = True


@functools.cache
def playbook() -> Playbook:
    """The bakery playbook (once per process)."""
    return load_playbook(DEMO_PLAYBOOK)


@functools.cache
def corpus() -> str:
    """What the biased recogniser learns from (once per process)."""
    from gateway.providers.sphinx_bias import playbook_corpus

    return playbook_corpus(playbook())


def make_decoder(mode: Mode, asked: bool = False) -> Any:
    """A new pocketsphinx decoder for `mode`, configured as the agent configures it; with
    `asked`, as it decodes while a keypad entry is asked for (a biased mode's digits model)."""
    if asked:
        from gateway.providers.sphinx_bias import ENTRY_WEIGHT, entry_corpus

        return new_decoder(entry_corpus(), weight=ENTRY_WEIGHT, adapt=mode.adapted)
    if not mode.biased:
        return new_decoder(adapt=mode.adapted)
    if mode.weight is None:
        return new_decoder(corpus(), adapt=mode.adapted)
    return new_decoder(corpus(), weight=mode.weight, adapt=mode.adapted)


def bias_missing() -> str | None:
    """Why "after" cannot run in this checkout, or None when it can."""
    try:
        from gateway.providers.sphinx_bias import playbook_corpus  # noqa: F401
    except ImportError:
        return "gateway.providers.sphinx_bias.playbook_corpus is missing"
    if "weight" not in inspect.signature(new_decoder).parameters:
        return "new_decoder() takes no playbook model"
    return None


# -- decoding (in worker processes) --------------------------------------------------------
@dataclass(frozen=True)
class Heard:
    """One decode: what a mode heard of one rendition of one utterance."""

    mode: str
    voice: str  # Voice.label
    index: int  # into UTTERANCES
    fresh: bool  # on a brand-new decoder
    transcript: str
    cpu_s: float
    audio_s: float
    asked: bool = False  # by the decoder used while an entry is asked for (digits only)


_DECODES_ENTRIES = "entry" in inspect.signature(decode_stream).parameters


def _decode(
    mode: Mode,
    voice: Voice,
    index: int,
    pcm: bytes,
    decoder: Any,
    fresh: bool,
    wideband: bool,
    asked: bool = False,
) -> Heard:
    rate = MODEL_RATE if wideband else SAMPLE_RATE
    # As calls decode an entry (a checkout whose decode_stream has no `entry` cannot).
    entry = {"entry": True} if asked and _DECODES_ENTRIES else {}
    started = time.process_time()
    text = decode_stream(pcm, decoder, rate, **entry)
    cpu = time.process_time() - started
    return Heard(mode.name, voice.label, index, fresh, text, cpu, len(pcm) / 2 / rate, asked)


@dataclass(frozen=True)
class Job:
    """One rendition decoded by one mode (a task for a worker process)."""

    voice: Voice
    rendition: int  # its number in its voice set
    mode: Mode
    full: bool  # every utterance, not half of the sentences
    wideband: bool = False  # 16 kHz audio, no telephone band (see line_audio)


def hear(job: Job) -> tuple[list[Heard], list[float]]:
    """One rendition's utterances in call order on one decoder of the job's mode, and the
    `fresh` ones again each on a new decoder. Returns the decodes and the seconds each
    decoder took to create."""
    voice, mode = job.voice, job.mode
    said = [i for i in CALL_ORDER if UTTERANCES[i].said_in(job.rendition, job.full)]
    audio = {i: caller_audio(voice, UTTERANCES[i].text, job.wideband) for i in said}
    started = time.perf_counter()
    decoder = make_decoder(mode)
    builds = [time.perf_counter() - started]
    heard = [_decode(mode, voice, i, audio[i], decoder, False, job.wideband) for i in said]
    del decoder
    if mode.biased:  # the digit strings again, as said when the agent asks for an entry
        entry = make_decoder(mode, asked=True)
        heard += [
            _decode(mode, voice, i, audio[i], entry, False, job.wideband, asked=True)
            for i in said
            if UTTERANCES[i].kind == "digits"
        ]
        del entry
    for i in sorted(i for i in said if UTTERANCES[i].fresh):
        started = time.perf_counter()
        fresh = make_decoder(mode)
        builds.append(time.perf_counter() - started)
        heard.append(_decode(mode, voice, i, audio[i], fresh, True, job.wideband))
        del fresh
    return heard, builds


# -- scoring -------------------------------------------------------------------------------
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_WORDS = dict(zip("0123456789", _NUMBERS, strict=True))
_SPELLINGS = {"ok": "okay"}


def words(text: str) -> list[str]:
    """Lowercase words without punctuation, digits spelt out one by one, "good bye" as
    "goodbye": what the recogniser is scored on."""
    out: list[str] = []
    for word in normalize_words(text):
        if word.isdigit():
            out += [_DIGIT_WORDS[d] for d in word]
        elif word == "bye" and out and out[-1] == "good":
            out[-1] = "goodbye"
        else:
            out.append(_SPELLINGS.get(word, word))
    return out


def intent_of(text: str) -> str | None:
    """The intent the playbook picks for `text` (None: the fallback)."""
    intent = playbook().match(text)
    return intent.name if intent is not None else None


def right(utterance: Utterance, transcript: str) -> bool:
    """Whether a transcript serves the caller: the intent meant, the fallback for an
    out-of-playbook question, or exactly the words of a bare word or digits."""
    if utterance.kind == "intent":
        return intent_of(transcript) == utterance.expect
    if utterance.kind == "outside":
        return intent_of(transcript) is None
    return words(transcript) == words(utterance.text)


@dataclass
class Count:
    """n right of total."""

    n: int = 0
    total: int = 0

    def add(self, ok: bool) -> None:
        self.n += ok
        self.total += 1

    def rate(self) -> float:
        return self.n / self.total if self.total else float("nan")

    def __str__(self) -> str:
        return f"{self.n}/{self.total}"


def text_matches() -> dict[int, bool]:
    """For each intent or out-of-playbook utterance, whether the playbook gets its own text
    right (no recogniser involved)."""
    return {
        i: right(u, u.text) for i, u in enumerate(UTTERANCES) if u.kind in ("intent", "outside")
    }


def pct(values: Sequence[float], q: float) -> float:
    """Percentile (linear interpolation)."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def score(voice_set: str, mode: str, heard: list[Heard], builds: list[float]) -> dict[str, Any]:
    """The figures of one row."""
    text_ok = text_matches()
    intent, intent_text_ok, outside, fresh, reused = Count(), Count(), Count(), Count(), Count()
    bare = {name: Count() for name in (*BARE_WORDS, "digits")}
    asked = Count()  # digit strings heard while an entry is asked for
    refs: list[str] = []
    hyps: list[str] = []
    rtf: list[float] = []
    errors: list[dict[str, Any]] = []
    for h in heard:
        u = UTTERANCES[h.index]
        ok = right(u, h.transcript)
        if h.asked:
            asked.add(ok)
            if not ok:
                errors.append({"voice": h.voice, "kind": "asked", "said": u.text,
                               "heard": h.transcript})  # fmt: skip
            continue
        if u.fresh:
            (fresh if h.fresh else reused).add(ok)
        if h.fresh:
            continue
        refs.append(" ".join(words(u.text)))
        hyps.append(" ".join(words(h.transcript)))
        rtf.append(h.cpu_s / h.audio_s)
        if u.kind == "intent":
            intent.add(ok)
            if text_ok[h.index]:
                intent_text_ok.add(ok)
        elif u.kind == "outside":
            outside.add(not ok)  # counts false accepts
        else:
            bare[str(u.expect)].add(ok)
        if not ok:
            errors.append(
                {
                    "voice": h.voice,
                    "kind": u.kind,
                    "said": u.text,
                    "heard": h.transcript,
                    "expected": u.expect,
                    "matched": intent_of(h.transcript) if u.kind in ("intent", "outside") else None,
                    "text_matches": text_ok.get(h.index, True),
                }
            )
    errors += [
        {"voice": h.voice, "kind": "fresh", "said": UTTERANCES[h.index].text, "heard": h.transcript}
        for h in heard
        if h.fresh and not right(UTTERANCES[h.index], h.transcript)
    ]
    return {
        "voices": voice_set,
        "mode": mode,
        "intent": asdict(intent),
        "intent_text_ok": asdict(intent_text_ok),
        "bare": {name: asdict(c) for name, c in bare.items()},
        "digits_asked": asdict(asked),
        "wer": jiwer.wer(refs, hyps) if refs else float("nan"),
        "fresh": asdict(fresh),
        "reused": asdict(reused),
        "false_accepts": asdict(outside),
        "rtf_p50": pct(rtf, 50),
        "rtf_p95": pct(rtf, 95),
        "build_s_p50": pct(builds, 50),
        "goal_missed": goal_missed(intent, bare),
        "errors": errors,
    }


def goal_missed(intent: Count, bare: dict[str, Count]) -> list[str]:
    """The figures below the issue's goal: intent ≥ 95 %, each bare word and digits ≥ 90 %."""
    missed = ["intent"] if intent.rate() < 0.95 else []
    return missed + [name for name, c in bare.items() if c.rate() < 0.9]


# -- output --------------------------------------------------------------------------------
def _frac(c: dict[str, int], percent: bool = False) -> str:
    text = f"{c['n']}/{c['total']}"
    if percent and c["total"]:
        text += f" {100 * c['n'] / c['total']:.1f}%"
    return text


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rows as a compact table."""
    head = (
        f"{'voices':7} {'mode':13} {'intent':>14} {'text ok':>14} {'goodbye':>8} {'yes':>6}"
        f" {'no':>6} {'digits':>7} {'asked':>7} {'WER':>6} {'fresh':>7} {'reused':>7}"
        f" {'false acc':>9}"
        f" {'RTF p50/p95':>11} {'build s':>7}  goal"
    )
    print(head)
    for r in rows:
        bare = r["bare"]
        goal = "met" if not r["goal_missed"] else "missed: " + ", ".join(r["goal_missed"])
        print(
            f"{r['voices']:7} {r['mode']:13} {_frac(r['intent'], True):>14}"
            f" {_frac(r['intent_text_ok'], True):>14} {_frac(bare['goodbye']):>8}"
            f" {_frac(bare['yes']):>6} {_frac(bare['no']):>6} {_frac(bare['digits']):>7}"
            f" {_frac(r['digits_asked']) if r['digits_asked']['total'] else '-':>7}"
            f" {100 * r['wer']:5.1f}% {_frac(r['fresh']):>7} {_frac(r['reused']):>7}"
            f" {_frac(r['false_accepts']):>9} {r['rtf_p50']:5.2f}/{r['rtf_p95']:<5.2f}"
            f" {r['build_s_p50']:7.2f}  {goal}"
        )


def print_errors(rows: list[dict[str, Any]]) -> None:
    """Every misrecognised utterance, per row."""
    for r in rows:
        print(f"\n{r['voices']} {r['mode']}: {len(r['errors'])} misrecognised")
        for e in sorted(r["errors"], key=lambda e: (e["kind"], e["said"], e["voice"])):
            what = e["kind"]
            if e.get("expected") and e["kind"] == "intent":
                what = f"{e['expected']}→{e['matched'] or 'fallback'}"
                if not e["text_matches"]:
                    what += " (text too)"
            elif e["kind"] == "outside":
                what = f"outside→{e['matched']}"
            print(f"  {what:34} {e['voice']:22} {e['said']!r:50} heard {e['heard']!r}")


def playbook_ceiling() -> str:
    """How the playbook does on the utterances' own text (no recogniser involved)."""
    ok = text_matches()
    per_intent = []
    for name in INTENT_UTTERANCES:
        idx = [i for i, u in enumerate(UTTERANCES) if u.kind == "intent" and u.expect == name]
        per_intent.append(f"{name} {sum(ok[i] for i in idx)}/{len(idx)}")
    outside = [i for i, u in enumerate(UTTERANCES) if u.kind == "outside"]
    intents = [i for i in ok if i not in outside]
    return (
        f"the playbook on the utterances' own text: intents {sum(ok[i] for i in intents)}"
        f"/{len(intents)} right ({', '.join(per_intent)}),"
        f" outside {sum(not ok[i] for i in outside)}/{len(outside)} matched an intent"
    )


# -- main ----------------------------------------------------------------------------------
def _weights(values: list[str]) -> list[float]:
    return [float(w) for value in values for w in value.split(",") if w.strip()]


def _modes(names: str, weights: list[float]) -> list[Mode]:
    modes: list[Mode] = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name == "before":
            modes.append(Mode("before", biased=False, adapted=False))
        elif name == "biased":
            modes.append(Mode("biased", biased=True, adapted=False))
        elif name == "adapted":
            modes.append(Mode("adapted", biased=False))
        elif name == "after" and weights:
            modes += [Mode(f"after w={w:g}", biased=True, weight=w) for w in weights]
        elif name == "after":
            modes.append(Mode("after", biased=True))
        else:
            raise ValueError(f"unknown mode {name!r} (before, biased, adapted, after)")
    return modes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voices", choices=("flite", "espeak", "all"), default="flite")
    ap.add_argument(
        "--modes",
        default="before,after",
        help="comma-separated: before (general model, as shipped), biased (toward the"
        " playbook), adapted (to the phone line), after (both: the agent's default)",
    )
    ap.add_argument(
        "--weight",
        action="append",
        default=[],
        help="interpolation weight of the playbook model (repeatable or comma-separated;"
        " a row per weight)",
    )
    ap.add_argument(
        "--full",
        action="store_true",
        help="every sentence in all 10 renditions (default: in 5, every voice; twice as long)",
    )
    ap.add_argument("--processes", type=int, default=2, help="decoding processes (1-2)")
    ap.add_argument(
        "--wideband",
        action="store_true",
        help="the utterances at 16 kHz without G.711: what the telephone band costs",
    )
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--show-errors", action="store_true", help="list misrecognised utterances")
    args = ap.parse_args()
    try:
        weights = _weights(args.weight)
        modes = _modes(args.modes, weights)
    except ValueError as exc:
        ap.error(str(exc))
    if not modes:
        ap.error("no mode to measure")
    if weights and not any(m.biased for m in modes):
        ap.error("--weight needs the after mode")
    sets = ["flite", "espeak"] if args.voices == "all" else [args.voices]
    for program in sorted({VOICE_SETS[s][0].synth for s in sets}):
        if shutil.which(program) is None:
            print(
                f"{program} is not installed; install the synthesisers with:"
                " sudo apt-get install flite espeak-ng",
                file=sys.stderr,
            )
            return 2
    missing = bias_missing() if any(m.biased for m in modes) else None
    if missing:
        print(f"mode 'after' cannot run here: {missing}; try --modes before", file=sys.stderr)
        return 2

    started = time.perf_counter()
    # The biased modes decode slower: they go first, so the last jobs are short ones.
    jobs = [
        Job(voice, n, mode, args.full, args.wideband)
        for mode in sorted(modes, key=lambda m: not m.biased)
        for s in sets
        for n, voice in enumerate(VOICE_SETS[s])
    ]
    set_of = {voice.label: s for s in sets for voice in VOICE_SETS[s]}
    heard: list[Heard] = []
    builds: dict[tuple[str, str], list[float]] = {}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(max(1, args.processes)) as pool:
        for done, (job, (got, took)) in enumerate(
            zip(jobs, pool.imap(hear, jobs), strict=True), start=1
        ):
            heard += got
            builds.setdefault((set_of[job.voice.label], job.mode.name), []).extend(took)
            elapsed = time.perf_counter() - started
            print(
                f"{done}/{len(jobs)} {job.mode.name}, {job.voice.label} ({elapsed:.0f} s)",
                file=sys.stderr,
            )
    rows = [
        score(
            s,
            mode.name,
            [h for h in heard if h.mode == mode.name and set_of[h.voice] == s],
            builds[(s, mode.name)],
        )
        for s in sets
        for mode in modes
    ]
    elapsed = time.perf_counter() - started
    if args.json:
        if not args.show_errors:
            for r in rows:
                del r["errors"]
        print(
            json.dumps(
                {
                    "ceiling": playbook_ceiling(),
                    "full": args.full,
                    "seconds": elapsed,
                    "rows": rows,
                },
                indent=1,
            )
        )
        return 0
    sentences = sum(u.half is not None for u in UTTERANCES)
    renditions = len(VOICE_SETS[sets[0]])
    print(
        f"\noffline recognition, {' and '.join(sets)} voices: {len(UTTERANCES) - sentences}"
        f" bare words and digits in {renditions} renditions each, {sentences} sentences in"
        f" {renditions if args.full else (renditions + 1) // 2} each; {len(modes)} mode(s),"
        f" {elapsed:.0f} s"
    )
    print(playbook_ceiling())
    print_table(rows)
    if args.show_errors:
        print_errors(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
