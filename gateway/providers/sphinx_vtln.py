"""Vocal tract length normalisation for the offline recogniser: a caller with a high voice
is heard through a warped frequency axis.

pocketsphinx's en-US acoustic model hears women's and children's voices worse than men's:
their shorter vocal tracts put every formant higher than most of its training speech. The
recogniser's front end can divide the frequencies it analyses by a factor (its
``-warp_type inverse_linear`` with ``-warp_params``, `NativeDecoder.set_warp`), moving
those formants down to where the model learnt them. The factor is chosen per utterance from
the caller's pitch, which goes with vocal tract length: measured by Praat's pitch tracker
(parselmouth) on the utterance's first `HOLD_MS`, held back from the decoder until then.

Measured with scripts/bench/offline_recognition.py, flite voices, one fixed factor for
every caller: the female voice (slt, median pitch ~170 Hz at 8 kHz through G.711) was
heard best at 1.18 to 1.27 (of its 56 intent sentences 52 right unwarped, 53 at 1.18 and 54
at 1.27; digits 4, 6 and 7 of 8), the male voices (rms ~90 Hz, awb ~125 Hz, kal16 ~95 Hz)
at 1 to 1.09 and worse above (rms 54, 52 and 51 intents; kal16 54, 49, 48); every voice at
1.18, intent fell from 267 to 259 of 280. Chosen by pitch, with the full factor 1.22 and
1.28: intent 270 and 269, yes 7 and 8 of 10, no 9 and 10, digits 69 and 68 of 80, WER 12.3
and 11.9 % (unwarped: 267, 6, 7, 63, 15.5 %). espeak-ng's female variants speak at
~210 Hz, its male ones at 85 to 100 Hz.
"""

from __future__ import annotations

import numpy as np

# Pitch at or below which a voice is not warped, and at or above which it gets the full
# factor; linear in between (a voice between the usual men's and women's ranges).
LOW_HZ = 135.0
HIGH_HZ = 175.0
FULL_WARP = 1.28
# Audio of the utterance held back to measure the pitch on (its VAD pre-roll and the first
# ~400 ms of speech); shorter utterances are measured whole. Decoding catches up at ~4x
# real time, before the turn ends.
HOLD_MS = 600
# Praat's pitch search range: low men's to children's voices.
PITCH_FLOOR_HZ = 60.0
PITCH_CEILING_HZ = 400.0
_MIN_VOICED_FRAMES = 5  # of 10 ms: less is too little to go by

# How the cepstral mean of phone-line speech moves per unit of warp (the change from
# unwarped to 1.22, over 0.22): the mean each flite voice's decoder reached after four
# sentences, at both warps, averaged over the four voices. A decoder whose warp changes
# (they are lent to one caller after another) moves its live mean by this much, so that a
# caller's first words are not normalised by another's warp.
WARP_CMN_SLOPE = (-1.6, 3.6, -5.8, -2.7, 16.2, -11.3, 16.5, 0.2, -1.5, 8.1, -24.0, 14.5, -8.8)


def median_pitch(pcm: bytes, rate: int) -> float | None:
    """The median fundamental frequency of the voiced part of `pcm` (int16 mono at
    `rate`), by Praat's autocorrelation pitch tracker; None when too little is voiced."""
    import parselmouth

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    if samples.size < rate // 10:
        return None
    sound = parselmouth.Sound(samples, sampling_frequency=rate)
    pitch = sound.to_pitch(
        time_step=0.01, pitch_floor=PITCH_FLOOR_HZ, pitch_ceiling=PITCH_CEILING_HZ
    )
    f0 = pitch.selected_array["frequency"]
    voiced = f0[f0 > 0]
    if voiced.size < _MIN_VOICED_FRAMES:
        return None
    return float(np.median(voiced))


def shifted_mean(cmn: str, old: float, new: float) -> str:
    """The cepstral mean `cmn` (comma-separated) of speech at warp `old`, as at `new`."""
    values = [float(v) for v in cmn.split(",")]
    if len(values) != len(WARP_CMN_SLOPE):
        return cmn
    step = new - old
    return ",".join(f"{v + k * step:.2f}" for v, k in zip(values, WARP_CMN_SLOPE, strict=True))


def warp_for(pitch: float | None) -> float:
    """The frequency warp for a voice of `pitch` Hz (None, unknown: none)."""
    if pitch is None or pitch <= LOW_HZ:
        return 1.0
    share = min(1.0, (pitch - LOW_HZ) / (HIGH_HZ - LOW_HZ))
    return round(1.0 + share * (FULL_WARP - 1.0), 3)
