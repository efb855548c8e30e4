"""Tests for gateway.audio.pcm."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest

from gateway.audio import pcm
from gateway.audio.pcm import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SILENCE_FRAME,
    Resampler,
    read_wav,
    read_wav_8k,
    resample,
    rms_dbfs,
    split_frames,
    write_wav,
)


def tone(freq: float, seconds: float, rate: int = SAMPLE_RATE, amplitude: float = 0.5) -> bytes:
    """A sine tone as int16 PCM."""
    t = np.arange(int(seconds * rate)) / rate
    samples = np.round(np.sin(2 * np.pi * freq * t) * amplitude * 32767)
    return samples.astype("<i2").tobytes()


def dominant_freq(data: bytes, rate: int) -> float:
    samples = np.frombuffer(data, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


def test_constants() -> None:
    assert (SAMPLE_RATE, FRAME_MS, FRAME_SAMPLES, FRAME_BYTES) == (8000, 20, 160, 320)
    assert bytes(320) == SILENCE_FRAME


def test_rms_dbfs_levels() -> None:
    assert rms_dbfs(SILENCE_FRAME) == -120.0
    assert rms_dbfs(b"") == -120.0
    full_square = np.array([32767, -32768] * 80, dtype="<i2").tobytes()
    assert rms_dbfs(full_square) == pytest.approx(0.0, abs=0.01)
    # A sine at half scale: 20*log10(0.5 / sqrt(2)) = -9.03 dBFS.
    assert rms_dbfs(tone(440, 1.0)) == pytest.approx(-9.03, abs=0.05)
    one_lsb = np.ones(160, dtype="<i2").tobytes()
    assert rms_dbfs(one_lsb) == pytest.approx(20 * math.log10(1 / 32768), abs=0.01)
    assert math.isfinite(rms_dbfs(one_lsb))


def test_split_frames_pads_last() -> None:
    data = bytes(range(256)) * 3  # 768 bytes = 2 full frames + 128 bytes
    frames = split_frames(data)
    assert [len(f) for f in frames] == [320, 320, 320]
    assert b"".join(frames)[: len(data)] == data
    assert frames[-1][128:] == bytes(192)
    assert split_frames(b"") == []
    assert split_frames(bytes(640)) == [SILENCE_FRAME, SILENCE_FRAME]


def test_resample_one_shot_keeps_pitch_and_length() -> None:
    src = tone(440, 1.0, rate=22050)
    out = resample(src, 22050, 8000)
    assert abs(len(out) // 2 - 8000) <= 2
    assert dominant_freq(out, 8000) == pytest.approx(440, abs=3)
    assert resample(src, 22050, 22050) == src
    assert resample(b"", 16000, 8000) == b""


def test_resampler_stream_matches_rate_and_pitch() -> None:
    src = tone(300, 2.0, rate=16000)
    rs = Resampler(16000, 8000)
    out = b""
    # Deliberately odd chunk sizes, including ones that split a sample.
    pos = 0
    for size in [1, 333, 640, 7, 1000, 2048] * 20:
        if pos >= len(src):
            break
        out += rs.process(src[pos : pos + size])
        pos += size
    out += rs.process(src[pos:], last=True)
    assert len(out) % 2 == 0
    assert abs(len(out) // 2 - 16000) <= 4
    assert dominant_freq(out, 8000) == pytest.approx(300, abs=3)


def test_resampler_passthrough_when_rates_equal() -> None:
    rs = Resampler(8000, 8000)
    data = tone(500, 0.1)
    assert rs.process(data[:101]) + rs.process(data[101:], last=True) == data


def test_wav_round_trip(tmp_path: Path) -> None:
    data = tone(440, 0.5)
    path = tmp_path / "a.wav"
    write_wav(path, data)
    assert read_wav(path) == (data, 8000)
    assert read_wav_8k(path) == data


def test_read_wav_stereo_mixes_to_mono(tmp_path: Path) -> None:
    left = np.full(100, 1000, dtype="<i2")
    right = np.full(100, 3000, dtype="<i2")
    inter = np.column_stack([left, right]).reshape(-1).tobytes()
    path = tmp_path / "s.wav"
    write_wav(path, inter, rate=16000, channels=2)
    data, rate = read_wav(path)
    assert rate == 16000
    assert np.frombuffer(data, dtype="<i2").tolist() == [2000] * 100


def test_read_wav_8bit(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes([128, 255, 0, 192]))
    data, rate = read_wav(path)
    assert rate == 8000
    assert np.frombuffer(data, dtype="<i2").tolist() == [0, 127 * 256, -32768, 64 * 256]


def test_read_wav_8k_resamples(tmp_path: Path) -> None:
    path = tmp_path / "hi.wav"
    write_wav(path, tone(1000, 1.0, rate=16000), rate=16000)
    out = read_wav_8k(path)
    assert abs(len(out) // 2 - 8000) <= 2
    assert dominant_freq(out, 8000) == pytest.approx(1000, abs=3)


def test_read_wav_rejects_24bit(tmp_path: Path) -> None:
    path = tmp_path / "24.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(8000)
        w.writeframes(bytes(30))
    with pytest.raises(ValueError, match="24 bits"):
        pcm.read_wav(path)


def test_resampling_the_same_audio_gives_the_same_samples() -> None:
    # soxr's int16 output adds random dither: the recogniser then heard the same clip as
    # "goodbye" one run and "the bike" the next.
    rng = np.random.default_rng(7)
    pcm = (rng.standard_normal(8000) * 3000).astype("<i2").tobytes()
    assert resample(pcm, 8000, 16000) == resample(pcm, 8000, 16000)

    def streamed() -> bytes:
        rs = Resampler(8000, 16000)
        chunks = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
        return b"".join(rs.process(c, last=i == len(chunks) - 1) for i, c in enumerate(chunks))

    assert streamed() == streamed()
