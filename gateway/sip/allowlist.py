"""The source allow-list of the SIP side (pure Python): which addresses may send requests.

`sip.allow_networks` becomes a tuple of networks with `parse_networks`; `source_allowed`
answers for a source as pjsip prints it. The guard (`gateway.sip.screen`) asks it for every
request before pjsua2 sees one, and the agent asks it again for an INVITE that reached
pjsua2. No pjsua2 here: callable from any thread.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TypeAlias

IpNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(items: Iterable[str]) -> tuple[IpNetwork, ...]:
    """Parse allow-list entries ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32").

    Host bits are ignored ("10.1.2.3/8" is 10.0.0.0/8), as the settings validator does.
    Raises ValueError naming the bad entry.
    """
    out: list[IpNetwork] = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network") from None
    return tuple(out)


def source_ip(source: str) -> IpAddress | None:
    """The IP address of a source as pjsip prints it: "ip:port", "[v6]:port" or a bare
    address; None when it is not an IP address."""
    text = source.strip()
    if text.startswith("["):
        host = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        host = text.split(":", 1)[0]
    else:
        host = text  # a bare IPv4 or IPv6 address
    host = host.split("%", 1)[0]  # drop an IPv6 zone id
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def source_allowed(source: str, networks: tuple[IpNetwork, ...]) -> bool:
    """Whether a request from `source` ("ip:port") may pass the allow-list.

    An empty list allows everything; an unparsable source is refused. An IPv4-mapped IPv6
    source (::ffff:192.0.2.7) is matched against the IPv4 networks too.
    """
    if not networks:
        return True
    addr = source_ip(source)
    if addr is None:
        return False
    candidates: list[IpAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    return any(a in net for a in candidates for net in networks if a.version == net.version)
