"""The test softphone's script against a dialer whose call does what a far end can do."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from gateway.devtools.softphone import CallScript, Softphone
from gateway.sip.calls import OutboundCall


class _Dialer:
    """A dialer whose call the far end answers and, unless `bye`, keeps up."""

    error = RuntimeError

    def __init__(self, bye: bool) -> None:
        self.bye = bye
        self.transfers: list[Any] = []
        self.hung_up = False
        self.call: OutboundCall | None = None

    def dial(self, uri: str, headers: dict[str, str]) -> OutboundCall:
        call = OutboundCall(uri)
        call.status_code = 200
        call.confirmed_at = time.monotonic()
        call.confirmed.set()
        if self.bye:
            # The 200 OK and the far end's BYE both came before the script looked.
            call.ended_at = time.monotonic()
            call.ended.set()
        else:
            threading.Thread(target=self._send, args=(call,), daemon=True).start()
        self.call = call
        return call

    def _send(self, call: OutboundCall) -> None:
        """What the media clock does: take what the caller plays, until the call ends."""
        while not call.ended.wait(0.001):
            call.playout.pop()

    def hangup(self) -> None:
        assert self.call is not None
        self.hung_up = True
        self.call.hung_up_locally = True
        self.call.ended.set()


def _run(dialer: _Dialer, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    script = CallScript(steps=[("play", "question.wav")], json=True, turn_timeout_s=0.3)
    rc = Softphone("sip:agent@127.0.0.1:5060", script).run(dialer, [b"\x00" * 320])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and lines[-1].startswith("{"), f"no JSON report: {lines}"
    report: dict[str, Any] = json.loads(lines[-1])
    return rc, report


def test_a_call_hung_up_at_once_after_the_answer_still_gets_its_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before, the script returned 1 without a report: a wire test killing the gateway
    # right after the answer found the softphone's stdout empty.
    dialer = _Dialer(bye=True)
    rc, report = _run(dialer, capsys)
    assert rc == 1  # no greeting, the step unanswered
    assert report["answered"] and report["status_code"] == 200, report
    assert report["ended_by"] == "agent", report
    assert report["steps"] == [] and report["greeting_ms"] is None, report
    assert not dialer.hung_up  # nothing to hang up: the far end did


def test_a_call_left_up_is_hung_up_by_the_caller(capsys: pytest.CaptureFixture[str]) -> None:
    dialer = _Dialer(bye=False)
    rc, report = _run(dialer, capsys)
    assert rc == 1  # silence: no greeting, no reply
    assert dialer.hung_up
    assert report["answered"] and report["ended_by"] == "caller", report
    assert [s["reply_latency_ms"] for s in report["steps"]] == [None], report
