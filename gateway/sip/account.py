"""The agent's pjsua2 account: its configuration (identity, outbound proxy, RTP ports and
addresses, registration) and `AgentAccount`, which hands what pjsua2 tells the account
(an incoming call, a REGISTER outcome) to the user agent.

Runs on the pj thread: `gateway.sip.agent.AgentUA` creates the account there once the
endpoint listens, and pjsua2 calls its callbacks there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pjsua2 as pj

from gateway.sip.endpoint import EndpointOptions
from gateway.sip.options import AgentOptions
from gateway.sip.ports import pjsua_port_range
from gateway.sip.registration import Registration


def account_config(
    uri: str,
    options: AgentOptions,
    endpoint: EndpointOptions,
    registration: Registration | None,
) -> Any:
    """The ``pj.AccountConfig`` of the account ``uri``."""
    cfg = pj.AccountConfig()
    if registration is not None:
        registration.configure(cfg)
    cfg.idUri = uri
    if options.outbound_proxy:
        proxy = options.outbound_proxy
        cfg.sipConfig.proxies.append(proxy if ";lr" in proxy else f"{proxy};lr")
    mcfg = cfg.mediaConfig.transportConfig
    mcfg.port = options.rtp_port_start
    mcfg.portRange = pjsua_port_range(options.rtp_port_range)
    bound = options.media_host or endpoint.host
    if bound not in ("", "0.0.0.0"):
        mcfg.boundAddress = bound
    advertised = options.media_public_host or endpoint.public_host
    if advertised:
        mcfg.publicAddress = advertised
    return cfg


class AgentAccount(pj.Account):  # type: ignore[misc]
    """The agent's account: ``onIncomingCall`` goes to `on_incoming` (with this account)
    and ``onRegState`` to `on_reg_state`."""

    def __init__(
        self,
        on_incoming: Callable[[AgentAccount, Any], None],
        on_reg_state: Callable[[Any], None],
    ) -> None:
        super().__init__()
        self._on_incoming = on_incoming
        self._on_reg_state = on_reg_state

    def onIncomingCall(self, prm: Any) -> None:
        self._on_incoming(self, prm)

    def onRegState(self, prm: Any) -> None:
        self._on_reg_state(prm)
