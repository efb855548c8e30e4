"""Provider interfaces: speech-to-text, text-to-speech and the "brain".

Every provider works on 16-bit signed little-endian mono PCM. The call side is 8000 Hz; a
provider that needs another rate resamples inside itself (with soxr). Providers are created
once per worker process (models loaded once) and hand out per-call objects where they keep
per-call state (`SttProvider.open_stream`).
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CallContext:
    """What the brain may know about a call."""

    call_id: str
    from_uri: str = ""
    to_uri: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # From Plivo's Dial sipHeaders (X-PH-*), decoded: the A leg's CallUUID, the caller's and
    # the called number as Plivo saw them, and any other X-PH- values by lowercase name.
    call_uuid: str = ""
    from_number: str = ""
    to_number: str = ""
    plivo: dict[str, str] = field(default_factory=dict)
    # The app's own id of a call it placed (``POST /calls``' ``call_id``); "" otherwise.
    record_id: str = ""


DTMF_KEYS: frozenset[str] = frozenset("0123456789*#ABCD")
"""The telephone keypad (RFC 4733 events 0-15)."""


@dataclass(frozen=True)
class DigitCollect:
    """A brain's request to collect keypad digits after its reply (Plivo ``GetInput``-style).

    The caller's keys are gathered until the `terminator` is pressed (not included),
    `max_digits` were entered, or no key came for `timeout_s` after the last one; then they
    reach the brain as one `KeyInput`. Speech before the first key wins instead (the brain
    gets the transcript); once a key was pressed, speech is ignored until the entry ends.

    With `spoken` (Plivo's ``inputType="dtmf speech"``), the entry may also be said: a
    caller turn of digits alone ("one two three", "it's four five six") is the entry, as
    `KeyInput(digits, "speech")`, and recognisers that can listen for digits do
    (`SttProvider.open_stream`'s `expect`).
    """

    min_digits: int = 1
    max_digits: int = 1
    terminator: str = "#"  # "" for none
    timeout_s: float = 5.0
    spoken: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits <= 64:
            raise ValueError(
                f"digit collection needs 1 <= min_digits <= max_digits <= 64, got "
                f"min_digits={self.min_digits}, max_digits={self.max_digits}"
            )
        if self.terminator and (len(self.terminator) != 1 or self.terminator not in DTMF_KEYS):
            raise ValueError(f"terminator must be one keypad key or empty, not {self.terminator!r}")
        if not 0.5 <= self.timeout_s <= 60.0:
            raise ValueError(f"timeout_s must be between 0.5 and 60 seconds, got {self.timeout_s}")


@dataclass(frozen=True)
class KeyInput:
    """Keys the caller pressed, as one caller turn.

    ``ended_by`` is ``"key"`` (a single key, no collection asked for), ``"terminator"``,
    ``"max"`` (`DigitCollect.max_digits` reached), ``"timeout"``, or ``"speech"`` (the
    entry was said, not keyed: `DigitCollect.spoken`).
    """

    digits: str
    ended_by: str = "key"

    def describe(self) -> str:
        """What a text brain (an LLM) is told, e.g. ``"The caller pressed 1."``."""
        if self.ended_by == "key":
            return f"The caller pressed {self.digits or 'nothing'} on the keypad."
        how = {
            "terminator": "and then the terminator key",
            "max": "",
            "timeout": "and then stopped (timed out)",
        }.get(self.ended_by, "")
        entered = " ".join(self.digits) if self.digits else "no digits"
        if self.ended_by == "speech":
            return f"The caller said {entered} for the keypad entry asked for."
        return " ".join(f"The caller entered {entered} on the keypad {how}".split()) + "."


@dataclass(frozen=True)
class BrainReply:
    """The agent's answer to one caller turn: text to speak, then actions to run."""

    text: str
    actions: tuple[str, ...] = ()
    intent: str | None = None
    # Set when the real answer comes later, pushed by the brain's owner (an external bot
    # answering asynchronously): the conversation waits this many seconds for it (see
    # `Brain.wait_pushed`) and apologises if it never comes.  `text` may be a holding line.
    pending_s: float | None = None
    # Collect keypad digits after (and while) this reply is spoken; None: each key the
    # caller presses is delivered on its own.
    collect: DigitCollect | None = None
    # Keys the agent sends (RFC 4733, or SIP INFO when the call has no telephone-event)
    # after the reply was spoken, e.g. to navigate another IVR.
    send_dtmf: str = ""


class ProviderError(Exception):
    """A vendor failed: the failover layer retries, switches provider or apologises.

    ``kind`` is one of ``"timeout"``, ``"auth"`` (401/403), ``"http"`` (other HTTP
    errors, ``status`` set), ``"disconnect"`` (the connection dropped mid-stream),
    ``"malformed"`` (a payload that does not parse) or ``"config"``.  ``provider`` names
    the provider ("deepgram", "openai", "elevenlabs", ...).  The message never contains
    an API key.
    """

    def __init__(
        self, provider: str, kind: str, message: str, *, status: int | None = None
    ) -> None:
        super().__init__(f"{provider}: {kind}: {message}")
        self.provider = provider
        self.kind = kind
        self.status = status


class ReplyStream(abc.ABC):
    """A reply as it is generated: iterate for text pieces, then read `reply`.

    Iterating yields the reply's text in pieces (LLM deltas) in order; once iteration has
    ended, `reply` holds the whole reply with its actions (e.g. ``("hangup",)``) and
    intent.  `aclose()` stops generation early (barge-in) and must be safe to call twice.
    """

    reply: BrainReply | None = None

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[str]:
        """The text pieces."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Stop generating (release the HTTP stream)."""

    def keep(self) -> None:  # noqa: B027 - optional hook
        """A reply generated ahead (`Brain.prepare_stream`) is the turn's reply after all:
        it may now enter the brain's memory and run its tools."""


class _WholeReply(ReplyStream):
    """A `ReplyStream` over a brain that answers in one piece."""

    def __init__(self, pending: Awaitable[BrainReply]) -> None:
        self._pending = pending

    async def _pieces(self) -> AsyncIterator[str]:
        self.reply = await self._pending
        if self.reply.text:
            yield self.reply.text

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()


class SttStream(abc.ABC):
    """Speech-to-text for one utterance: feed audio while the caller speaks, then finish."""

    @abc.abstractmethod
    async def feed(self, pcm: bytes) -> None:
        """Add 8 kHz 16-bit PCM of the utterance in progress."""

    @abc.abstractmethod
    async def finish(self) -> str:
        """End the utterance and return its final transcript ("" when nothing was heard)."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Drop the utterance without a result; must be safe to call more than once."""

    def utterance_end(self) -> float | None:
        """The recogniser's own end of the utterance, for recognisers that tell (Deepgram's
        endpointing / UtteranceEnd): None until it heard words and then their end (and again
        None when more words follow); then how many milliseconds of the audio fed so far
        follow the last word.  The session ends the turn on it when its own VAD still hears
        sound (a noisy line); `finish` is still called for the transcript."""
        return None

    def heard_words(self) -> bool | None:
        """Whether the recogniser has reported any word of the utterance yet; None when it
        cannot tell before `finish`."""
        return None


# What the conversation expects the caller to say next (`SttProvider.open_stream`):
# digits, while a keypad entry that may be spoken is asked for (`DigitCollect.spoken`).
EXPECT_DIGITS = "digits"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# What a caller may say before the digits of a spoken entry ("it's four five six").
ENTRY_LEAD_INS = ("it's", "it is", "that's", "my number is", "the number is", "number")


def _entry_words(text: str) -> list[str]:
    """Lowercase words and figures, apostrophes dropped ("it's" is "its")."""
    return re.findall(r"[a-z0-9]+", re.sub(r"['\u2019]", "", text.lower()))


_DIGIT_KEYS = {word: str(n) for n, word in enumerate(DIGIT_WORDS)} | {"oh": "0", "o": "0"}
_LEAD_INS = tuple(tuple(_entry_words(lead)) for lead in ENTRY_LEAD_INS)


def spoken_entry(text: str) -> str | None:
    """The keys a caller turn says, when it says only digits (words or figures), perhaps
    after a lead-in such as "it's" or "my number is"; None for anything else."""
    words = _entry_words(text)
    for lead in _LEAD_INS:
        if tuple(words[: len(lead)]) == lead:
            words = words[len(lead) :]
            break
    keys = ""
    for word in words:
        if word.isdigit():
            keys += word
        elif word in _DIGIT_KEYS:
            keys += _DIGIT_KEYS[word]
        else:
            return None
    return keys or None


class SttProvider(abc.ABC):
    """Creates one `SttStream` per caller utterance."""

    name: str = ""

    @abc.abstractmethod
    async def open_stream(self, expect: str | None = None) -> SttStream:
        """Start recognising a new utterance. `expect` says what the caller is expected to
        say (`EXPECT_DIGITS`, or None for anything): a recogniser that can listen for it
        does, the others ignore it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release process-wide resources."""


class TtsProvider(abc.ABC):
    """Turns text into 8 kHz 16-bit PCM, streamed as it is produced."""

    name: str = ""

    @abc.abstractmethod
    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield PCM chunks (any length, even byte count) for `text`, first audio first."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release process-wide resources."""


class Brain(abc.ABC):
    """Turns what the caller said into what the agent says next."""

    name: str = ""
    # True for brains whose `respond_stream` yields text as it is generated (an LLM): the
    # conversation then speaks each sentence as soon as it is complete.
    streams: bool = False
    # True for brains whose replies can also arrive unprompted (`deliver`/`wait_pushed`).
    pushes: bool = False

    @abc.abstractmethod
    async def greeting(self, ctx: CallContext) -> BrainReply:
        """The first thing the agent says when a call is answered."""

    @abc.abstractmethod
    async def respond(self, text: str, ctx: CallContext) -> BrainReply:
        """Reply to one caller turn (`text` is the transcript, maybe empty)."""

    def respond_stream(self, text: str, ctx: CallContext) -> ReplyStream:
        """Like `respond`, streamed; brains that generate text progressively override it."""
        return _WholeReply(self.respond(text, ctx))

    async def respond_keys(self, keys: KeyInput, ctx: CallContext) -> BrainReply:
        """Reply to keys the caller pressed.  By default the brain is told in words
        (`KeyInput.describe`, e.g. "The caller pressed 1 on the keypad.") as a caller turn."""
        return await self.respond(keys.describe(), ctx)

    def respond_keys_stream(self, keys: KeyInput, ctx: CallContext) -> ReplyStream:
        """Like `respond_keys`, streamed (used when `streams` is True)."""
        return self.respond_stream(keys.describe(), ctx)

    def prepare_stream(self, text: str, ctx: CallContext) -> ReplyStream | None:
        """Start a reply to `text` ahead of the turn's end (the caller has paused; the turn
        may still go on).  The stream generates text like `respond_stream`, but leaves the
        brain's memory as it was and runs no tool (no side effect) until its `keep()`;
        `aclose()` before that drops it without a trace.  None (the default): this brain
        cannot, and the reply is asked for when the turn has ended."""
        return None

    def observe(self, ctx: CallContext, note: str) -> None:  # noqa: B027 - optional hook
        """Something the caller did not say happened on the call (e.g. a transfer the
        brain asked for failed); a brain with a memory of the call keeps the note."""

    def forget(self, call_id: str) -> None:  # noqa: B027 - optional hook
        """The call is over: drop what was kept for it (e.g. an LLM's history)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release process-wide resources (HTTP connection pools)."""

    def deliver(self, call_id: str, payload: Mapping[str, Any]) -> bool:
        """Accept a reply pushed for `call_id` from any thread; False when the call is
        unknown.  Raises ``ProviderError(kind="malformed")`` for a payload it cannot use,
        and ``ProviderError(kind="config")`` when this brain takes no pushed replies."""
        raise ProviderError(self.name or "brain", "config", "this brain takes no pushed replies")

    async def wait_pushed(self, call_id: str, timeout_s: float | None = None) -> BrainReply | None:
        """The next reply pushed for `call_id`, or None (none will come: the call is
        unknown or forgotten, or `timeout_s` passed).  Raises the `ProviderError` of a
        pushed reply that could not be prepared."""
        return None

    @abc.abstractmethod
    async def no_input(self, ctx: CallContext, attempt: int) -> BrainReply:
        """What to say after the caller was silent; `attempt` counts from 1.

        The conversation re-prompts once (attempt 1); at attempt 2 the reply should say
        goodbye and carry the `hangup` action.
        """
