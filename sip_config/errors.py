"""Configuration errors: :class:`ConfigError`, how a validator raises a problem, and how
pydantic's errors become one message that names each bad setting by its dotted path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, NoReturn

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import SettingsError

__all__ = ["ConfigError", "config_error_from", "invalid"]

# Errors raised by our own validators.  ``_ERR_SHOW_INPUT`` gets "(got <value>)" appended by
# the formatter; ``_ERR_VERBATIM`` messages already contain the value in their own words.
_ERR_SHOW_INPUT: Final = "sipagent_invalid"
_ERR_VERBATIM: Final = "sipagent_invalid_verbatim"


class ConfigError(Exception):
    """Invalid or unreadable configuration.

    ``str(error)`` is a human-readable message (one line per problem); ``problems`` holds
    the same lines individually, e.g. ``"sip.listen_port: Input should be ... (got 70000)"``.
    """

    def __init__(self, message: str, problems: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: tuple[str, ...] = problems if problems is not None else (message,)

    @classmethod
    def of(cls, problems: list[str]) -> ConfigError:
        """One error for several problems, one line each."""
        return cls("\n".join(problems), tuple(problems))

    def __str__(self) -> str:
        return self.message


def invalid(message: str, *, show_input: bool = True) -> NoReturn:
    """Raise a validation error whose text the formatter keeps as-is (no "Value error, ");
    with ``show_input`` it appends "(got <value>)" (off where the value may be a secret, or
    where the message names it already)."""
    raise PydanticCustomError(_ERR_SHOW_INPUT if show_input else _ERR_VERBATIM, message)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "<settings>"


def _format_value(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value) if isinstance(value, dict | list | tuple) else str(value)


def _format_error(error: ErrorDetails) -> str:
    where = _format_loc(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown setting"
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    if kind == _ERR_VERBATIM:
        # Whole-section checks name their fields in the message themselves.
        return message if where == "<settings>" else f"{where}: {message}"
    return f"{where}: {message} (got {_format_value(error['input'])})"


_SOURCE_NAMES: Final = {
    "EnvSettingsSource": "environment",
    "DotEnvSettingsSource": ".env file",
}


def config_error_from(exc: ValidationError | SettingsError) -> ConfigError:
    """A validation error as one problem per bad setting; a pydantic-settings source error
    (e.g. malformed JSON in an environment variable) reworded."""
    if isinstance(exc, ValidationError):
        return ConfigError.of([_format_error(error) for error in exc.errors(include_url=False)])
    text = str(exc)
    cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
    match = re.search(r'field "([^"]+)" from source "([^"]+)"', text)
    if match is None:
        return ConfigError(f"{text}{cause}")
    field, source = match.groups()
    return ConfigError(
        f"{field}: cannot parse value from {_SOURCE_NAMES.get(source, source)}{cause}"
    )
