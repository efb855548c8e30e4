"""Transfer through Plivo's REST API: the plivo SDK against a loopback fake of the API,
which fetches the transferred leg's XML from a real answer_url app (signed like Plivo)."""

from __future__ import annotations

import asyncio
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from gateway.devtools.demo import free_udp_port
from gateway.pipeline.session import ConversationOptions
from gateway.plivo.transfer import PlivoTransfer, transfer_xml_url
from gateway.policy.transfer import TransferError
from gateway.pool.state import PoolState
from gateway.providers.base import ProviderError
from gateway.records.store import CallRecords
from sip_config import ConfigError, Settings, load_settings
from tests.fakes.plivo_api import FakePlivoApi
from tests.helpers.session import Speak, speech
from tests.helpers.transfer import TransferBrain, start
from xml_app.app import create_app

pytestmark = pytest.mark.timeout(60)

CALL_UUID = "8f0c7a52-1c2b-4a3e-9d4f-5e6a7b8c9d0e"
AUTH_ID = "MAFAKEFAKEFAKEFAKE01"
TOKEN = "fake-token"


def settings_for(api_url: str, public_url: str, **transfer: Any) -> Settings:
    values: dict[str, Any] = {
        "method": "plivo",
        "plivo_auth_id": AUTH_ID,
        "plivo_api_url": api_url,
        "target": "+14155550100",
    }
    values.update(transfer)
    return load_settings(
        None,
        env_file=None,
        overrides={
            "app": {"auth_token": TOKEN, "public_url": public_url},
            "transfer": values,
        },
    )


class App:
    """The answer_url app served on a real loopback port (werkzeug, in a thread)."""

    def __init__(self, tmp: Path, settings: Settings) -> None:
        self.records = CallRecords.open(tmp / "records.db")
        self.pool = PoolState(1, 4)
        app = create_app(settings, self.pool, self.records)
        self.server: BaseWSGIServer = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    port = 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.records.close()


@pytest.fixture
def plivo() -> Iterator[FakePlivoApi]:
    with FakePlivoApi(AUTH_ID, TOKEN, live_calls={CALL_UUID}) as fake:
        yield fake


def served_app(tmp: Path, api_url: str, **transfer: Any) -> tuple[App, Settings]:
    """Start the app on a free port; `public_url` is where it listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    public = f"http://127.0.0.1:{port}"
    settings = settings_for(api_url, public, **transfer)
    App.port = port
    app = App(tmp, settings)
    app.thread.start()
    return app, settings


def test_transfer_xml_url_quotes_the_target() -> None:
    assert (
        transfer_xml_url("https://bot.example.com/", "sip:desk@pbx.example.com")
        == "https://bot.example.com/transfer-xml?target=sip%3Adesk%40pbx.example.com"
    )


def test_rest_transfer_moves_the_a_leg_to_a_dial_of_the_number(
    tmp_path: Path, plivo: FakePlivoApi
) -> None:
    plivo.fetch_xml = True
    app, settings = served_app(tmp_path, plivo.url)
    try:
        outcome = asyncio.run(PlivoTransfer(settings, CALL_UUID).transfer(""))
    finally:
        app.close()
    assert outcome.ok and outcome.target == "+14155550100"
    assert outcome.detail == "Plivo: call transferred"
    assert outcome.hangup_after_s == settings.transfer.plivo_hangup_after_s
    [req] = plivo.requests
    assert req.path == f"/v1/Account/{AUTH_ID}/Call/{CALL_UUID}/"
    assert req.body == {
        "call_uuid": CALL_UUID,  # the SDK repeats it in the body
        "legs": "aleg",
        "aleg_url": f"{settings.app.public_url}/transfer-xml?target=%2B14155550100",
        "aleg_method": "POST",
    }
    # What Plivo got from the app for the caller's leg: a Dial of the human's number.
    [fetched] = plivo.fetched
    assert fetched.status == 200, fetched
    root = ET.fromstring(fetched.body)
    dial = root.find("Dial")
    assert dial is not None and dial.find("Number") is not None
    assert dial.findtext("Number") == "+14155550100"
    assert dial.get("timeout") == str(settings.app.dial_timeout_s)


def test_rest_transfer_to_a_sip_uri_dials_a_user(tmp_path: Path, plivo: FakePlivoApi) -> None:
    plivo.fetch_xml = True
    app, settings = served_app(tmp_path, plivo.url, caller_id="+14155550999")
    try:
        outcome = asyncio.run(
            PlivoTransfer(settings, CALL_UUID).transfer("sip:desk@pbx.example.com")
        )
    finally:
        app.close()
    assert outcome.ok and outcome.target == "sip:desk@pbx.example.com"
    root = ET.fromstring(plivo.fetched[0].body)
    dial = root.find("Dial")
    assert dial is not None
    assert dial.findtext("User") == "sip:desk@pbx.example.com"
    assert dial.get("callerId") == "+14155550999"


def test_the_transfer_xml_route_is_signed_and_checks_its_target(
    tmp_path: Path, plivo: FakePlivoApi
) -> None:
    import urllib.error
    import urllib.request

    app, settings = served_app(tmp_path, plivo.url)
    base = settings.app.public_url
    try:
        # Unsigned: refused.
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(
                urllib.request.Request(f"{base}/transfer-xml?target=%2B1415", data=b"x=1"),
                timeout=5,
            )
        assert info.value.code == 403
        info.value.close()  # the error is the response: its socket is ours to close
        # Signed (the fake signs like Plivo) but a malformed or missing target: 400.
        for query in ("target=%2B1-415-abc", "target=sip%3A", "other=1"):
            fetched = plivo.fetch(f"{base}/transfer-xml?{query}", "POST", CALL_UUID)
            assert fetched.status == 400, (query, fetched)
            assert "target" in fetched.body
    finally:
        app.close()


def test_api_errors_are_provider_errors(tmp_path: Path, plivo: FakePlivoApi) -> None:
    public = "http://127.0.0.1:9"
    unknown = PlivoTransfer(
        settings_for(plivo.url, public), "0" * 8 + "-0000-0000-0000-" + "0" * 12
    )
    with pytest.raises(ProviderError) as info:
        asyncio.run(unknown.transfer(""))
    assert info.value.provider == "plivo" and info.value.kind == "http"
    assert "call not found" in str(info.value)

    wrong = PlivoTransfer(settings_for(plivo.url, public), CALL_UUID)
    wrong.settings.app.auth_token = "not-the-token"
    with pytest.raises(ProviderError) as info:
        asyncio.run(wrong.transfer(""))
    assert info.value.kind == "auth"
    assert "not-the-token" not in str(info.value)

    down = PlivoTransfer(settings_for(f"http://127.0.0.1:{free_udp_port()}", public), CALL_UUID)
    with pytest.raises(ProviderError) as info:
        asyncio.run(down.transfer(""))
    assert info.value.kind == "disconnect"


def test_no_target_is_a_transfer_error(plivo: FakePlivoApi) -> None:
    t = PlivoTransfer(settings_for(plivo.url, "http://127.0.0.1:9", target=None), CALL_UUID)
    with pytest.raises(TransferError, match="no transfer target"):
        asyncio.run(t.transfer(""))
    assert plivo.requests == []


def test_plivo_method_needs_credentials_and_a_public_url() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env_file=None, overrides={"transfer": {"method": "plivo"}})
    text = str(info.value)
    assert "transfer.plivo_auth_id: required" in text
    assert "app.auth_token: required" in text
    assert "app.public_url: required" in text


def test_session_hangs_up_its_leg_after_a_rest_transfer(
    speech_8k: Speak, plivo: FakePlivoApi
) -> None:
    settings = settings_for(plivo.url, "http://127.0.0.1:9", plivo_hangup_after_s=0.3)
    rest = PlivoTransfer(settings, CALL_UUID)
    options = ConversationOptions(end_of_turn_ms=300, transfer_failed_text="No.")

    async def scenario() -> None:
        call, _ = start(TransferBrain("Ok.", ["transfer"]), options, None)
        call.transport.cold_transfer = rest.transfer  # the REST transfer instead of the fake
        try:
            await call.turn(0)
            call.clock.say(speech(speech_8k, "let me talk to a person"))
            await call.until("the API request", lambda: bool(plivo.requests))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await call.until("the hang-up", lambda: bool(call.hangups))
            assert loop.time() - t0 >= 0.2  # Plivo was given time to end the leg first
            assert call.hangups == ["transferred to +14155550100"]
            assert call.session.transfers[0].ok
            await call.hang_up()
        finally:
            await call.stop()

    # On the wall clock: the transfer is a real HTTP request to the fake API, which a
    # virtual clock would jump past while the loop waits for the answer.
    asyncio.run(scenario())


def test_outbound_plivo_credentials_are_used_when_transfer_has_none(
    plivo: FakePlivoApi,
) -> None:
    settings = load_settings(
        None,
        env_file=None,
        overrides={
            "app": {"auth_token": TOKEN, "public_url": "http://127.0.0.1:9"},
            "outbound": {"plivo_auth_id": AUTH_ID, "plivo_api_url": plivo.url},
            "transfer": {"method": "plivo", "target": "+14155550100"},
        },
    )
    outcome = asyncio.run(PlivoTransfer(settings, CALL_UUID).transfer(""))
    assert outcome.ok
    assert [r.path for r in plivo.requests] == [f"/v1/Account/{AUTH_ID}/Call/{CALL_UUID}/"]
