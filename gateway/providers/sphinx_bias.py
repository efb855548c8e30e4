"""What the offline recogniser expects to hear: a small language model built from the
playbook, interpolated with pocketsphinx's general English model.

The playbook model is trained (with pocketsphinx's own ARPA builder, `pocketsphinx.lm`)
on the playbook's intents (keywords, example sentences, menu keys) and on what any caller
says on the phone: yes and no, goodbye, asking for a person, asking to hear it again, and
digits in any order. It is then mixed with the general model by linear interpolation
(gateway/providers/sphinx_native.py), the playbook's share being
``providers.pocketsphinx_playbook_weight``: the playbook's phrases become likely, and speech
outside it is still recognised by the general model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from gateway.providers.base import DIGIT_WORDS, ENTRY_LEAD_INS
from gateway.providers.scripted import Playbook

DIGITS = DIGIT_WORDS

# What callers say on any line, whatever the business.
CALL_PHRASES = (
    "yes",
    "no",
    "yes please",
    "yes i do",
    "yes it is",
    "yes that's right",
    "no thanks",
    "no thank you",
    "no i don't",
    "no that's all",
    "yeah",
    "that's right",
    "that's correct",
    "okay",
    "sure",
    "hello",
    "hi",
    "hello is anyone there",
    "goodbye",
    "bye",
    "bye bye",
    "okay bye",
    "thank you",
    "thanks",
    "thank you goodbye",
    "that's all",
    "that's it",
    "agent",
    "operator",
    "representative",
    "a real person",
    "can i talk to someone",
    "repeat",
    "repeat that",
    "can you repeat that",
    "say that again",
    "sorry what was that",
    "what",
    "help",
    "main menu",
    "oh",
    "zero",
    "my number is",
    "the number is",
)

_APOSTROPHE = re.compile(r"[\u2019\u2018`]")
_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def words_of(text: str) -> list[str]:
    """Lowercase words as the dictionary spells them: punctuation dropped (apostrophes
    inside words kept: "that's"), a lone digit spelled out ("6" is "six")."""
    text = _NOT_WORD.sub(" ", _APOSTROPHE.sub("'", text.lower()))
    out: list[str] = []
    for word in text.split():
        word = word.strip("'")
        if word.isdigit():
            out.extend(DIGITS[int(d)] for d in word)
        elif word:
            out.append(word)
    return out


# Words the recogniser writes for a digit said inside a number ("six to nine four").
_SOUNDALIKES = {"to": "two", "too": "two", "for": "four", "oh": "zero"}


def spoken_digits(text: str) -> str:
    """Digits said in a row are digits: inside a run of four or more digit words, at
    most one in four of them a soundalike, "to"/"too" is "two", "for" is "four" and "oh"
    is "zero". "from nine to five" and "want to four two" keep their "to"."""
    words = text.split()
    run: list[int] = []

    def settle() -> None:
        alike = sum(1 for k in run if words[k] not in DIGITS)
        if len(run) >= 4 and alike * 4 <= len(run):
            for k in run[1:-1]:
                words[k] = _SOUNDALIKES.get(words[k], words[k])

    for i, word in enumerate(words):
        if word in DIGITS or word in _SOUNDALIKES:
            run.append(i)
            continue
        settle()
        run = []
    settle()
    return " ".join(words)


def _digit_walk() -> str:
    """Digits in an order where every digit follows every other once (a de Bruijn
    sequence of order 2 over ten symbols): any spoken number is a likely path."""
    seen: set[tuple[int, int]] = set()
    walk = [0]
    while len(seen) < 100:
        here = walk[-1]
        nxt = next((d for d in range(9, -1, -1) if (here, d) not in seen), None)
        if nxt is None:  # cannot happen for a de Bruijn walk started at 0
            break
        seen.add((here, nxt))
        walk.append(nxt)
    return " ".join(DIGITS[d] for d in walk)


def playbook_phrases(playbook: Playbook | None) -> list[str]:
    """The lines the playbook model is trained on: the playbook's intents, then the
    phrases and digits of any call."""
    lines: list[str] = []
    if playbook is not None:
        for intent in playbook.intents:
            lines.extend(intent.keywords)
            lines.extend(intent.examples)
            if intent.key.isdigit():
                spoken = DIGITS[int(intent.key)]
                lines.extend((spoken, f"press {spoken}", f"option {spoken}"))
    lines.extend(CALL_PHRASES)
    lines.extend(DIGITS)
    lines.append(_digit_walk())
    return lines


# While a keypad entry is asked for and may be spoken, the recogniser listens for digits:
# the general model interpolated with one of digits in any order, said alone or after a
# lead-in, with the few other things a caller says then. Measured with the flite voices of
# scripts/bench/offline_recognition.py: its digit strings heard 68 of 80 times ("asked")
# against 63 with the playbook's model; on one decoder across the renditions, 70 of 80 at
# this weight and 71 at 0.99, while of 28 intent sentences said instead 18 and 17 still
# reach the playbook's intent. Below 1, a caller who answers with a question is heard.
ENTRY_WEIGHT = 0.9
_ENTRY_OTHERS = (
    "agent",
    "operator",
    "repeat that",
    "i don't know",
    "i don't have one",
    "goodbye",
    "yes",
    "no",
)


def entry_phrases() -> list[str]:
    """The lines the digits model is trained on (a keypad entry said aloud)."""
    words = _digit_walk().split()  # a cycle: it ends with the digit it starts with
    # The walk from the first place of each digit: an entry may start with any digit.
    starts = [words.index(digit) for digit in DIGITS]
    walks = [" ".join(words[i:] + words[1 : i + 1]) for i in starts]
    lines = [*walks, *DIGITS]
    lines += [f"{lead} {walk}" for lead in ENTRY_LEAD_INS for walk in walks[:2]]
    lines += _ENTRY_OTHERS
    return lines


def entry_corpus() -> str:
    """The digits model's training text."""
    return _training_text(entry_phrases())


def reply_phrases(playbook: Playbook) -> list[str]:
    """What the agent says with `playbook`, sentence by sentence: for a transcriber of the
    agent's side (the demo's softphone)."""
    texts = [playbook.greeting, playbook.fallback, playbook.reprompt, playbook.goodbye]
    texts.append(playbook.invalid_key)
    for intent in playbook.intents:
        texts.append(intent.reply)
        if intent.collect is not None:
            texts += [intent.collect.reply.replace("{digits}", ""), intent.collect.invalid]
    return [s for text in texts for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


@cache
def _dictionary(path: Path) -> frozenset[str]:
    words: set[str] = set()
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            words.add(head.split("(", 1)[0])
    return frozenset(words)


def corpus(lines: Iterable[str], dictionary: Path) -> tuple[str, list[str]]:
    """The training text (one normalised line each) and the words left out because the
    pronunciation dictionary does not have them (the recogniser could not hear them)."""
    known = _dictionary(dictionary)
    unknown: dict[str, None] = {}
    out: list[str] = []
    for line in lines:
        words = words_of(line)
        for word in words:
            if word not in known:
                unknown[word] = None
        kept = [w for w in words if w in known]
        if kept:
            out.append(" ".join(kept))
    return "\n".join(out) + "\n", list(unknown)


def write_arpa(text: str, path: Path) -> None:
    """Train a trigram model on `text` (one sentence a line, each between <s> and </s>)
    with pocketsphinx's ARPA builder and write it to `path`."""
    from pocketsphinx.lm import ArpaBoLM

    model = ArpaBoLM(text=text, add_start=True, case="lower")
    model.compute()
    if not model.write_file(str(path)):
        raise OSError(f"could not write the language model to {path}")


def _training_text(lines: Iterable[str]) -> str:
    """`corpus` of `lines` against the recogniser's pronunciation dictionary."""
    from gateway.providers.sphinx_native import dictionary_path

    return corpus(lines, dictionary_path())[0]


def playbook_corpus(playbook: Playbook | None) -> str:
    """The playbook model's training text for `playbook` (None: the call phrases only)."""
    return _training_text(playbook_phrases(playbook))
