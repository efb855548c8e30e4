"""A scripted brain: answers callers from a keyword playbook written in TOML.

Playbook format::

    [agent]
    name = "Maple Street Bakery"   # business name
    greeting = "..."               # said on answer
    fallback = "..."               # when no intent matches
    reprompt = "..."               # after no input (first time)
    goodbye = "..."                # after no input the second time, then hang up

    [[intents]]
    name = "hours"
    keywords = ["hours", "open", "opening hours"]   # words or multi-word phrases
    examples = ["When do you open on Saturday?"]    # optional: what callers say
    reply = "..."
    actions = []                   # optional: "hangup", "transfer", "transfer:<target>"
    key = "1"                      # optional: pressing this keypad key picks the intent
    send_dtmf = "1#"               # optional: keys the agent sends after the reply

    # optional: after the reply, collect keypad digits (speech before the first key
    # wins and is matched as usual)
    [intents.collect]
    min_digits = 6
    max_digits = 6
    terminator = "#"               # "" for none
    timeout_s = 5                  # after the last key
    speech = true                  # the digits may be said instead ("one two three")
    reply = "Order {digits} is ready."   # {digits}: the keys, spoken one by one
    invalid = "..."                # too few digits: said, and the entry is asked again
    actions = []

``examples`` are whole sentences a caller might say for the intent. They are not matched
(the keywords are); the offline recogniser learns from them, with the keywords, which words
to expect and in what order (gateway/providers/sphinx_bias.py).

The optional ``[agent] invalid_key`` is said for a key that picks no intent (default: the
fallback).

Actions run after the reply is spoken. ``"hangup"`` ends the call. ``"transfer"`` hands the
caller to a human at ``transfer.target``, ``"transfer:<target>"`` to ``<target>``: a SIP
URI (``"transfer:sip:desk@pbx.example.com"``) or a number (``"transfer:+14155550100"``,
dialled at ``transfer.domain``). The reply is the handover line; if the transfer fails the
agent says ``transfer.failed_text`` and the conversation carries on.

Matching works on normalised words (lowercase, punctuation dropped, apostrophes inside
words removed so "o'clock" is "oclock" and "that's" is "thats") with a light stemmer that
forgives plurals and "-ing" forms. Each keyword or phrase found in the caller's words
scores its number of words (so "order status" outweighs "order"); the highest score wins
and ties go to the intent listed first.

The gateway reads the playbook file again when it changes (`PlaybookFile`): an edit takes
effect from the next turn, and the offline recogniser's language model is rebuilt from it.
"""

from __future__ import annotations

import logging
import os
import re
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.policy.transfer import TransferError, transfer_target, transfer_uri
from gateway.providers.base import (
    DTMF_KEYS,
    Brain,
    BrainReply,
    CallContext,
    DigitCollect,
    KeyInput,
)
from sip_config import Settings

log = logging.getLogger(__name__)

ALLOWED_ACTIONS: frozenset[str] = frozenset({"hangup", "transfer"})
"""Actions an intent may carry (besides ``"transfer:<target>"``)."""

DEMO_PLAYBOOK: Path = Path(__file__).resolve().parent.parent / "playbooks" / "demo.toml"
"""Path of the bundled demo playbook (Maple Street Bakery)."""

_AGENT_FIELDS = ("name", "greeting", "fallback", "reprompt", "goodbye")
_AGENT_OPTIONAL = ("invalid_key",)
_INTENT_FIELDS = ("name", "keywords", "examples", "reply", "actions", "key", "send_dtmf", "collect")
_COLLECT_FIELDS = (
    "min_digits",
    "max_digits",
    "terminator",
    "timeout_s",
    "speech",
    "reply",
    "invalid",
    "actions",
)
_APOSTROPHES = re.compile(r"(?<=[a-z0-9])['\u2019\u2018`](?=[a-z0-9])")
_NON_WORD = re.compile(r"[^a-z0-9]+")


class PlaybookError(ValueError):
    """A playbook file is missing, is not valid TOML, or does not follow the format."""


def normalize_words(text: str) -> list[str]:
    """Split ``text`` into lowercase words without punctuation.

    Apostrophes inside a word are dropped ("o'clock" -> "oclock", "that's" -> "thats");
    everything else that is not a letter or digit separates words.
    """
    lowered = _APOSTROPHES.sub("", text.lower())
    return [word for word in _NON_WORD.split(lowered) if word]


def stem(word: str) -> str:
    """Reduce a normalised word to a crude stem so plurals and -ing forms match.

    "hours" -> "hour", "pastries"/"pastry" -> "pastry", "cookies"/"cookie" -> "cooky",
    "opening" -> "open", "closing"/"close" -> "clos". Keywords and transcripts go through
    the same function, so stems only need to be consistent, not real words. Words of three
    letters or fewer are left alone ("bye" never becomes "by").
    """
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("ie"):
        word = word[:-2] + "y"
    elif word.endswith(("ches", "shes", "sses", "xes", "zes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
        if word[-1] == word[-2] and word[-1] not in "aeiouylsz":
            word = word[:-1]  # "shopping" -> "shop"
    if len(word) > 3 and word.endswith("e") and not word.endswith("ee"):
        word = word[:-1]
    return word


def _stems(text: str) -> tuple[str, ...]:
    return tuple(stem(word) for word in normalize_words(text))


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    """True when ``needle`` occurs as a contiguous run inside ``haystack``."""
    n = len(needle)
    if n == 0 or n > len(haystack):
        return False
    first = needle[0]
    return any(
        haystack[i] == first and tuple(haystack[i : i + n]) == tuple(needle)
        for i in range(len(haystack) - n + 1)
    )


def _covered(words: Sequence[str], patterns: Sequence[Sequence[str]]) -> set[int]:
    """Positions in ``words`` inside an occurrence of one of ``patterns``."""
    covered: set[int] = set()
    for pattern in patterns:
        n = len(pattern)
        for i in range(len(words) - n + 1):
            if n and tuple(words[i : i + n]) == tuple(pattern):
                covered.update(range(i, i + n))
    return covered


# What callers say around a goodbye: thanks, politeness, "that's all", filler and the
# words that hold such phrases together. An intent that hangs up is taken only when the
# rest of the turn is this kind of talk, give or take `HANGUP_STRAY_WORDS` other words:
# "I think I dialled the wrong number", misheard as "i think i bye on the wrong number",
# must not end the call on its "bye". The caller who meant goodbye hears the fallback and
# says it again; a call ended by mistake cannot be taken back. Two stray words: on the
# offline recognition bench (scripts/bench/offline_recognition.py), goodbyes the
# recogniser garbled kept up to two ("okay him down bye"), the out-of-playbook and order
# turns misheard with a "bye" had three or more ("goodbye bit of a couple of loaves").
CLOSING_TALK = frozenset(
    _stems(
        "okay ok alright all right well so then now oh um uh er yes yeah yep no nope sure "
        "fine great good lovely perfect wonderful cool cheers thanks thank thankyou you "
        "very much lot really appreciate it appreciated your help helpful that's that "
        "thats this is it it's was all everything nothing else for today i i'm im i'll "
        "ill i've we we're were me my have had a an the to and of done finished need "
        "needed go going gotta got hang up bye goodbye see later soon again talk nice day "
        "evening night morning weekend take care"
    )
)
HANGUP_STRAY_WORDS = 2


@dataclass(frozen=True)
class KeyEntry:
    """Digits an intent collects after its reply, and what is said with them."""

    spec: DigitCollect
    reply: str  # "{digits}" is replaced by the keys, spaced so they are spoken one by one
    invalid: str
    actions: tuple[str, ...] = ()

    def accepts(self, digits: str) -> bool:
        """Whether an entry of `digits` has an allowed length."""
        return self.spec.min_digits <= len(digits) <= self.spec.max_digits


@dataclass(frozen=True)
class Intent:
    """One thing a caller may ask for: trigger keywords, the reply and follow-up actions."""

    name: str
    keywords: tuple[str, ...]
    reply: str
    actions: tuple[str, ...] = ()
    key: str = ""
    examples: tuple[str, ...] = ()
    send_dtmf: str = ""
    collect: KeyEntry | None = None
    _patterns: tuple[tuple[str, ...], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        """Pre-compute the stemmed word sequence of every keyword."""
        object.__setattr__(self, "_patterns", tuple(_stems(k) for k in self.keywords))

    def score(self, words: Sequence[str]) -> int:
        """Score the keywords found in ``words`` (already stemmed, see `stem`): each one
        found counts its number of words, so a phrase ("order status") outweighs a word it
        contains ("order")."""
        return sum(len(pattern) for pattern in self._patterns if _contains(words, pattern))

    @property
    def ends_call(self) -> bool:
        """Whether the intent hangs up after its reply."""
        return "hangup" in self.actions

    def stray_words(self, words: Sequence[str]) -> int:
        """How many of ``words`` (stemmed) are neither this intent's keywords nor closing
        talk (`CLOSING_TALK`)."""
        covered = _covered(words, self._patterns)
        return sum(
            1 for i, word in enumerate(words) if i not in covered and word not in CLOSING_TALK
        )

    def takes(self, words: Sequence[str]) -> bool:
        """Whether a turn of ``words`` that scores for this intent may be answered by it:
        an intent that ends the call needs a turn that is all goodbye (see `CLOSING_TALK`)."""
        return not self.ends_call or self.stray_words(words) <= HANGUP_STRAY_WORDS


@dataclass(frozen=True)
class Playbook:
    """Everything the scripted brain says: fixed prompts plus keyword intents."""

    name: str
    greeting: str
    fallback: str
    reprompt: str
    goodbye: str
    intents: tuple[Intent, ...] = ()
    invalid_key: str = ""

    def by_key(self, key: str) -> Intent | None:
        """The intent a keypad key picks, or None."""
        return next((i for i in self.intents if i.key and i.key == key), None)

    def match(self, text: str) -> Intent | None:
        """Return the intent whose keywords best match ``text``, or None if none match.
        An intent that ends the call is passed over when the turn holds more than a
        goodbye (`Intent.takes`)."""
        words = _stems(text)
        if not words:
            return None
        best: Intent | None = None
        best_score = 0
        for intent in self.intents:
            score = intent.score(words)
            if score > best_score and intent.takes(words):
                best, best_score = intent, score
        return best


def _require_str(table: Mapping[str, Any], key: str, where: str) -> str:
    if key not in table:
        raise PlaybookError(f'{where}: missing "{key}"')
    value = table[key]
    if not isinstance(value, str):
        raise PlaybookError(f'{where}: "{key}" must be a string, not {type(value).__name__}')
    if not value.strip():
        raise PlaybookError(f'{where}: "{key}" is empty')
    return value.strip()


def _agent_str(agent: Mapping[str, Any], key: str) -> str:
    if key not in agent:
        raise PlaybookError(f"missing agent.{key}")
    value = agent[key]
    if not isinstance(value, str):
        raise PlaybookError(f"agent.{key} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise PlaybookError(f"agent.{key} is empty")
    return value.strip()


def _string_list(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PlaybookError(f'{where}: "{key}" must be a list of strings')
    return [v.strip() for v in value]


def _reject_unknown(table: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        names = ", ".join(f'"{k}"' for k in unknown)
        raise PlaybookError(f"{where}: unknown key(s) {names} (expected {', '.join(known)})")


def _parse_intent(raw: object, number: int) -> Intent:
    where = f"intent #{number}"
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: must be a table ([[intents]])")
    name = _require_str(raw, "name", where)
    where = f'intent #{number} ("{name}")'
    _reject_unknown(raw, _INTENT_FIELDS, where)
    if "keywords" not in raw:
        raise PlaybookError(f'{where}: missing "keywords"')
    keywords = _string_list(raw, "keywords", where)
    if not keywords:
        raise PlaybookError(f'{where}: "keywords" is empty')
    for keyword in keywords:
        if not normalize_words(keyword):
            raise PlaybookError(f"{where}: keyword {keyword!r} has no words in it")
    examples = _string_list(raw, "examples", where)
    reply = _require_str(raw, "reply", where)
    actions = _actions(raw, where, name)
    key = _keys(raw, "key", where)
    if len(key) > 1:
        raise PlaybookError(f'{where}: "key" must be one keypad key, not {key!r}')
    send_dtmf = _keys(raw, "send_dtmf", where)
    collect = _parse_collect(raw["collect"], where, name) if "collect" in raw else None
    return Intent(
        name=name,
        keywords=tuple(keywords),
        reply=reply,
        actions=tuple(actions),
        key=key,
        examples=tuple(examples),
        send_dtmf=send_dtmf,
        collect=collect,
    )


def _actions(raw: Mapping[str, Any], where: str, name: str) -> list[str]:
    actions = _string_list(raw, "actions", where)
    for action in actions:
        target = transfer_target(action)
        if target:
            try:  # the target's form; its domain, if it needs one, is a setting
                transfer_uri(target, "domain.invalid")
            except TransferError as exc:
                raise PlaybookError(f'action "{action}" in intent "{name}": {exc}') from None
        elif action not in ALLOWED_ACTIONS:
            allowed = ", ".join(sorted(ALLOWED_ACTIONS)) + ", transfer:<target>"
            raise PlaybookError(
                f'unknown action "{action}" in intent "{name}" (allowed: {allowed})'
            )
    return actions


def _keys(raw: Mapping[str, Any], field_name: str, where: str) -> str:
    """An optional string of keypad keys ("" when absent)."""
    value = raw.get(field_name, "")
    if not isinstance(value, str):
        raise PlaybookError(f'{where}: "{field_name}" must be a string of keypad keys')
    value = value.strip().upper()
    if field_name in raw and (not value or any(ch not in DTMF_KEYS for ch in value)):
        raise PlaybookError(
            f'{where}: "{field_name}" must be keypad keys (0-9, *, #, A-D), not {raw[field_name]!r}'
        )
    return value


def _parse_collect(raw: object, where: str, name: str) -> KeyEntry:
    where = f"{where} collect"
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: must be a table ([intents.collect])")
    _reject_unknown(raw, _COLLECT_FIELDS, where)
    numbers: dict[str, Any] = {}
    for key, kind in (("min_digits", int), ("max_digits", int), ("timeout_s", float)):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PlaybookError(f'{where}: "{key}" must be a number')
            if kind is int and not isinstance(value, int):
                raise PlaybookError(f'{where}: "{key}" must be a whole number')
            numbers[key] = kind(value)
    numbers.setdefault("min_digits", 1)
    numbers.setdefault("max_digits", max(numbers["min_digits"], 1))
    terminator = raw.get("terminator", "#")
    if not isinstance(terminator, str):
        raise PlaybookError(f'{where}: "terminator" must be a string')
    spoken = raw.get("speech", True)
    if not isinstance(spoken, bool):
        raise PlaybookError(f'{where}: "speech" must be true or false')
    try:
        spec = DigitCollect(terminator=terminator.strip(), spoken=spoken, **numbers)
    except ValueError as exc:
        raise PlaybookError(f"{where}: {exc}") from None
    return KeyEntry(
        spec=spec,
        reply=_require_str(raw, "reply", where),
        invalid=_require_str(raw, "invalid", where),
        actions=tuple(_actions(raw, where, name)),
    )


def parse_playbook(data: Mapping[str, Any]) -> Playbook:
    """Build a `Playbook` from already-parsed TOML data, raising `PlaybookError`."""
    _reject_unknown(data, ("agent", "intents"), "playbook")
    agent = data.get("agent")
    if agent is None:
        raise PlaybookError("missing [agent] table")
    if not isinstance(agent, dict):
        raise PlaybookError("[agent] must be a table")
    _reject_unknown(agent, _AGENT_FIELDS + _AGENT_OPTIONAL, "[agent]")
    fields = {key: _agent_str(agent, key) for key in _AGENT_FIELDS}
    fields.update({key: _agent_str(agent, key) for key in _AGENT_OPTIONAL if key in agent})
    raw_intents = data.get("intents", [])
    if not isinstance(raw_intents, list):
        raise PlaybookError('"intents" must be an array of tables ([[intents]])')
    intents = tuple(_parse_intent(raw, i) for i, raw in enumerate(raw_intents, start=1))
    seen: set[str] = set()
    for intent in intents:
        if intent.name in seen:
            raise PlaybookError(f'duplicate intent name "{intent.name}"')
        seen.add(intent.name)
    keys: dict[str, str] = {}
    for intent in intents:
        if intent.key and intent.key in keys:
            raise PlaybookError(
                f'key "{intent.key}" picks both intent "{keys[intent.key]}" and "{intent.name}"'
            )
        if intent.key:
            keys[intent.key] = intent.name
    return Playbook(intents=intents, **fields)


def load_playbook(path: str | os.PathLike[str]) -> Playbook:
    """Read and validate a TOML playbook file.

    Raises `PlaybookError` naming the file and the problem when the file is missing, is
    not valid TOML, or breaks the format.
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise PlaybookError(f"{source}: playbook file not found") from None
    except OSError as exc:
        raise PlaybookError(f"{source}: cannot read playbook: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PlaybookError(f"{source}: not valid UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlaybookError(f"{source}: not valid TOML: {exc}") from None
    try:
        return parse_playbook(data)
    except PlaybookError as exc:
        raise PlaybookError(f"{source}: {exc}") from None


class PlaybookFile:
    """A playbook file, read again when it changes: an edit takes effect from the next
    call or turn, without a restart. A change that breaks the format is logged and the
    last good playbook stays in use."""

    def __init__(self, path: str | os.PathLike[str], check_every_s: float = 1.0) -> None:
        """Read `path` now (raises `PlaybookError` when it is not a valid playbook)."""
        self.path = Path(path)
        self.check_every_s = check_every_s
        self._stamp = self._stat()
        self._playbook = load_playbook(self.path)
        self._checked = time.monotonic()
        self.version = 1  # counts the readings that changed the playbook

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> Playbook:
        """The playbook, read again first if the file changed (checked at most every
        `check_every_s`)."""
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return self._playbook
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp or stamp is None:
            return self._playbook
        self._stamp = stamp
        try:
            playbook = load_playbook(self.path)
        except PlaybookError as exc:
            log.error("playbook changed but cannot be used, keeping the last good one: %s", exc)
            return self._playbook
        if playbook != self._playbook:
            self._playbook = playbook
            self.version += 1
            log.info("playbook %s changed: reloaded", self.path)
        return self._playbook


class ScriptedBrain(Brain):
    """A `Brain` that replies from a `Playbook` by keyword matching; no model involved."""

    name = "scripted"

    def __init__(self, playbook: Playbook | PlaybookFile) -> None:
        """Answer calls with ``playbook`` (a `PlaybookFile`: as the file reads now)."""
        self._source = playbook
        # Per call: the intent whose digit entry is awaited.
        self._entries: dict[str, Intent] = {}

    @property
    def playbook(self) -> Playbook:
        """The playbook in use now."""
        source = self._source
        return source.current() if isinstance(source, PlaybookFile) else source

    async def greeting(self, ctx: CallContext) -> BrainReply:
        """Say the playbook's greeting."""
        return BrainReply(text=self.playbook.greeting, intent="greeting")

    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        """Reply with the best-matching intent, or the fallback when nothing matches."""
        self._entries.pop(ctx.call_id, None)  # speech came first: the entry is over
        intent = self.playbook.match(text)
        if intent is None:
            return BrainReply(text=self.playbook.fallback)
        return self._reply(intent, ctx)

    async def respond_keys(self, keys: KeyInput, ctx: CallContext) -> BrainReply:
        """A digit entry the playbook asked for, or a menu key picking an intent."""
        pending = self._entries.pop(ctx.call_id, None)
        if pending is not None and pending.collect is not None:
            entry = pending.collect
            if not entry.accepts(keys.digits):
                self._entries[ctx.call_id] = pending
                return BrainReply(
                    text=entry.invalid, intent=f"{pending.name}:invalid", collect=entry.spec
                )
            spoken = " ".join(keys.digits)
            return BrainReply(
                text=entry.reply.replace("{digits}", spoken),
                actions=entry.actions,
                intent=f"{pending.name}:entered",
            )
        intent = self.playbook.by_key(keys.digits)
        if intent is None:
            return BrainReply(
                text=self.playbook.invalid_key or self.playbook.fallback, intent="invalid_key"
            )
        return self._reply(intent, ctx)

    def _reply(self, intent: Intent, ctx: CallContext) -> BrainReply:
        if intent.collect is not None:
            self._entries[ctx.call_id] = intent
        return BrainReply(
            text=intent.reply,
            actions=intent.actions,
            intent=intent.name,
            collect=intent.collect.spec if intent.collect is not None else None,
            send_dtmf=intent.send_dtmf,
        )

    def forget(self, call_id: str) -> None:
        """Drop the call's awaited digit entry."""
        self._entries.pop(call_id, None)

    async def no_input(self, ctx: CallContext, attempt: int) -> BrainReply:
        """Re-prompt on the first silence; say goodbye and hang up from the second on."""
        if attempt <= 1:
            return BrainReply(text=self.playbook.reprompt, intent="reprompt")
        return BrainReply(text=self.playbook.goodbye, actions=("hangup",), intent="no_input")


def build(s: Settings) -> ScriptedBrain:
    """The provider as the settings configure it (the registry's factory for it)."""
    assert s.playbook is not None
    return ScriptedBrain(PlaybookFile(s.playbook))
