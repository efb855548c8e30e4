"""A playbook edited while the agent runs: the next call is answered from it, and the
offline recogniser, rebuilt from it, hears its new words (issue 17)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audio.pcm import write_wav
from gateway.providers.scripted import DEMO_PLAYBOOK
from tests.helpers.speech import PUMPERNICKEL_INTENT
from tests.helpers.wire import count_lines, place_call, running_agent, uri, wait_for

pytestmark = [pytest.mark.wire, pytest.mark.timeout(300)]


def test_an_edited_playbook_answers_the_next_call_and_is_heard(tmp_path: Path) -> None:
    playbook = tmp_path / "bakery.toml"
    playbook.write_text(DEMO_PLAYBOOK.read_text())
    with running_agent(tmp_path, playbook=str(playbook)) as agent:
        before = place_call(uri(agent), "--say", "Pumpernickel.")
        playbook.write_text(DEMO_PLAYBOOK.read_text() + PUMPERNICKEL_INTENT)
        after = place_call(uri(agent), "--say", "Pumpernickel.")
        wait_for(lambda: len(agent.turns()) >= 4, 20, "the second call's turns")
        rebuilt = count_lines(agent, "language model rebuilt for the changed playbook")
        turns = [t for t in agent.turns() if t["kind"] != "greeting"]
    assert before["returncode"] == 0 and after["returncode"] == 0, after["stderr"][-2000:]
    assert len(turns) == 2, turns
    # Before the edit the playbook had no such intent (the general model alone sometimes
    # hears the word from the softphone's varying voice: the unit tests show the rebuilt
    # model is what makes it heard on the steady voice).
    assert turns[0]["intent"] in (None, ""), turns
    assert turns[1]["user_text"] == "pumpernickel", turns
    assert turns[1]["intent"] == "special", turns
    assert turns[1]["agent_text"] == "Our pumpernickel comes out of the oven at noon."
    assert rebuilt == 1


def test_an_order_number_said_instead_of_keyed(
    tmp_path: Path, steady_speech_8k: Callable[[str], bytes]
) -> None:
    """The demo's order status: the caller presses 4, then says the six digits (issue 17's
    digits heard while an entry is asked for)."""
    # Piper's steady voice: the softphone's varying one was once heard with a stray word in
    # a loaded run. tests/unit's test_pocketsphinx shows the digits model hearing digits the
    # playbook's model mishears; this call shows a said entry taken end to end.
    digits_wav = tmp_path / "digits.wav"
    write_wav(digits_wav, steady_speech_8k("One two three four five six."))
    with running_agent(tmp_path, playbook=str(DEMO_PLAYBOOK)) as agent:
        r = place_call(uri(agent), "--dtmf", "4", "--play", str(digits_wav))
        wait_for(lambda: len(agent.turns()) >= 3, 20, "the call's turns")
        turns = agent.turns()
    assert r["returncode"] == 0, r["stderr"][-2000:]
    assert [t["intent"] for t in turns] == [
        "greeting",
        "order_status",
        "order_status:entered",
    ], turns
    said = turns[2]
    assert str(said["user_text"]).endswith("[keys said] 123456"), said
    assert said["agent_text"] == (
        "Thank you. Order 1 2 3 4 5 6 is baked and ready for pickup at the counter."
    )
