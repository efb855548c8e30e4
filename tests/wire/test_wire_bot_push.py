"""On the wire: the customer's bot answers later, by pushing its reply to the app.

A real `sipagent serve` (one worker, the answer_url app on a free port) with the webhook
brain pointed at the loopback `FakeBot`.  The bot answers the caller's turns with
``"pending": true``; the test then POSTs the real replies to the ``reply_url`` the bot was
given (by SIP Call-ID) and to ``/bot/calls/<CallUUID>/reply``, and the softphone hears them
as the agent's turns, the last one ending the call.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.bot import FakeBot
from tests.fakes.http import Reply
from tests.helpers.wire import PUSH_TOKEN, answer, place_call, post_json, running_pool

pytestmark = [pytest.mark.wire, pytest.mark.timeout(240)]


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_replies_pushed_by_the_bot_are_spoken_and_can_end_the_call(tmp_path: Path) -> None:
    with FakeBot() as bot:
        bot.on_start(Reply({"text": "Welcome to Acme."}))
        bot.on_turn(
            Reply({"pending": True}),
            Reply({"text": "One moment, please.", "pending": True}),
        )
        settings = {
            "providers__stt": "fake",
            "providers__tts": "fake",
            "providers__brain": "webhook",
            "webhook__start_url": bot.url("/bot/start"),
            "webhook__turn_url": bot.url("/bot/turn"),
            "webhook__push_token": PUSH_TOKEN,
            "pool__spare": "false",
        }
        with running_pool(tmp_path, 1, None, **settings) as pool:
            assert pool.app_url is not None
            call_uuid, target, headers = answer(pool, "+14155550123")
            pushes: dict[str, Any] = {}

            def bot_side() -> None:
                # The first turn: answered "pending"; the reply comes ~0.5 s later.
                wait_for("the first turn", lambda: len(bot.bodies("/bot/turn")) >= 1)
                turn = bot.bodies("/bot/turn")[0]
                time.sleep(0.5)
                pushes["first"] = post_json(turn["reply_url"], {"text": "Ten dollars."})
                # A live app refuses a wrong token and an unknown call.
                pushes["forged"] = post_json(turn["reply_url"], {"text": "x"}, token="nope")
                unknown = turn["reply_url"].replace(
                    urllib.parse.quote(turn["call_id"], safe=""), "no-such-call"
                )
                pushes["unknown"] = post_json(unknown, {"text": "x"})
                # The second: a holding line now, the goodbye pushed by CallUUID.
                wait_for("the second turn", lambda: len(bot.bodies("/bot/turn")) >= 2)
                time.sleep(0.5)
                by_uuid = f"{pool.app_url}/bot/calls/{call_uuid}/reply"
                pushes["second"] = post_json(by_uuid, {"text": "Goodbye.", "actions": ["hangup"]})

            pusher = threading.Thread(target=bot_side, daemon=True)
            pusher.start()
            report = place_call(
                target,
                *headers,
                "--say",
                "What is my balance?",
                "--say",
                "Anything else?",
                "--no-hangup",
                "--timeout",
                "15",
            )
            pusher.join(30)
            assert not pusher.is_alive()

        start = bot.bodies("/bot/start")[0]
        assert start["call_uuid"] == call_uuid
        assert start["reply_url"].startswith(f"{pool.app_url}/bot/calls/")
        assert pushes["first"] == (202, {"status": "accepted"}), pushes
        assert pushes["second"] == (202, {"status": "accepted"}), pushes
        assert pushes["forged"][0] == 401 and pushes["unknown"][0] == 404, pushes
        assert report["returncode"] == 0, report["stderr"][-2000:]
        assert report["ended_by"] == "agent"
        # Each question was answered: the first by the pushed reply ~0.5 s after it.
        steps = report["steps"]
        assert [s["reply_latency_ms"] is not None for s in steps] == [True, True], steps
        assert steps[0]["reply_latency_ms"] >= 400, steps

        with sqlite3.connect(tmp_path / "records.db") as db:
            (headers,) = db.execute("SELECT sip_headers FROM calls").fetchone()
            # The call context Plivo's sipHeaders carried, as the INVITE had it.
            assert json.loads(headers)["X-PH-Calluuid"] == call_uuid.replace("-", "")
            kinds = [
                (kind, text)
                for kind, text in db.execute("SELECT kind, agent_text FROM turns ORDER BY id")
            ]
        assert ("pushed", "Ten dollars.") in kinds and ("pushed", "Goodbye.") in kinds, kinds
        assert ("reply", "One moment, please.") in kinds, kinds
        assert not [k for k, _ in kinds if k == "apology"], kinds
