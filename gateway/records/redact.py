"""PII redaction of what callers and the agent said (pure code, no I/O).

:func:`redact` replaces, in this order:

* e-mail addresses, written (``jo.doe@example.com``) or spoken as speech-to-text writes
  them (``jo dot doe at example dot com``) → ``[email]``;
* digit sequences, with single spaces, dashes, dots or parentheses between groups
  (``4111 1111-1111 1111``, ``(415) 555-0100``, ``+44 20 7946 0958``):

  - 13 to 19 digits passing the Luhn check → ``[card]``;
  - E.164 (``+`` and 8 to 15 digits), North American (10 digits, or 11 starting with 1),
    national numbers with a trunk ``0`` (10 or 11 digits) and 3-4 local numbers
    (``555-0100``) → ``[phone]``;
  - any other sequence of 6 or more digits → ``[number]``;

* the same, spoken as at least 6 digit words (``four one one one ...``, ``oh``/``o`` for
  zero, ``double``/``triple`` for repeats, ``plus`` before a phone number).

Left alone: shorter numbers, times (``10:30``), dates (``2024-01-15``, ``15.01.2024``,
``1/15/2024``), prices and amounts (``$1,299.99``, ``1,000,000``, ``€250000``), decimals
(``3.75``) and digits inside words (``A320``, ``v2.15.1``).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CARD", "EMAIL", "NUMBER", "PHONE", "luhn_valid", "redact"]

CARD: Final = "[card]"
PHONE: Final = "[phone]"
NUMBER: Final = "[number]"
EMAIL: Final = "[email]"

_MIN_DIGITS: Final = 6

# --- e-mail ------------------------------------------------------------------------------------
_EMAIL: Final = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9](?:[\w.+-]*[A-Za-z0-9_])?@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b"
)
_TLDS: Final = (
    "com|net|org|edu|gov|mil|int|info|biz|io|co|us|uk|ca|au|de|fr|es|it|nl|be|ch|at|se|no"
    "|dk|fi|ie|pl|pt|in|jp|cn|br|mx|nz|za|me|ai|app|dev"
)
_WORD: Final = r"[A-Za-z0-9](?:[A-Za-z0-9_+-]*[A-Za-z0-9])?"
_SPOKEN_DOT: Final = r"(?:\s+dot\s+|\.)"
_SPOKEN_EMAIL: Final = re.compile(
    rf"(?<![\w.])(?:{_WORD}(?:{_SPOKEN_DOT}{_WORD})*)\s+at\s+"
    rf"(?:{_WORD}{_SPOKEN_DOT})+(?:{_TLDS})\b",
    re.IGNORECASE,
)

# --- written digits ----------------------------------------------------------------------------
# Groups of digits joined by one separator: a space, dash or dot, optionally around a
# parenthesised area code.  Not preceded by a word character, a currency sign or a digit
# separator that would make it part of a larger token (``1,299``, ``v2.1``, ``10:30``).
_SEQUENCE: Final = re.compile(
    r"(?<![\w$€£¥₹.,:/+-])"
    r"(?P<plus>\+\s?)?"
    r"(?:\(\d{1,5}\)\s?|\d+)"
    r"(?:(?:[ .-]|\s?\(\d{1,5}\)\s?|\)\s?)?\d+)*"
    r"(?![\w/]|[.,:]\d|\.\w)"
)
_DATE_PATTERNS: Final = (
    # 2024-01-15, 2024.01.15, 2024 01 15
    re.compile(r"(?P<y>\d{4})([-. ])(?P<m>\d{1,2})\2(?P<d>\d{1,2})"),
    # 15.01.2024, 15-01-2024, 01-15-2024
    re.compile(r"(?P<a>\d{1,2})([-. ])(?P<b>\d{1,2})\2(?P<y>\d{4})"),
)


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn (mod 10) check used by payment cards."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _is_date(text: str) -> bool:
    for pattern in _DATE_PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        parts = m.groupdict()
        year = int(parts["y"])
        if not 1900 <= year <= 2199:
            continue
        if "m" in parts:
            month, day = int(parts["m"]), int(parts["d"])
            if 1 <= month <= 12 and 1 <= day <= 31:
                return True
        else:
            a, b = int(parts["a"]), int(parts["b"])
            if (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31):
                return True
    return False


def _classify(digits: str, *, plus: bool, groups: list[str]) -> str | None:
    """The placeholder for a digit sequence, or None to keep it."""
    n = len(digits)
    if 13 <= n <= 19 and luhn_valid(digits):
        return CARD
    if plus and 8 <= n <= 15:
        return PHONE
    if n < _MIN_DIGITS:
        return None
    if n == 10 or (n == 11 and digits[0] in "01"):
        return PHONE
    if n == 7 and [len(g) for g in groups] == [3, 4]:
        return PHONE
    return NUMBER


def _written(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    if len(digits) < _MIN_DIGITS and not match.group("plus"):
        return text
    if _is_date(text):
        return text
    groups = re.findall(r"\d+", text)
    # A single dot between two groups is a decimal number (3.75, 1234.5), not a phone.
    decimal = re.fullmatch(r"\d+\.\d+", text) is not None
    if decimal and max(len(g) for g in groups) < _MIN_DIGITS:
        return text
    found = _classify(digits, plus=bool(match.group("plus")), groups=groups)
    if found is None:
        return text
    return found


# --- spoken digits ------------------------------------------------------------------------------
_DIGIT_WORDS: Final = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_REPEATS: Final = {"double": 2, "triple": 3}
_DIGIT_ALT: Final = "|".join(sorted(_DIGIT_WORDS, key=len, reverse=True))
_SPOKEN_TOKEN: Final = rf"(?:(?:double|triple)[\s-]+)?(?:{_DIGIT_ALT}|\d)"
_SPOKEN: Final = re.compile(
    rf"(?<![\w'])(?P<plus>plus[\s,]+)?{_SPOKEN_TOKEN}(?:[\s,-]+{_SPOKEN_TOKEN})+(?![\w'])",
    re.IGNORECASE,
)


def _spoken(match: re.Match[str]) -> str:
    text = match.group(0)
    tokens = re.findall(r"(?:double|triple)[\s-]+\w+|\w+", text, re.IGNORECASE)
    plus = bool(match.group("plus"))
    if plus:
        tokens = tokens[1:]
    # A leading "oh"/"o" is an interjection ("oh, one two ..."), not a zero.
    lead = 0
    while lead < len(tokens) - 1 and tokens[lead].lower() in ("oh", "o") and not plus:
        lead += 1
    digits = ""
    words = 0
    for token in tokens[lead:]:
        parts = re.split(r"[\s-]+", token.lower())
        count = _REPEATS.get(parts[0], 1) if len(parts) > 1 else 1
        word = parts[-1]
        digit = _DIGIT_WORDS.get(word, word if word.isdigit() else "")
        if not word.isdigit():
            words += count
        digits += digit * count
    if words == 0 or len(digits) < _MIN_DIGITS:
        return text
    found = _classify(digits, plus=plus, groups=[digits])
    if found is None:
        return text
    if lead:
        # Keep the interjection: re-attach the original text before the first digit word.
        spans = list(re.finditer(r"\w+", text))
        return text[: spans[lead].start()] + found
    return found


def redact(text: str) -> str:
    """``text`` with card and phone numbers, other long digit runs and e-mail addresses
    replaced by ``[card]``, ``[phone]``, ``[number]`` and ``[email]``."""
    if not text:
        return text
    text = _EMAIL.sub(EMAIL, text)
    text = _SPOKEN_EMAIL.sub(EMAIL, text)
    text = _SPOKEN.sub(_spoken, text)
    return _SEQUENCE.sub(_written, text)
