"""Plivo audio streams on the wire: a real `sipagent serve` with stream workers, and the
test playing Plivo (`gateway.devtools.plivo_stream`, each behaviour from Plivo's pages):
it POSTs the signed answer_url request, reads the `<Stream>` XML and opens the WebSocket it
names, sending `start`, 20 ms `media`, `dtmf`, answering `checkpoint` with `playedStream`
once the audio before it has played, and `clearAudio` with `clearedAudio`.

- on the offline pipeline, a stream call and a SIP call at the same time, both greeted
  and answered; the stream call's record, turns and stereo recording;
- keys, a key that barges in (clearAudio), the agent hanging up and transferring through
  Plivo's REST API (a loopback fake), Plivo's reconnect after a drop;
- connections that are not Plivo's, or not well-formed, refused before any AI work while
  the calls in progress go on.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.audio.pcm import write_wav
from gateway.devtools.demo import AgentProcess, free_udp_tcp_port
from gateway.devtools.plivo_stream import StreamTarget, answer_params, fetch_stream_answer
from tests.fakes.bot import FakeBot
from tests.fakes.http import Reply, get_json, request
from tests.fakes.plivo_api import FakePlivoApi
from tests.fakes.plivo_stream import heard, open_raw, plivo_stream, start_message
from tests.helpers.wire import (
    POOL_TOKEN,
    PUSH_TOKEN,
    answer,
    finish_call,
    place_call,
    post_json,
    running_pool,
    start_call,
    wait_for,
    word_overlap,
)

pytestmark = [pytest.mark.wire, pytest.mark.timeout(300)]

STREAM_NUMBER = "+14155550111"  # routed to the stream workers; the rest to the SIP workers
AUTH_ID = "MAFAKESTREAM00000001"
GREETING = "Welcome. Press one for hours, two for the address, or eight to leave."
PLAYBOOK = f"""
[agent]
name = "Stream Test"
greeting = "{GREETING}"
fallback = "Sorry, I did not get that."
reprompt = "Are you there?"
goodbye = "Goodbye."
invalid_key = "That key is not on the menu."

[[intents]]
name = "hours"
key = "1"
keywords = ["hours"]
reply = "We open at nine."

[[intents]]
name = "address"
key = "2"
keywords = ["address"]
reply = "We are on Main Street."

[[intents]]
name = "human"
key = "3"
keywords = ["human"]
reply = "Let me transfer you."
actions = ["transfer:+14155550177"]

[[intents]]
name = "leave"
key = "8"
keywords = ["bye"]
reply = "Goodbye then."
actions = ["hangup"]
"""


def turns(agent: AgentProcess, call_id: str | None = None) -> list[dict[str, Any]]:
    out = []
    for line in list(agent.lines):
        if "TURN {" in line:
            turn = json.loads(line[line.index("TURN {") + 5 :])
            if call_id is None or turn["call_id"] == call_id:
                out.append(turn)
    return out


def records(tmp: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(tmp / "records.db") as db:
        db.row_factory = sqlite3.Row
        return {r["call_uuid"]: dict(r) for r in db.execute("SELECT * FROM calls")}


def stream_answer(pool: AgentProcess, call_uuid: str | None = None) -> StreamTarget:
    """Plivo's answer_url request for a call to the stream number, and the `<Stream>` the
    app answered."""
    assert pool.app_url is not None
    params = answer_params(call_uuid or str(uuid.uuid4()), "+14155550100", STREAM_NUMBER)
    return fetch_stream_answer(pool.app_url + "/answer", params, POOL_TOKEN)


# -- the offline pipeline, SIP and stream side by side ---------------------------------------


def test_a_stream_call_and_a_sip_call_at_once_on_the_offline_pipeline(
    tmp_path: Path, speech_8k: Callable[[str], bytes]
) -> None:
    question = tmp_path / "hours.wav"
    write_wav(question, speech_8k("What are your opening hours?"))
    recordings = tmp_path / "recordings"
    with running_pool(
        tmp_path,
        1,
        pool__spare="false",
        pool__stream_workers="1",
        stream__listen_port="0",
        routing__numbers=json.dumps({STREAM_NUMBER: {"target": "stream"}}),
        records__recording_dir=str(recordings),
    ) as pool:
        assert pool.app_url is not None
        _, sip_uri, headers = answer(pool, "+14155550123")
        sip = start_call(sip_uri, "--play", str(question), "--transcribe", *headers)
        stream_uuid = str(uuid.uuid4())
        stream = start_call(
            f"--answer-url={pool.app_url}/answer",
            "--auth-token",
            POOL_TOKEN,
            "--from",
            "+14155550100",
            "--to",
            STREAM_NUMBER,
            "--call-uuid",
            stream_uuid,
            "--play",
            str(question),
            # Speech 1.5 s into the reply to it: the agent stops (clearAudio) and answers.
            "--barge",
            "Where are you located?",
            "--transcribe",
        )
        # Both are up at once (the pool's view), then both finish.
        seen: set[str] = set()

        def both_up() -> bool:
            _, ready = get_json(pool.app_url + "/readyz")  # type: ignore[operator]
            for kind, cap in ready["capacity"].items():
                if cap["calls"]:
                    seen.add(kind)
            return seen == {"sip", "stream"}

        try:
            wait_for(both_up, 60, "a SIP call and a stream call in progress together")
        finally:
            sip_report, stream_report = finish_call(sip), finish_call(stream)
    for r in (sip_report, stream_report):
        assert r["returncode"] == 0, r["stderr"][-3000:]
        assert r["answered"] and r["greeting_ms"] is not None, r
        greeting = r["segments"][0]["text"]
        # The offline recogniser garbles the caller's side on a loaded machine ("oh thanks
        # to all unable to treat bakery"): a third of the words is still far from chance.
        assert word_overlap("thanks for calling maple street bakery", greeting) >= 0.3, r
        reply = r["steps"][0]["reply_text"]
        assert r["steps"][0]["ok"] and word_overlap("we're open monday", reply) >= 0.3, r
    stream_side = stream_report["stream"]
    assert stream_side["protocol_errors"] == 0, stream_report
    barge = stream_report["steps"][1]
    assert barge["ok"] and barge["barge_stop_ms"] is not None, stream_report
    assert stream_side["clear_audio"] >= 1, stream_side  # Plivo's queue dropped too
    assert stream_side["events_in"]["checkpoint"] >= 2, stream_side  # one per agent turn
    assert stream_side["events_out"]["playedStream"] >= 2, stream_side
    # The record: routed to the stream, taken by the stream worker (index 1), its turns.
    row = records(tmp_path)[stream_uuid]
    assert row["route"] == "stream" and row["worker"] == 1, row
    assert row["sip_call_id"] == stream_uuid and row["end_at"] is not None, row
    with sqlite3.connect(tmp_path / "records.db") as db:
        query = (
            "SELECT t.kind, t.interrupted, t.barge_in FROM turns t"
            " JOIN calls c ON t.call_id = c.id WHERE c.call_uuid = ? ORDER BY t.turn"
        )
        stored = list(db.execute(query, (stream_uuid,)))
    # Greeting; the reply the caller cut off; the reply to the barge-in.
    assert [tuple(t) for t in stored[:3]] == [
        ("greeting", 0, 0),
        ("reply", 1, 0),
        ("reply", 0, 1),
    ], stored
    # The stereo recording: caller left, agent right, as long as the call.
    (wav,) = [p for p in recordings.iterdir() if stream_uuid in p.name]
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 8000)
        assert w.getnframes() / 8000 > 5.0
    assert row["recording"] == str(wav.resolve()) or row["recording"].endswith(wav.name), row


# -- keys, barge-in, hang-up and transfer through Plivo's API, reconnects, refusals -----------


class Gateway:
    """A stream-only `sipagent serve` (fake STT/TTS, the menu playbook) whose REST calls go
    to a fake of Plivo's API; its app and stream worker on fixed ports, so the app's
    public URL (what Plivo signs) and the stream URL are known."""

    def __init__(self, pool: AgentProcess, api: FakePlivoApi, tmp: Path) -> None:
        self.pool = pool
        self.api = api
        self.tmp = tmp

    def target(self, call_uuid: str | None = None) -> StreamTarget:
        """Answer a new call as Plivo would; the call is live for the fake API."""
        call_uuid = call_uuid or str(uuid.uuid4())
        self.api.live_calls.add(call_uuid)
        return stream_answer(self.pool, call_uuid)

    def turns(self, call_id: str, count: int) -> list[dict[str, Any]]:
        wait_for(lambda: len(turns(self.pool, call_id)) >= count, 20, f"{count} agent turns")
        return turns(self.pool, call_id)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("stream")
    playbook = tmp / "menu.toml"
    playbook.write_text(PLAYBOOK)
    app_port, stream_port = free_udp_tcp_port(), free_udp_tcp_port()
    with (
        FakePlivoApi(AUTH_ID, POOL_TOKEN, fetch_xml=True) as api,
        running_pool(
            tmp,
            1,
            pool__sip="false",
            pool__spare="false",
            pool__stream_workers="1",
            app__listen_port=str(app_port),
            app__public_url=f"http://127.0.0.1:{app_port}",
            stream__listen_port=str(stream_port),
            stream__url=f"ws://127.0.0.1:{stream_port}/stream",
            stream__start_timeout_s="1",
            routing__default__target="stream",
            transfer__method="plivo",
            transfer__plivo_auth_id=AUTH_ID,
            transfer__plivo_api_url=api.url,
            providers__stt="fake",
            providers__tts="fake",
            providers__brain="scripted",
            playbook=str(playbook),
        ) as pool,
    ):
        yield Gateway(pool, api, tmp)


def test_keys_answer_the_menu_and_a_key_barges_in(gateway: Gateway) -> None:
    target = gateway.target()

    async def call() -> None:
        async with plivo_stream(target.url, auth_token=POOL_TOKEN) as peer:
            assert peer.call.confirmed.is_set(), peer.stats.errors
            # A key 1 s into the greeting (~4 s of tone) stops it: clearAudio, then the
            # reply to the key.
            await peer.until(lambda: peer.stats.frames_heard >= 50, 10)
            peer.press("2")
            await peer.until(lambda: len(peer.stats.clears) == 1, 5)
            await peer.until(lambda: peer.stats.events_out["playedStream"] >= 1, 10)
            peer.press("1")
            await peer.until(lambda: peer.stats.events_out["playedStream"] >= 2, 10)
            assert peer.stats.error_count == 0, peer.stats.errors
            assert peer.stats.events_out["clearedAudio"] == 1, (
                peer.stats.clears,
                peer.stats.checkpoints,
            )

    asyncio.run(call())
    got = gateway.turns(target.call_id, 3)
    assert [t["kind"] for t in got] == ["greeting", "keys", "keys"], got
    assert got[0]["interrupted"], got[0]
    assert got[1]["barge_in"] and got[1]["intent"] == "address", got[1]
    assert got[2]["intent"] == "hours" and not got[2]["interrupted"], got[2]


def test_the_agent_hangs_up_through_plivos_api(gateway: Gateway) -> None:
    target = gateway.target()
    r = place_call(target.url, "--auth-token", POOL_TOKEN, "--dtmf", "8", "--no-hangup", timeout=60)
    assert r["returncode"] == 0 and r["ended_by"] == "agent", r
    assert "goodbye then" in r["segments"][-1]["text"] or r["steps"][0]["ok"], r
    assert gateway.api.hung_up == [target.call_id]  # DELETE /Call/{uuid}/, then the close
    wait_for(
        lambda: any(f"stream {target.call_id} ended" in ln for ln in gateway.pool.lines),
        10,
        "the stream's end",
    )


def test_a_transfer_goes_through_plivos_api(gateway: Gateway) -> None:
    target = gateway.target()
    before = len(gateway.api.fetched)
    r = place_call(target.url, "--auth-token", POOL_TOKEN, "--dtmf", "3", timeout=60)
    assert r["returncode"] == 0, r
    wait_for(lambda: len(gateway.api.fetched) > before, 10, "Plivo fetching the transfer XML")
    fetched = gateway.api.fetched[-1]
    assert fetched.status == 200 and "+14155550177" in fetched.body, fetched
    got = gateway.turns(target.call_id, 2)
    assert got[1]["intent"] == "human", got


def test_a_dropped_stream_is_resumed_when_plivo_reconnects(gateway: Gateway) -> None:
    target = gateway.target()

    async def call() -> None:
        first = target.peer(auth_token=POOL_TOKEN)
        runner = asyncio.create_task(first.run())
        await first.until(lambda: first.stats.events_out["playedStream"] >= 1, 15)
        first.drop()  # the TCP connection is lost: no stop, no close frame
        await runner
        # Plivo retries (docs/plivo-audio-streams.md §4.2): same URL, same call.
        async with plivo_stream(target.url, auth_token=POOL_TOKEN) as second:
            assert second.call.confirmed.is_set(), second.stats.errors
            second.press("1")
            await second.until(lambda: second.stats.events_out["playedStream"] >= 1, 15)
            assert len(heard(second.call)) > 0

    asyncio.run(call())
    got = gateway.turns(target.call_id, 2)
    # One conversation: the greeting once, then the reply to the key pressed after.
    assert [t["kind"] for t in got] == ["greeting", "keys"], got
    assert any(f"stream {target.call_id}: Plivo reconnected" in ln for ln in gateway.pool.lines)


def test_connections_not_from_plivo_are_refused_and_calls_go_on(gateway: Gateway) -> None:
    live = gateway.target()
    stream_url = live.url.split("?", 1)[0]

    async def attempts() -> None:
        async with plivo_stream(live.url, auth_token=POOL_TOKEN) as peer:
            assert peer.call.confirmed.is_set()
            await peer.until(lambda: peer.stats.frames_heard >= 10, 10)
            # Unsigned, no token; a forged signature; another call's token; a token
            # changed by one character: refused at the upgrade (HTTP 401).
            other = gateway.target()
            forged_token = live.url[:-1] + ("0" if live.url[-1] != "0" else "1")
            for url, token in (
                (stream_url, ""),
                (stream_url, "not-the-auth-token"),
                (other.url.replace(other.call_id, live.call_id), ""),
                (forged_token, ""),
            ):
                with pytest.raises(InvalidStatus) as refused:
                    await open_raw(url, auth_token=token)
                assert refused.value.response.status_code == 401, url
            # Plivo's signature alone (no token) lets a connection in, once: its nonce
            # replayed is refused.
            nonce = uuid.uuid4().hex
            signed = await open_raw(stream_url, auth_token=POOL_TOKEN, nonce=nonce)
            await signed.close()
            with pytest.raises(InvalidStatus) as replayed:
                await open_raw(stream_url, auth_token=POOL_TOKEN, nonce=nonce)
            assert replayed.value.response.status_code == 401
            # A token for this very call, while its stream is up: not a way in.
            ws = await open_raw(live.url)
            await ws.send(start_message(live.call_id, str(uuid.uuid4())))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1008
            # Admitted, then: garbage first, a start for another call, nothing at all.
            for first in (b"\x00\xff", "{not json", start_message(str(uuid.uuid4()), "s"), None):
                fresh = gateway.target()
                ws = await open_raw(fresh.url)
                if first is not None:
                    await ws.send(first)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)  # start_timeout_s is 1 s
                assert ws.close_code == 1008, first
            # Malformed messages on the live call are skipped; it goes on.
            assert peer.ws is not None
            for junk in ("[]", '{"event": "media", "media": {"payload": "***"}}', b"\x01"):
                await peer.send_raw(junk)
            peer.press("2")
            await peer.until(lambda: peer.stats.events_out["playedStream"] >= 2, 15)

    asyncio.run(attempts())
    got = gateway.turns(live.call_id, 2)
    assert got[1]["intent"] == "address", got
    # No worker restarted, and nothing reached the conversation of the refused ones.
    _, ready = get_json(gateway.pool.app_url + "/readyz")  # type: ignore[operator]
    assert [w["restarts"] for w in ready["workers"]] == [0], ready
    logged = sum(1 for ln in gateway.pool.lines if "stream connection refused" in ln)
    assert logged >= 8
    # Each refusal is in the metrics too, by reason (the worker reports within seconds).
    refused: dict[str, float] = {}

    def counted() -> bool:
        status, body = request(gateway.pool.app_url + "/metrics")  # type: ignore[operator]
        assert status == 200
        refused.clear()
        for family in text_string_to_metric_families(body.decode()):
            if family.name == "sipagent_streams_refused":
                refused.update({s.labels["reason"]: s.value for s in family.samples})
        return sum(refused.values()) >= logged

    wait_for(counted, 10, "the refused streams in /metrics")
    assert sum(refused.values()) == logged, refused
    for reason in (
        "unsigned",
        "forged",
        "replayed",
        "in_use",
        "bad_start",
        "wrong_call",
        "no_start",
    ):
        assert refused[reason] >= 1, refused
    assert refused["bad_token"] >= 2 and "other" not in refused, refused


def test_a_bot_pushes_a_reply_into_a_stream_call(tmp_path: Path) -> None:
    """The webhook brain on a stream: the bot's later reply, pushed to the app by CallUUID,
    reaches the stream worker and is spoken (and the goodbye it pushes ends the call)."""
    with FakeBot() as bot:
        bot.on_start(Reply({"text": "Welcome to Acme."}))
        with running_pool(
            tmp_path,
            1,
            pool__sip="false",
            pool__spare="false",
            pool__stream_workers="1",
            stream__listen_port="0",
            routing__default__target="stream",
            providers__stt="fake",
            providers__tts="fake",
            providers__brain="webhook",
            webhook__start_url=bot.url("/bot/start"),
            webhook__turn_url=bot.url("/bot/turn"),
            webhook__push_token=PUSH_TOKEN,
        ) as pool:
            target = stream_answer(pool)

            async def call() -> None:
                async with plivo_stream(target.url, auth_token=POOL_TOKEN) as peer:
                    await peer.until(lambda: peer.stats.events_out["playedStream"] >= 1, 15)
                    url = f"{pool.app_url}/bot/calls/{target.call_id}/reply"
                    pushed = await asyncio.to_thread(
                        post_json, url, {"text": "Your order shipped.", "actions": ["hangup"]}
                    )
                    assert pushed == (202, {"status": "accepted"}), pushed
                    await peer.until(peer.call.ended.is_set, 20)  # the agent hung up
                    assert peer.stats.events_out["playedStream"] >= 2

            asyncio.run(call())
            got = turns(pool, target.call_id)
    assert [(t["kind"], t["agent_text"]) for t in got] == [
        ("greeting", "Welcome to Acme."),
        ("pushed", "Your order shipped."),
    ], got
    assert bot.bodies("/bot/start")[0]["call_uuid"] == target.call_id
