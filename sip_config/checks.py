"""Checks run once the settings are built (by :func:`sip_config.load_settings`), for what a
validator must not do: look at files and at the environment, and weigh sections against
each other.

First the files the settings name (made absolute here, as the process's working directory
and home are what a relative path meant), then the rules across sections, some of which
read the environment: vendors' API keys, the bot brains' URLs, Plivo's credentials.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sip_config.errors import ConfigError
from sip_config.providers import OLD_EXTERNAL_HINT, OLD_EXTERNAL_KEYS

if TYPE_CHECKING:
    from sip_config.settings import Settings

__all__ = ["check_loaded"]


def check_loaded(settings: Settings) -> None:
    """Check (and make absolute) the files the settings name, then the rules across
    sections; raise :class:`ConfigError` naming every problem of the first step that has
    any."""
    problems = _file_problems(settings)
    if problems:
        raise ConfigError.of(problems)
    problems = _cross_section_problems(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    queue = _queue_problem(settings)
    if queue:
        raise ConfigError(queue)


def _file_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    outbound = settings.outbound
    if outbound.dnc_file is not None:
        path = outbound.dnc_file.expanduser().absolute()
        if not path.is_file() or not os.access(path, os.R_OK):
            problems.append(f"outbound.dnc_file: not a readable file: {path}")
        outbound.dnc_file = path
    edge = settings.edge
    missing = [p for p in (edge.tls_cert, edge.tls_key) if p and not p.expanduser().is_file()]
    if missing:
        problems.append(f"edge: file not found: {missing[0]}")
    # The bundled playbook (the default) is not checked: it ships with the gateway.
    if "playbook" in settings.model_fields_set:
        problem, settings.playbook = _readable_file(settings.playbook)
        if problem:
            problems.append(f"playbook: {problem}")
    return problems


def _readable_file(value: Path) -> tuple[str | None, Path]:
    """What is wrong with the file ``value`` names (None: nothing), and its absolute path."""
    path = value.expanduser().absolute()
    if not path.exists():
        return f"file not found: {path}", path
    if not path.is_file():
        return f"not a regular file: {path}", path
    if not os.access(path, os.R_OK):
        return f"file not readable: {path}", path
    return None, path


def _cross_section_problems(settings: Settings) -> list[str]:
    """A cloud provider in use needs its key (from the settings or the vendor's usual
    environment variable); a bot brain its URL; a transfer what its method needs."""
    from gateway.providers.registry import missing_keys

    problems = missing_keys(settings)
    problems += _bot_problems(settings)
    problems += _transfer_problems(settings)
    if settings.transfer.method == "plivo":
        problems += _plivo_transfer_problems(settings)
    return problems


def _bot_problems(settings: Settings) -> list[str]:
    """The bot brains' required URLs, and the old DCS_* variables of the webhook."""
    p = settings.providers
    brains = (p.brain, p.brain_fallback)
    problems: list[str] = []
    if "external" in brains and not settings.external.url("ocs_url"):
        problems.append("external.ocs_url: required when the brain is 'external' (or set OCS_URL)")
    if "webhook" in brains and not settings.webhook.turn_url:
        problems.append("webhook.turn_url: required when the brain is 'webhook'")
    if "external" in brains or "webhook" in brains:
        problems += [
            f"{name} (environment): no longer read; {OLD_EXTERNAL_HINT}"
            f" (what it meant is now {OLD_EXTERNAL_KEYS[name.lower()]})"
            for name in ("DCS_URL", "DCS_RESPONSE_URL")
            if os.environ.get(name)
        ]
    if "webhook" in brains and os.environ.get("AI_TTS_URL") and not settings.webhook.tts_url:
        problems.append(
            "AI_TTS_URL (environment): the webhook brain does not read it; set"
            " webhook.tts_url (or unset AI_TTS_URL to speak text with the gateway's TTS)"
        )
    return problems


def _transfer_problems(settings: Settings) -> list[str]:
    """Transfers that cannot work, found before any call: Plivo accepts a REFER only on
    Zentrunk, with Refer-To on the trunk's ``<name>.zt.plivo.com`` domain
    (https://plivo.com/docs/sip-trunking/concepts/sip-refer); a Dial to a registered
    endpoint is no trunk."""
    t = settings.transfer
    problems: list[str] = []
    if t.method == "refer" and settings.sip.mode == "register":
        problems.append(
            "transfer.method: 'refer' cannot transfer calls in register mode (they come"
            " from Plivo, which takes REFER only on Zentrunk trunks); use 'auto' or"
            " 'plivo' (Plivo's REST transfer)"
        )
    if (
        t.method == "auto"
        and settings.sip.mode == "register"
        and t.target
        and not settings.plivo_transfer_ready()
    ):
        problems.append(
            "transfer.plivo_auth_id, app.auth_token and app.public_url: required to"
            " transfer calls in register mode (every call is a Plivo call, moved with"
            " Plivo's REST API)"
        )
    if t.method != "plivo":
        hosts = [("transfer.domain", t.domain or "")]
        if t.target and t.target.lower().startswith(("sip:", "sips:")):
            host = t.target.split(":", 1)[1].rsplit("@", 1)[-1].split(";", 1)[0]
            hosts.append(("transfer.target", host))
        for name, host in hosts:
            bare = host.split(":", 1)[0].lower().rstrip(".")
            if bare.endswith("plivo.com") and not bare.endswith(".zt.plivo.com"):
                problems.append(
                    f"{name}: Plivo accepts a REFER only to your Zentrunk domain"
                    f" (<name>.zt.plivo.com), not {host!r}; for calls from Plivo's Dial"
                    " use Plivo's REST transfer (transfer.method 'auto' with its"
                    " credentials, or 'plivo')"
                )
    return problems


def _plivo_transfer_problems(settings: Settings) -> list[str]:
    """What transfer.method 'plivo' needs: credentials and a URL Plivo can fetch from."""
    problems: list[str] = []
    if not (settings.transfer.auth_id() or settings.outbound.plivo_auth_id):
        problems.append(
            "transfer.plivo_auth_id: required when transfer.method is 'plivo'"
            " (or set PLIVO_AUTH_ID)"
        )
    if not (settings.app.auth_token or settings.outbound.plivo_auth_token):
        problems.append("app.auth_token: required when transfer.method is 'plivo'")
    if not settings.app.public_url:
        problems.append(
            "app.public_url: required when transfer.method is 'plivo'"
            " (Plivo fetches the transfer XML from it)"
        )
    return problems


def _queue_problem(settings: Settings) -> str | None:
    """Requests waiting for a CPS slot each hold an app thread; Plivo's callbacks must
    always find a free one."""
    o = settings.outbound
    if o.api_key and o.max_queue >= settings.app.threads:
        return (
            f"outbound.max_queue: {o.max_queue} waiting calls would hold every one of"
            f" app.threads ({settings.app.threads}); keep it below app.threads"
        )
    return None
