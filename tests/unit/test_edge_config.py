"""The edge's generated Kamailio configuration (gateway.edge.config), without the network."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.edge import process
from gateway.edge.config import (
    SDP_REFUSED,
    EdgePlan,
    dispatcher_list,
    kamailio_cfg,
    sdp_regex_file,
    tls_cfg,
)
from gateway.sip.digest import DigestCredentials
from gateway.sip.screen import sdp_problem
from tests.helpers.kamailio import kamailio_binary
from tests.helpers.sipraw import sdp_offer


def plan(tmp: Path, **kwargs: object) -> EdgePlan:
    base: dict[str, object] = {
        "listen_host": "127.0.0.1",
        "listen_port": 5060,
        "run_dir": tmp,
        "workers": ("127.0.0.1:5070", "127.0.0.1:5071", "10.0.0.12:5060"),
        "allow_networks": ("127.0.0.1/32", "192.0.2.0/24", "2001:db8::/32"),
    }
    base.update(kwargs)
    return EdgePlan(**base)  # type: ignore[arg-type]


def edge_refuses(sdp: str) -> bool:
    """What Kamailio's regex group 0 decides (PCRE with PCRE_MULTILINE; Python's re runs
    these patterns the same way)."""
    return any(re.search(p, sdp, re.MULTILINE) for p in SDP_REFUSED)


@pytest.mark.parametrize(
    "sdp",
    [
        sdp_offer(),
        sdp_offer(audio_lines=2),
        sdp_offer(audio_lines=3),
        sdp_offer(audio_lines=16),
        sdp_offer(connection="a" * 254),
        sdp_offer(connection="example.com"),
        sdp_offer(connection="0.0.0.0"),
        sdp_offer().replace("IN IP4 127.0.0.1\r\nt=", "IN IP6 ::1\r\nt="),
        sdp_offer() + "a=rtcp:40001 IN IP4 " + "b" * 300 + "\r\n",
        sdp_offer() + "a=rtcp:40001 IN IP4 127.0.0.1\r\n",
        sdp_offer() + "a=rtcp:40001\r\n",
        sdp_offer().replace("m=audio 40000", "m=audio 4x"),
        sdp_offer().replace("o=- ", "o=" + "u" * 250 + " "),
    ],
)
def test_the_edge_refuses_the_sdp_the_guard_refuses(sdp: str) -> None:
    guard = sdp_problem(sdp.encode()) is not None
    if "uuuu" in sdp:
        guard = True  # an over-long origin line: refused at the edge only (a worker takes it)
    assert edge_refuses(sdp) == guard, sdp_problem(sdp.encode())


def test_files_name_every_worker_and_only_ipv4_networks(tmp_path: Path) -> None:
    p = plan(tmp_path)
    text = kamailio_cfg(p)
    assert 'is_in_subnet("$si", "127.0.0.1/32,192.0.2.0/24")' in text
    assert "listen=udp:127.0.0.1:5060" in text and "listen=tcp:127.0.0.1:5060" in text
    assert "listen=tls" not in text and 'loadmodule "tls.so"' not in text
    assert dispatcher_list(p).splitlines()[1:] == [
        "1 sip:127.0.0.1:5070 0 0 duid=w0",
        "1 sip:127.0.0.1:5071 0 0 duid=w1",
        "1 sip:10.0.0.12:5060 0 0 duid=w2",
    ]
    assert sdp_regex_file().startswith("[0]\n")
    assert tls_cfg(p) == ""


def test_tls_and_advertised_address(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    p = plan(tmp_path, public_host="203.0.113.9", tls_port=5061, tls_cert=cert, tls_key=key)
    text = kamailio_cfg(p)
    assert "listen=tls:127.0.0.1:5061 advertise 203.0.113.9:5061" in text
    assert "enable_tls=yes" in text and f"certificate = {cert}" in tls_cfg(p)
    assert p.uri == "sip:203.0.113.9:5060"


@pytest.mark.skipif(kamailio_binary() is None, reason="kamailio (Debian package) missing")
@pytest.mark.parametrize("auth", [False, True])
def test_kamailio_accepts_the_generated_configuration(tmp_path: Path, auth: bool) -> None:
    creds = DigestCredentials("sipagent", "plivo", "s3cret-pass-42") if auth else None
    p = plan(tmp_path, inbound_auth=creds, auth_secret="k" * 32)
    assert ("route(AUTH);" in kamailio_cfg(p)) is auth
    (tmp_path / "dispatcher.list").write_text(dispatcher_list(p))
    (tmp_path / "sdp.regex").write_text(sdp_regex_file())
    p.cfg_path.write_text(kamailio_cfg(p))
    binary = kamailio_binary()
    assert binary is not None
    check = subprocess.run(
        [binary, "-c", "-f", str(p.cfg_path)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_missing_kamailio_is_one_line_naming_the_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(process.EdgeError) as info:
        process.find_kamailio()
    assert str(info.value) == (
        "edge.enabled: Kamailio is not installed"
        " (Debian: apt-get install kamailio kamailio-tls-modules)"
    )
    with pytest.raises(process.EdgeError, match=re.escape("edge.kamailio: /nowhere/kamailio")):
        process.find_kamailio("/nowhere/kamailio")
