"""Ports for agents started by tests, benches and the demo: nobody else gets them before the
agent binds them, seconds later."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest

from gateway.devtools import demo
from gateway.devtools.demo import PORT_BLOCK, free_udp_port, free_udp_tcp_port, rtp_base_for


@pytest.fixture
def own_counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The block counter in this test's own directory, not the machine's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return demo._counter_path()


def _first() -> int:
    return demo._ephemeral_range()[1] + 1


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_port_handed_out_is_above_the_range_that_port_0_binds_draw_from(
    own_counter: Path,
) -> None:
    # Before, the port came from binding port 0: any socket bound to port 0 by another
    # process (a softphone's, sipp's) could get it before the agent had loaded its models,
    # and a second worker's port, the next one, was never checked.
    _, high = demo._ephemeral_range()
    ports = [free_udp_port() for _ in range(3)]
    assert all(p > high for p in ports), (ports, high)
    assert len(set(ports)) == 3
    for p in ports:
        assert (p - _first()) % PORT_BLOCK == 0
        # A pool's workers take the port and the ones after it.
        assert all(_udp_free(q) for q in range(p, p + PORT_BLOCK)), p


def test_a_block_with_a_port_in_use_is_skipped(own_counter: Path) -> None:
    index = 5
    own_counter.write_text(str(index))
    taken = _first() + index * PORT_BLOCK + 3  # a fourth worker's port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", taken))
        port = free_udp_port()
    assert not port <= taken < port + PORT_BLOCK, (port, taken)
    assert port >= taken  # the counter went on, not back
    assert int(own_counter.read_text()) == (port - _first()) // PORT_BLOCK + 1


def test_a_port_for_udp_and_tcp_is_free_for_tcp_too(own_counter: Path) -> None:
    own_counter.write_text("7")
    busy = _first() + 7 * PORT_BLOCK
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind(("127.0.0.1", busy))
        port = free_udp_tcp_port()
    assert port != busy and port > _first()


def test_the_counter_wraps_around(own_counter: Path) -> None:
    blocks = (65536 - _first()) // PORT_BLOCK
    own_counter.write_text(str(blocks - 1))
    assert free_udp_port() == _first() + (blocks - 1) * PORT_BLOCK
    assert own_counter.read_text() == "0"
    assert free_udp_port() < _first() + (blocks - 1) * PORT_BLOCK


def test_without_room_above_the_ephemeral_range_a_port_0_bind_is_used(
    own_counter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "_ephemeral_range", lambda: (1024, 65530))
    port = free_udp_port()
    assert 1024 <= port <= 65535
    both = free_udp_tcp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind(("127.0.0.1", both))  # free for TCP too
    assert not own_counter.exists()


def test_agents_on_neighbouring_blocks_get_disjoint_rtp_ranges() -> None:
    first = _first()
    span = 320
    starts = [rtp_base_for(first + i * PORT_BLOCK, span) for i in range(40)]
    assert len(set(starts)) == 40, starts
    assert all(start + span <= 32768 for start in starts)


def test_a_link_in_the_counters_place_is_not_followed(own_counter: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("somebody's file\n")
    own_counter.symlink_to(precious)
    port = free_udp_port()  # a port-0 bind instead
    assert 1024 <= port <= 65535
    assert precious.read_text() == "somebody's file\n"
