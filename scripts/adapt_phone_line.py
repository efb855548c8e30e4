#!/usr/bin/env python3
"""Make gateway/providers/phone_line.mllr: pocketsphinx's en-US acoustic model adapted to
speech as a phone call carries it (8 kHz, G.711), with CMU Sphinx's own adaptation tools.

The model in the pocketsphinx wheel was trained on 16 kHz speech; the gateway upsamples a
call's 8 kHz audio for it, so the model's filters above 4 kHz hear nothing. One global MLLR
transform of the model's means (Leggetter & Woodland's maximum likelihood linear
regression, as CMU Sphinx's adaptation tutorial does it) moves the model toward that
speech. The adaptation speech is Piper's bundled voice saying the sentences below, the call
phrases the recogniser expects (gateway/providers/sphinx_bias.py), digit strings and the
demo playbook's examples, four renditions each at different speaking styles and speeds
(speed perturbation moves the formants, so the transform learns the line more than the
voice), each through a line like the offline recognition bench's (`phone_line` here,
`line_audio` there, which also cuts the speech as the turn detector does): 8 kHz over the
same faint noise, G.711 μ-law, upsampled to 16 kHz as the gateway does.

Needs Debian's `sphinxtrain` (bw, mllr_solve), `sphinxbase-utils` (sphinx_fe) and
`pocketsphinx` (pocketsphinx_mdef_convert): `apt-get install sphinxtrain sphinxbase-utils
pocketsphinx`. The gateway needs none of them: it ships the transform. Piper's synthesis is
random, so two runs give slightly different transforms.

Usage: python scripts/adapt_phone_line.py [--out PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import wave
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audio.g711 import ulaw_decode, ulaw_encode
from gateway.audio.pcm import SAMPLE_RATE, Resampler, resample
from gateway.providers.pocketsphinx_stt import MODEL_RATE, PHONE_LINE_MLLR
from gateway.providers.scripted import DEMO_PLAYBOOK, load_playbook
from gateway.providers.sphinx_bias import CALL_PHRASES, DIGITS, words_of
from gateway.providers.sphinx_native import dictionary_path, model_dir

# Sentences written for the adaptation: everyday phone talk with every English sound in
# it, none of them a sentence of the offline recognition bench or of a test.
SENTENCES = (
    "She sells fresh brown bread and seeded rolls six days a week.",
    "Please pass the salt and the pepper to the guests sitting near the window.",
    "Zero seven six three five nine two four eight one.",
    "Yes, that is exactly what I was asking about, thanks so much.",
    "No, I don't think so, maybe next Saturday.",
    "Could you speak to someone about the shipping costs?",
    "The chef's special this Thursday is a cheese and spinach pastry.",
    "Is the shop still open this afternoon, or has it closed?",
    "Six sixty six, seventy seven, eighty eight, ninety nine.",
    "Goodbye, and have a nice weekend.",
    "Sure, I can wait a second while you check the system.",
    "The fox jumped swiftly past the shed and through the thick hedge.",
    "Which size of birthday cake serves sixteen children?",
    "Sorry, I missed that, could you say it again slowly?",
    "I'd like to reserve three loaves and a dozen croissants.",
    "Where exactly is the parking, and is it free on Sundays?",
    "The fish shop sells fresh salmon, shrimp and scallops.",
    "Yes please, send the receipt to my email address.",
    "Is there somebody in charge I could talk with, please?",
    "Thanks, that's all I needed, bye bye.",
    "I was wondering whether you could help me with something quickly.",
    "My phone number is five five five, zero one nine two.",
    "Hello, can you hear me alright on this line?",
    "We would like a large chocolate cake with white frosting.",
    "The delivery van arrives every morning just after eight.",
    "Could you check whether my payment has gone through?",
    "I'm calling about the letter we received last Tuesday.",
    "It should be ready by half past four this afternoon.",
    "That sounds perfect, thanks for sorting it out.",
    "Can I change the time of my appointment to Friday?",
    "There's a strange noise on the line, can you repeat that?",
    "My account number is three seven one one nine.",
    "Please hold on a moment while I find a pen.",
    "Do you accept cash or only cards at the counter?",
    "I think the street is closed because of the festival.",
    "How many people can you seat in the back room?",
    "Brilliant, I'll see you then, have a good day.",
    "No worries, I can call back later this evening.",
    "Is it possible to pay over the phone right now?",
    "The north entrance is next to the bus stop on Main Road.",
    "Nine, eight, seven, six, five, four, three, two, one, zero.",
    "Oh, I see, so it's cheaper if I order online?",
    "Just a quick question about the weekend specials.",
    "Honestly, I'd rather speak with a manager about this.",
    "Four hundred and twenty two dollars and fifty cents.",
    "What's the best way to reach you if there's a problem?",
    "Yes, exactly, that one, the blue box on the shelf.",
    "I'm afraid I can't make it on Thursday after all.",
    "Would you mind spelling that for me, please?",
    "Great, thank you, that's really useful to know.",
)
DIGIT_STRINGS = 20
# Each sentence is said four times: Piper's noise_scale, noise_w_scale and length_scale,
# and a speed factor (the audio played back that much faster, its formants as much higher).
RENDITIONS = (
    (0.667, 0.8, 1.0, 1.0),
    (0.9, 1.0, 0.85, 1.1),
    (0.5, 0.6, 1.2, 0.92),
    (0.8, 0.9, 1.05, 1.2),
)
PAD_S = 0.2  # silence before and after each sentence, as the turn detector's margins
NOISE_DBFS = -70.0  # the line's noise floor
BW = Path("/usr/lib/sphinxtrain/bw")
MLLR_SOLVE = Path("/usr/lib/sphinxtrain/mllr_solve")
TOOLS = {
    "sphinx_fe": "sphinxbase-utils",
    "pocketsphinx_mdef_convert": "pocketsphinx",
}


def sentences() -> list[str]:
    """What the adaptation speech says."""
    rng = random.Random(3)
    digits = [
        " ".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 7))) for _ in range(DIGIT_STRINGS)
    ]
    examples = [e for intent in load_playbook(DEMO_PLAYBOOK).intents for e in intent.examples]
    return [*SENTENCES, *CALL_PHRASES, *digits, *examples]


# -- the model's mixture weights ------------------------------------------------------------
def read_sendump(path: Path) -> np.ndarray:
    """The mixture weights of a pocketsphinx `sendump` (8-bit negated logs, base 1.0001,
    shifted right by mixw_shift), as an array [senone, stream, density]."""
    data = path.read_bytes()
    pos = 0

    def u32() -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<I", data, pos)
        pos += 4
        return int(value)

    def string() -> str | None:
        nonlocal pos
        n = u32()
        if n == 0:
            return None
        text = data[pos : pos + n - 1].decode()
        pos += n
        return text

    string()  # title
    header: dict[str, int] = {}
    while (line := string()) is not None:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            header[parts[0]] = int(parts[1])
    if header.get("cluster_count", 0):
        raise SystemExit(f"{path}: clustered mixture weights are not supported")
    densities, senones = u32(), u32()
    streams, shift = header["feature_count"], header.get("mixw_shift", 10)
    weights = np.empty((senones, streams, densities))
    for s in range(streams):
        for d in range(densities):
            q = np.frombuffer(data, np.uint8, senones, pos).astype(np.int64) << shift
            pos += senones
            weights[:, s, d] = np.power(1.0001, -q.astype(np.float64))
    return weights


def write_s3_3d(path: Path, array: np.ndarray) -> None:
    """A Sphinx-III binary parameter file holding one 3-D float array."""
    with path.open("wb") as fh:
        head = b"s3\nversion 1.0\n"
        pad = (len(head) + len(b"endhdr\n")) % 4
        fh.write(head + (b" " * (4 - pad) if pad else b"") + b"endhdr\n")
        fh.write(struct.pack("=i", 0x11223344))  # byte-order mark
        d1, d2, d3 = array.shape
        fh.write(struct.pack("=IIII", d1, d2, d3, d1 * d2 * d3))
        fh.write(array.astype("<f4").tobytes())


# -- the adaptation speech -----------------------------------------------------------------
def phone_line(pcm: bytes, rate: int, seed: int) -> bytes:
    """Speech at `rate` as the recogniser gets it from a call: 8 kHz over the line's noise,
    through G.711 μ-law, upsampled to the model's rate."""
    speech = np.frombuffer(resample(pcm, rate, SAMPLE_RATE), "<i2").astype(np.float64)
    pad = np.zeros(int(PAD_S * SAMPLE_RATE))
    line = np.concatenate([pad, speech, pad])
    line += np.random.default_rng(seed).normal(0.0, 32768 * 10 ** (NOISE_DBFS / 20), line.size)
    pcm8k = np.clip(np.round(line), -32768, 32767).astype("<i2").tobytes()
    return Resampler(SAMPLE_RATE, MODEL_RATE).process(ulaw_decode(ulaw_encode(pcm8k)), last=True)


def synthesise(work: Path, texts: list[str]) -> tuple[int, float]:
    """Write the adaptation speech (wav/), its file list and its transcription; returns
    the utterances and the seconds of speech."""
    from piper import SynthesisConfig

    from gateway.providers.piper_tts import load_piper_voice

    voice = load_piper_voice()
    rate = int(voice.config.sample_rate)
    known = {line.split(maxsplit=1)[0] for line in dictionary_path().read_text().splitlines()}
    (work / "wav").mkdir()
    ids: list[str] = []
    lines: list[str] = []
    seconds = 0.0
    for text in texts:
        words = words_of(text)
        missing = [w for w in words if w not in known]
        if missing:
            raise SystemExit(f"not in the pronunciation dictionary: {missing} ({text!r})")
        for noise, noise_w, length, speed in RENDITIONS:
            config = SynthesisConfig(noise_scale=noise, noise_w_scale=noise_w, length_scale=length)
            pcm = b"".join(c.audio_int16_bytes for c in voice.synthesize(text, syn_config=config))
            seed = zlib.crc32(f"{text}|{speed}".encode())
            audio = phone_line(pcm, int(rate * speed), seed)
            name = f"u{len(ids):04d}"
            with wave.open(str(work / "wav" / f"{name}.wav"), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(MODEL_RATE)
                out.writeframes(audio)
            seconds += len(audio) / 2 / MODEL_RATE
            ids.append(name)
            lines.append(f"<s> {' '.join(words)} </s> ({name})")
    (work / "fileids").write_text("\n".join(ids) + "\n")
    (work / "transcription").write_text("\n".join(lines) + "\n")
    return len(ids), seconds


def run(command: list[str], log: Path) -> str:
    """Run one of the Sphinx tools, its output into `log`; fail with its last lines."""
    done = subprocess.run(command, capture_output=True, text=True)
    output = done.stdout + done.stderr
    log.write_text(output)
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise SystemExit(f"{Path(command[0]).name} failed ({done.returncode}):\n{tail}")
    return output


def adapt(work: Path) -> Path:
    """Estimate the transform in `work`; returns its path."""
    model = work / "model"
    shutil.copytree(model_dir() / "en-us", model)
    write_s3_3d(model / "mixture_weights", read_sendump(model / "sendump"))
    run(["pocketsphinx_mdef_convert", "-text", str(model / "mdef"), str(model / "mdef.txt")],
        work / "mdef.log")  # fmt: skip
    count, seconds = synthesise(work, sentences())
    print(f"adaptation speech: {count} utterances, {seconds / 60:.1f} min")
    (work / "mfc").mkdir()
    run(
        ["sphinx_fe", "-argfile", str(model / "feat.params"), "-samprate", str(MODEL_RATE),
         "-c", str(work / "fileids"), "-di", str(work / "wav"), "-do", str(work / "mfc"),
         "-ei", "wav", "-eo", "mfc", "-mswav", "yes"],
        work / "fe.log",
    )  # fmt: skip
    (work / "accum").mkdir()
    output = run(
        [str(BW), "-hmmdir", str(model), "-moddeffn", str(model / "mdef.txt"),
         "-ts2cbfn", ".ptm.", "-feat", "1s_c_d_dd", "-svspec", "0-12/13-25/26-38",
         "-cmn", "current", "-agc", "none", "-dictfn", str(dictionary_path()),
         "-ctlfn", str(work / "fileids"), "-lsnfn", str(work / "transcription"),
         "-cepdir", str(work / "mfc"), "-accumdir", str(work / "accum")],
        work / "bw.log",
    )  # fmt: skip
    overall = re.findall(r"^overall> .*$", output, re.MULTILINE)
    if overall:
        print(f"bw: {overall[-1]}")
    transform = work / "phone_line.mllr"
    run(
        [str(MLLR_SOLVE), "-meanfn", str(model / "means"), "-varfn", str(model / "variances"),
         "-outmllrfn", str(transform), "-accumdir", str(work / "accum")],
        work / "mllr.log",
    )  # fmt: skip
    return transform


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PHONE_LINE_MLLR, help="where to write it")
    parser.add_argument("--keep", type=Path, help="keep the work files in this new directory")
    args = parser.parse_args()
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    missing += ["sphinxtrain"] if not (BW.exists() and MLLR_SOLVE.exists()) else []
    if missing:
        print(f"needs: apt-get install {' '.join(sorted(set(missing)))}", file=sys.stderr)
        return 2
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        transform = adapt(args.keep)
        shutil.copyfile(transform, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="sipagent-adapt-") as tmp:
            transform = adapt(Path(tmp))
            shutil.copyfile(transform, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
