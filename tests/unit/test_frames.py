"""Tests for gateway.sip.frames: fast copies between pjsua2 MediaFrame buffers and bytes."""

from __future__ import annotations

from typing import Any

import pjsua2 as pj
import pytest

from gateway.sip import frames
from gateway.sip.frames import layout_ok, read_frame, write_frame


def pattern(length: int, seed: int = 0) -> bytes:
    """Bytes where every position differs from its neighbours (catches shifts and truncation)."""
    return bytes((i * 7 + seed) % 256 for i in range(length))


def swig_bytes(frame: Any) -> bytes:
    """The payload read through the slow, safe SWIG path, element by element."""
    return bytes(list(frame.buf))


@pytest.fixture(params=[True, False], ids=["fast", "swig"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test over the pointer fast path and over the SWIG fallback."""
    fast = bool(request.param)
    monkeypatch.setattr(frames, "_FAST", fast)
    return fast


def test_layout_ok_on_this_machine() -> None:
    assert layout_ok() is True


def test_write_then_read_round_trips_one_frame(path: bool) -> None:
    frame = pj.MediaFrame()
    data = pattern(320)
    write_frame(frame, data)
    assert frame.size == 320
    assert frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO
    assert frame.buf.size() == 320
    assert read_frame(frame) == data
    assert swig_bytes(frame) == data
    assert bytes(frame.buf) == data


@pytest.mark.parametrize("length", [0, 2, 160, 320, 640])
def test_lengths_round_trip_on_fresh_frames(path: bool, length: int) -> None:
    frame = pj.MediaFrame()
    data = pattern(length, seed=length)
    write_frame(frame, data)
    assert frame.size == length
    assert frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO
    assert read_frame(frame) == data
    assert swig_bytes(frame) == data


def test_one_frame_reused_with_growing_and_shrinking_payloads(path: bool) -> None:
    frame = pj.MediaFrame()
    for n, length in enumerate([320, 640, 160, 0, 320, 320, 2, 640]):
        data = pattern(length, seed=n)
        write_frame(frame, data)
        assert frame.size == length, (n, length)
        assert read_frame(frame) == data, (n, length)
        assert swig_bytes(frame) == data, (n, length)


def test_fast_and_swig_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pj.MediaFrame()
    data = pattern(320, seed=3)
    monkeypatch.setattr(frames, "_FAST", True)
    write_frame(frame, data)
    fast_read = read_frame(frame)
    monkeypatch.setattr(frames, "_FAST", False)
    slow_read = read_frame(frame)
    assert fast_read == slow_read == swig_bytes(frame) == data
    # And the other way round: written by the SWIG path, read by the fast one.
    other = pattern(160, seed=9)
    write_frame(frame, other)
    monkeypatch.setattr(frames, "_FAST", True)
    assert read_frame(frame) == other


def test_read_frame_of_a_buffer_set_through_swig(path: bool) -> None:
    frame = pj.MediaFrame()
    data = pattern(320, seed=5)
    frame.buf = pj.ByteVector(data)
    frame.size = len(data)
    assert read_frame(frame) == data


def test_read_frame_of_an_empty_frame_is_empty(path: bool) -> None:
    assert read_frame(pj.MediaFrame()) == b""


def test_read_frame_returns_a_copy(path: bool) -> None:
    frame = pj.MediaFrame()
    first = pattern(320, seed=1)
    write_frame(frame, first)
    got = read_frame(frame)
    write_frame(frame, pattern(320, seed=2))
    assert got == first
    assert isinstance(got, bytes)


def test_write_frame_accepts_silence_and_full_scale(path: bool) -> None:
    frame = pj.MediaFrame()
    for data in (bytes(320), b"\xff" * 320, b"\x00\x80" * 160):
        write_frame(frame, data)
        assert read_frame(frame) == data
        assert swig_bytes(frame) == data
