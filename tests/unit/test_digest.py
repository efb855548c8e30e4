"""Digest authentication of incoming calls (gateway.sip.digest) and its place in the
SIP guard's screen: challenges, checks, replays, lockouts and configuration."""

from __future__ import annotations

import re

import pytest

from gateway.sip.digest import DigestCredentials, DigestServer, digest_response
from gateway.sip.screen import Screen, ScreenState
from sip_config import ConfigError, load_settings

CREDS = DigestCredentials("sipagent", "plivo", "s3cret-pass-42")
URI = "sip:agent@127.0.0.1:5070"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def nonce_of(challenge: str) -> str:
    m = re.search(r'nonce="([^"]+)"', challenge)
    assert m, challenge
    return m[1]


def authorization(
    nonce: str,
    *,
    user: str = "plivo",
    password: str = "s3cret-pass-42",
    uri: str = URI,
    qop: bool = True,
    realm: str = "sipagent",
) -> str:
    if qop:
        response = digest_response(
            user, realm, password, "INVITE", uri, nonce, qop="auth", nc="00000001", cnonce="ab"
        )
        extra = ', qop=auth, nc=00000001, cnonce="ab"'
    else:
        response = digest_response(user, realm, password, "INVITE", uri, nonce)
        extra = ""
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}",'
        f' response="{response}", algorithm=MD5{extra}'
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> DigestServer:
    return DigestServer(CREDS, clock=clock)


def test_rfc2617_example_response() -> None:
    # RFC 2617 section 3.5's worked example.
    assert (
        digest_response(
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def test_the_challenge_names_realm_algorithm_and_qop(server: DigestServer) -> None:
    challenge = server.challenge()
    assert challenge.startswith('Digest realm="sipagent", nonce="')
    assert 'algorithm=MD5, qop="auth"' in challenge and "stale" not in challenge
    assert server.challenge(stale=True).endswith(", stale=true")
    assert nonce_of(server.challenge()) != nonce_of(server.challenge())


@pytest.mark.parametrize("qop", [True, False])
def test_right_credentials_pass_once(server: DigestServer, qop: bool) -> None:
    auth = authorization(nonce_of(server.challenge()), qop=qop)
    assert server.check("INVITE", URI, auth, "192.0.2.1") == "ok"
    # The same Authorization again (a replay, or a client reusing the nonce): stale.
    assert server.check("INVITE", URI, auth, "192.0.2.1") == "stale"


def test_missing_or_other_realm_credentials_are_missing(server: DigestServer) -> None:
    assert server.check("INVITE", URI, "", "192.0.2.1") == "missing"
    other = authorization(nonce_of(server.challenge()), realm="elsewhere")
    assert server.check("INVITE", URI, other, "192.0.2.1") == "missing"
    assert server.check("INVITE", URI, "Basic dXNlcjpwYXNz", "192.0.2.1") == "missing"


def test_ours_is_found_among_several_credentials(server: DigestServer) -> None:
    ours = authorization(nonce_of(server.challenge()))
    other = authorization("abc", realm="elsewhere")
    assert server.check("INVITE", URI, f"{other}, {ours}", "192.0.2.1") == "ok"


@pytest.mark.parametrize(
    "change",
    [
        {"password": "not-the-password"},
        {"user": "someone"},
        {"uri": "sip:agent@127.0.0.1:5071"},
    ],
)
def test_wrong_user_password_or_uri_is_wrong(server: DigestServer, change: dict[str, str]) -> None:
    auth = authorization(nonce_of(server.challenge()), **change)  # type: ignore[arg-type]
    assert server.check("INVITE", URI, auth, "192.0.2.1") == "wrong"


def test_a_nonce_this_server_did_not_make_is_wrong(server: DigestServer, clock: Clock) -> None:
    forged = authorization(f"{int(clock.now):x}.0011223344556677.{'0' * 32}")
    assert server.check("INVITE", URI, forged, "192.0.2.1") == "wrong"
    other = DigestServer(CREDS, clock=clock)
    theirs = authorization(nonce_of(other.challenge()))
    assert server.check("INVITE", URI, theirs, "192.0.2.1") == "wrong"


def test_an_expired_nonce_is_stale(server: DigestServer, clock: Clock) -> None:
    nonce = nonce_of(server.challenge())
    clock.now += 31
    assert server.check("INVITE", URI, authorization(nonce), "192.0.2.1") == "stale"


def test_a_source_that_keeps_failing_is_locked_out_for_a_while(
    server: DigestServer, clock: Clock
) -> None:
    for _ in range(10):
        bad = authorization(nonce_of(server.challenge()), password="guess-guess")
        assert server.check("INVITE", URI, bad, "192.0.2.66") == "wrong"
    good = authorization(nonce_of(server.challenge()))
    assert server.check("INVITE", URI, good, "192.0.2.66") == "locked"
    # Other sources are not affected.
    assert server.check("INVITE", URI, good, "192.0.2.1") == "ok"
    clock.now += 61
    again = authorization(nonce_of(server.challenge()))
    assert server.check("INVITE", URI, again, "192.0.2.66") == "ok"


def test_the_password_is_never_in_a_repr() -> None:
    assert "s3cret" not in repr(CREDS)
    settings = load_settings(
        None,
        env_file=None,
        overrides={"sip": {"inbound_auth": {"username": "plivo", "password": "s3cret-pass-42"}}},
    )
    assert "s3cret" not in repr(settings)


def _invite(auth: str | None = None, *, in_dialog: bool = False, method: str = "INVITE") -> bytes:
    to = f"<{URI}>;tag=x1" if in_dialog else f"<{URI}>"
    lines = [
        f"{method} {URI} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1",
        "From: <sip:caller@192.0.2.1>;tag=a",
        f"To: {to}",
        "Call-ID: c1",
        f"CSeq: 1 {method}",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


def test_the_screen_challenges_new_calls_only(server: DigestServer, clock: Clock) -> None:
    screen = Screen(lambda _source: True, auth=server)
    state = ScreenState()
    refusal = screen.request(_invite(), "192.0.2.1:5060", state, clock.now)
    assert refusal is not None and refusal.code == 401
    (name, challenge), *_ = refusal.headers
    assert name == "WWW-Authenticate" and challenge.startswith("Digest ")
    good = _invite(authorization(nonce_of(challenge)))
    assert screen.request(good, "192.0.2.1:5060", state, clock.now) is None
    # In-dialog requests and capability pings are not challenged.
    assert screen.request(_invite(in_dialog=True), "192.0.2.1:5060", state, clock.now) is None
    ping = _invite(method="OPTIONS")
    assert screen.request(ping, "192.0.2.1:5060", state, clock.now) is None
    # Without credentials configured, nothing is challenged.
    assert Screen(lambda _s: True).request(_invite(), "192.0.2.1:5060", state, clock.now) is None


def test_the_screen_refuses_a_locked_out_source_with_403(
    server: DigestServer, clock: Clock
) -> None:
    screen = Screen(lambda _source: True, auth=server, new_calls_per_s=50)
    state = ScreenState()
    for _ in range(10):
        bad = _invite(authorization(nonce_of(server.challenge()), password="guess-guess"))
        refusal = screen.request(bad, "192.0.2.9:5060", state, clock.now)
        assert refusal is not None and refusal.code == 401 and refusal.why == "wrong credentials"
    refusal = screen.request(_invite(), "192.0.2.9:5060", state, clock.now)
    assert refusal is not None and refusal.code == 403


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"username": "plivo"}, "set both username and password"),
        ({"password": "s3cret-pass-42"}, "set both username and password"),
        ({"username": "plivo", "password": "short"}, "8 to 128 printable ASCII"),
        ({"username": "plivo", "password": 'has"quote1'}, "8 to 128 printable ASCII"),
        ({"username": "a b", "password": "s3cret-pass-42"}, "letters, digits"),
    ],
)
def test_bad_inbound_auth_settings_are_clear_errors(auth: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, env_file=None, overrides={"sip": {"inbound_auth": auth}})
