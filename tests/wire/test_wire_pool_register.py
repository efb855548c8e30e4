"""Register mode through `sipagent serve`: each worker registers its own endpoint with a real
Kamailio registrar, and the answer_url app dials only registered workers."""

from __future__ import annotations

import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.fakes.http import get_json
from tests.helpers.kamailio import kamailio_binary, running_kamailio
from tests.helpers.wire import (
    answer,
    finish_call,
    plivo_post,
    running_pool,
    start_call,
    wait_for,
)

pytestmark = [
    pytest.mark.wire,
    pytest.mark.skipif(kamailio_binary() is None, reason="kamailio (Debian package) missing"),
]


def test_app_dials_only_registered_workers(tmp_path: Path) -> None:
    users = {"agent1": "secret1", "agent2": "secret2", "agent3": "secret3"}
    with running_kamailio(users, max_expires=60) as kam:
        config = tmp_path / "pool.toml"
        config.write_text(
            f"""
[sip]
mode = "register"

[registration]
registrar = "{kam.address}"
first_retry_s = 1
max_retry_s = 2
accounts = [
  {{ username = "agent1", password = "secret1" }},
  {{ username = "agent2", password = "secret2" }},
  {{ username = "agent3", password = "not-the-password" }},
]

[providers]
stt = "fake"
tts = "fake"
brain = "fake"
"""
        )
        with running_pool(tmp_path, 3, config, pool__spare="false") as pool:
            assert pool.app_url is not None
            status_url = pool.app_url + "/readyz"

            def two_registered_one_refused() -> bool:
                _, body = get_json(status_url)
                workers = body["workers"]
                # agent3 is "registering" until the registrar's 401 to its wrong password.
                return [w["registered"] for w in workers] == [True, True, False] and (
                    "credentials" in workers[2]["registration"]
                )

            wait_for(two_registered_one_refused, 30, "agent1 and agent2 registered, agent3 refused")
            assert kam.contacts("agent1") and kam.contacts("agent2")
            assert not kam.contacts("agent3")

            routed = [answer(pool, f"+1415555{2000 + i}") for i in range(8)]
            dialled = sorted(urllib.parse.urlparse(uri).path.split("@")[0] for _, uri, _ in routed)
            assert dialled == ["agent1"] * 4 + ["agent2"] * 4, routed
            status, xml = plivo_post(
                pool.app_url + "/answer",
                {"CallUUID": str(uuid.uuid4()), "From": "+14155550002", "To": "+14155550100"},
            )
            assert status == 200 and ET.fromstring(xml).find("Speak") is not None, xml

            # Ring the first routed endpoint the way Plivo would: through the registrar.
            call_uuid, uri, headers = routed[0]
            user = uri.removeprefix("sip:").split("@")[0]
            t0 = time.monotonic()
            report = finish_call(
                start_call(f"sip:{user}@{kam.address}", "--say", "hello there", *headers), 90
            )
            assert report["returncode"] == 0, report["stderr"][-2000:]
            assert report["steps"][0]["reply_latency_ms"] is not None, report
            assert time.monotonic() - t0 < 60
        rows = pool_rows(tmp_path)
        assert rows[call_uuid]["worker"] in (0, 1) and rows[call_uuid]["sip_call_id"]


def pool_rows(tmp: Path) -> dict[str, dict[str, object]]:
    import sqlite3

    with sqlite3.connect(tmp / "records.db") as db:
        db.row_factory = sqlite3.Row
        return {r["call_uuid"]: dict(r) for r in db.execute("SELECT * FROM calls")}
