"""Cutting agent text into pieces a sentence-at-a-time TTS can start speaking early."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_CLAUSE_BREAK = re.compile(r"(?<=[,:])\s+")
# Words a phrase may start with: cutting before one of them keeps each piece a phrase.
_PHRASE_STARTS = frozenset(
    [
        "and",
        "but",
        "or",
        "so",
        "because",
        "from",
        "to",
        "with",
        "on",
        "in",
        "at",
        "for",
        "about",
        "when",
        "where",
        "which",
        "that",
    ]
)


def _cut_phrase(words: list[str], target: int, max_words: int) -> int:
    """Index of the phrase boundary nearest `target` words (0 for none)."""
    candidates = [
        i
        for i in range(3, min(max_words, len(words) - 2) + 1)
        if words[i].lower() in _PHRASE_STARTS
    ]
    return min(candidates, key=lambda i: abs(i - target), default=0)


def speech_chunks(text: str, first_max_words: int = 6, phrase_max_words: int = 10) -> list[str]:
    """Split `text` so the first piece is short: the time to first audio depends on it.

    The first sentence is cut at its first clause break (comma, colon) when it is longer
    than `first_max_words` words and the clause has at least three words. A first piece
    still longer than `phrase_max_words` is cut before a word that starts a phrase ("from",
    "and", ...). Everything after the first piece stays whole sentences, which keeps the
    voice's phrasing natural.
    """
    text = " ".join(text.split())
    if not text:
        return []
    sentences = [s for s in _SENTENCE_END.split(text) if s]
    first, rest = sentences[0], sentences[1:]
    pieces: list[str] = []
    if len(first.split()) > first_max_words:
        clauses = _CLAUSE_BREAK.split(first, maxsplit=1)
        if len(clauses) == 2 and len(clauses[0].split()) >= 3:
            pieces = clauses
    if not pieces:
        pieces = [first]
    words = pieces[0].split()
    if len(words) > phrase_max_words:
        cut = _cut_phrase(words, first_max_words, phrase_max_words)
        if cut:
            pieces[0:1] = [" ".join(words[:cut]), " ".join(words[cut:])]
    if rest:
        pieces.append(" ".join(rest))
    return pieces


class SentenceCutter:
    """Cuts a reply that arrives in pieces (LLM deltas) into speakable pieces, each handed
    out as soon as it is complete, so speech starts before the reply is finished.

    A piece ends at a sentence end (``. ! ? ;`` followed by a space).  The first piece ends
    earlier, at its first clause break (``, :``): a lead-in ("Sure," "Of course,") is
    spoken while the model writes the rest of the sentence, since the time to first audio
    depends on the first piece and an LLM writes some 50 tokens a second.  `flush()`
    returns what is left when the reply ends.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        """Add text; return the pieces completed by it (maybe none)."""
        self._buffer += delta
        pieces: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                return pieces
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if piece:
                pieces.append(" ".join(piece.split()))
                self._emitted += 1

    def flush(self) -> list[str]:
        """The rest of the reply (the last piece, if any)."""
        piece, self._buffer = " ".join(self._buffer.split()), ""
        if piece:
            self._emitted += 1
            return [piece]
        return []

    def _next_cut(self) -> int | None:
        m = _SENTENCE_END.search(self._buffer)
        if m is not None:
            return m.start()
        if self._emitted == 0:
            c = _CLAUSE_BREAK.search(self._buffer)
            if c is not None and self._buffer[: c.start()].strip():
                return c.start()
        return None
