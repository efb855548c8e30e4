"""Transfer through Plivo's REST API: move the call's A leg to XML that dials the human.

Used for calls routed by the answer_url app (their CallUUID arrives in the X-PH- headers)
when ``transfer.method = "plivo"``. The plivo SDK's ``calls.transfer(call_uuid,
legs="aleg", aleg_url=...)`` points the caller's leg at the app's ``/transfer-xml`` route,
which answers with ``<Dial>`` to the target. Plivo then ends the B leg (the SIP call into
the agent) itself; the agent hangs up its side after ``transfer.plivo_hangup_after_s`` in
case it has not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlencode

from plivo import exceptions as plivo_errors

from gateway.plivo.client import plivo_client
from gateway.policy.transfer import TransferError, TransferOutcome
from gateway.providers.base import ProviderError
from gateway.tally import count_vendor_error
from sip_config import Settings

log = logging.getLogger(__name__)

TRANSFER_XML_PATH = "/transfer-xml"
"""The answer_url app's route that returns the ``<Dial>`` to the transfer target."""


def rest_client(settings: Settings, timeout: float = 10.0) -> Any:
    """A plivo SDK client with the transfer's credentials (``transfer.plivo_auth_id`` and
    ``app.auth_token``, else the ``outbound.plivo_*`` ones), pointed at
    ``transfer.plivo_api_url`` (else ``outbound.plivo_api_url``) when set."""
    t, o = settings.transfer, settings.outbound
    auth_id = t.auth_id() or o.plivo_auth_id
    token = settings.app.auth_token or o.plivo_auth_token
    api_url = t.plivo_api_url or o.plivo_api_url
    return plivo_client(auth_id, token, api_url, timeout)


def transfer_xml_url(public_url: str, target: str) -> str:
    """The app URL Plivo fetches for the transferred leg (the target in the query).

    >>> transfer_xml_url("https://bot.example.com", "+14155550100")
    'https://bot.example.com/transfer-xml?target=%2B14155550100'
    """
    return f"{public_url.rstrip('/')}{TRANSFER_XML_PATH}?{urlencode({'target': target})}"


class PlivoTransfer:
    """Transfers one call (its A leg, by CallUUID) through the REST API."""

    def __init__(self, settings: Settings, call_uuid: str, client: Any = None) -> None:
        self.settings = settings
        self.call_uuid = call_uuid
        self._client = client

    def _rest(self) -> Any:
        if self._client is None:
            self._client = rest_client(self.settings)
        return self._client

    async def transfer(self, target: str) -> TransferOutcome:
        """Ask Plivo to move the caller to ``target`` (``""``: ``transfer.target``).

        Raises `TransferError` without a target and `ProviderError("plivo", ...)` when the
        API refuses or cannot be reached."""
        t = self.settings.transfer
        dest = (target or t.target or "").strip()
        if not dest:
            raise TransferError("no transfer target (set transfer.target)")
        public_url = self.settings.app.public_url
        if not public_url:
            raise TransferError("app.public_url is not set: Plivo cannot fetch the transfer XML")
        url = transfer_xml_url(public_url, dest)

        def call() -> Any:
            owned = self._client is None
            client = self._rest()
            try:
                return client.calls.transfer(
                    self.call_uuid, legs="aleg", aleg_url=url, aleg_method="POST"
                )
            finally:
                if owned:  # its HTTP session would hold a socket until collected
                    client.session.close()
                    self._client = None

        try:
            response = await asyncio.to_thread(call)
        except plivo_errors.AuthenticationError as exc:
            failure = ProviderError("plivo", "auth", f"transfer refused: {exc}")
            raise count_vendor_error(failure) from None
        except plivo_errors.PlivoRestError as exc:
            failure = ProviderError("plivo", "http", f"transfer of {self.call_uuid}: {exc}")
            raise count_vendor_error(failure) from None
        except OSError as exc:  # requests' connection errors are OSErrors
            failure = ProviderError("plivo", "disconnect", f"transfer: {exc}")
            raise count_vendor_error(failure) from None
        message = str(getattr(response, "message", "") or "accepted")
        log.info("call %s: Plivo transfer to %s: %s", self.call_uuid, dest, message)
        return TransferOutcome(
            True,
            detail=f"Plivo: {message}",
            target=dest,
            hangup_after_s=t.plivo_hangup_after_s,
        )


async def hang_up_call(settings: Settings, call_uuid: str) -> bool:
    """Hang up a call with Plivo's REST API (``DELETE /Call/{uuid}/``: 204, or 404 when it
    has ended already: https://www.plivo.com/docs/voice/api/call/hangup-a-call/). False,
    logged, when Plivo cannot be reached or refuses. Never called without a CallUUID: an
    empty one would end every call of the account (that page's warning)."""
    if not call_uuid.strip():
        raise ValueError("hang_up_call needs a CallUUID")

    def call() -> None:
        client = rest_client(settings)
        try:
            client.calls.delete(call_uuid)
        finally:
            client.session.close()

    try:
        await asyncio.to_thread(call)
    except plivo_errors.ResourceNotFoundError:
        return True  # already over
    except (plivo_errors.PlivoRestError, OSError) as exc:
        log.warning("call %s: Plivo hang-up failed: %s", call_uuid, exc)
        return False
    log.info("call %s: hung up through Plivo's API", call_uuid)
    return True
