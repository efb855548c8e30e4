"""Keypad entry (DTMF) as a pure state machine: feed it keys and times, get decisions.

A brain may ask for an entry after its reply (`BrainReply.collect`: min/max digits,
terminator, inter-digit timeout). Without one, each key is a caller turn of its own. With
one, keys are gathered until the terminator, `max_digits` or the inter-digit timeout, and
then become one caller turn. After an entry ended at `max_digits`, its terminator pressed
right after out of habit ("123456#") is swallowed. An entry the brain allows to be said
(`DigitCollect.spoken`) may come as a caller turn of digits alone instead
(`providers.base.spoken_entry`). No asyncio here: the session waits for keys and for
`deadline`, this module decides.
"""

from __future__ import annotations

from gateway.providers.base import EXPECT_DIGITS, DigitCollect, KeyInput, spoken_entry

__all__ = ["KeypadEntry", "spoken_entry"]


class KeypadEntry:
    """The keypad entry of one call: what the brain asked for and the keys so far."""

    def __init__(self) -> None:
        self.collect: DigitCollect | None = None  # the entry asked for (None: single keys)
        self.digits = ""  # the keys of the entry under way
        self.due = 0.0  # monotonic time the entry under way times out
        self._late_terminator: tuple[str, float] | None = None

    @property
    def underway(self) -> bool:
        """An entry has begun (speech is ignored until it ends)."""
        return bool(self.digits)

    @property
    def expected(self) -> str | None:
        """What the caller's next utterance is expected to be: `EXPECT_DIGITS` while an
        entry that may be said is asked for and no key came yet; else None."""
        spec = self.collect
        if spec is not None and spec.spoken and not self.digits:
            return EXPECT_DIGITS
        return None

    def said(self, text: str) -> KeyInput | None:
        """A caller turn's transcript: the entry asked for when it says one
        (`spoken_entry`), else None. Either way the request is over (speech came first)."""
        spec, self.collect = self.collect, None
        if spec is None or not spec.spoken:
            return None
        keys = spoken_entry(text)
        return KeyInput(keys, "speech") if keys is not None else None

    @property
    def deadline(self) -> float | None:
        """When the entry under way ends by timeout (None: no entry under way)."""
        return self.due if self.digits and self.collect is not None else None

    def arm(self, collect: DigitCollect | None, *, reprompt: bool = False) -> None:
        """Take a reply's entry request; a re-prompt without one keeps the request
        before it (the caller is reminded, the question stands)."""
        if collect is not None or not reprompt:
            self.collect = collect

    def drop_request(self) -> None:
        """Speech came before any key: the entry asked for is over."""
        self.collect = None

    def swallows(self, key: str, now: float) -> bool:
        """True for the terminator of the entry that just ended at `max_digits`; any key
        ends that grace."""
        late, self._late_terminator = self._late_terminator, None
        return late is not None and key == late[0] and now < late[1]

    def press(self, key: str, now: float) -> KeyInput | None:
        """One key at `now`: the caller turn it completes, or None while the entry goes on."""
        spec = self.collect
        if spec is None:
            return KeyInput(key, "key")
        if spec.terminator and key == spec.terminator:
            return self._end("terminator")
        self.digits += key
        self.due = now + spec.timeout_s
        if len(self.digits) >= spec.max_digits:
            if spec.terminator:
                self._late_terminator = (spec.terminator, now + spec.timeout_s)
            return self._end("max")
        return None

    def expire(self) -> KeyInput:
        """The inter-digit timeout passed (at `deadline`): the entry ends with its keys."""
        return self._end("timeout")

    def _end(self, ended_by: str) -> KeyInput:
        keys, self.digits = self.digits, ""
        self.collect = None
        return KeyInput(keys, ended_by)
