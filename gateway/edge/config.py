"""Kamailio's configuration for the edge, generated from the settings (pure: no I/O).

The edge is the pool's one public SIP address. Kamailio, not our code, meets the network:
it drops malformed and oversized messages, answers strangers with 403, limits floods per
source (pike) and pool-wide (pipelimit), answers OPTIONS pings, refuses SDP a worker must
not see (488), and hands each new call to a worker with a free slot (dispatcher, round
robin, the next worker on 486/503/no answer). It record-routes, so a call's in-dialog
requests keep passing through it both ways, and it relays the workers' own requests
(outbound calls, the human's leg of a warm transfer, calls a REFER asks for) to the world.

`EdgePlan` holds every value the text needs; `kamailio_cfg`, `dispatcher_list` and
`tls_cfg` render the three files Kamailio reads.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from gateway.sip.digest import DigestCredentials
from gateway.sip.screen import ALLOW, MAX_MEDIA_LINES

# Dispatcher set of the workers.
WORKERS_SET = 1
# What the SIP guard of a worker answers for itself; the edge answers the same.
_LONGEST_ADDRESS = 15  # an IPv4 literal


@dataclass(frozen=True)
class EdgePlan:
    """Everything Kamailio's files say."""

    listen_host: str
    listen_port: int
    run_dir: Path
    workers: tuple[str, ...]  # host:port of every worker, local and on other hosts
    allow_networks: tuple[str, ...]
    public_host: str | None = None
    tls_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    children: int = 4
    max_message_bytes: int = 3500
    requests_per_s_per_source: int = 50
    new_calls_per_s: int = 40
    drain_retry_after_s: int = 30
    worker_answer_timeout_ms: int = 1000
    extra_listen: tuple[str, ...] = field(default_factory=tuple)  # more "proto:host:port"
    # New calls must carry these digest credentials (sip.inbound_auth); None: no challenge.
    inbound_auth: DigestCredentials | None = None
    # Key of the edge's nonces (a fresh random one at each start).
    auth_secret: str = ""

    @property
    def tls(self) -> bool:
        """Whether TLS is served."""
        return self.tls_port is not None and self.tls_cert is not None and self.tls_key is not None

    @property
    def rpc_socket(self) -> Path:
        """Kamailio's JSON-RPC datagram socket."""
        return self.run_dir / "rpc.sock"

    @property
    def cfg_path(self) -> Path:
        """Where the main configuration is written."""
        return self.run_dir / "kamailio.cfg"

    @property
    def uri(self) -> str:
        """The edge's SIP URI as trunks and Plivo's Dial reach it."""
        return f"sip:{self.public_host or self.listen_host}:{self.listen_port}"


def _quoted(text: str) -> str:
    if '"' in text or "\\" in text or "\n" in text:
        raise ValueError(f"cannot quote {text!r} for Kamailio")
    return f'"{text}"'


def _subnets(networks: tuple[str, ...]) -> str:
    """ipops' comma-separated subnet list; IPv4 only (the edge listens on IPv4)."""
    nets = []
    for item in networks:
        net = ipaddress.ip_network(item, strict=False)
        if net.version == 4:
            nets.append(str(net))
    return ",".join(nets)


def _listen(plan: EdgePlan) -> list[str]:
    host = plan.listen_host
    advertise = f" advertise {plan.public_host}:{plan.listen_port}" if plan.public_host else ""
    lines = [
        f"listen=udp:{host}:{plan.listen_port}{advertise}",
        f"listen=tcp:{host}:{plan.listen_port}{advertise}",
    ]
    if plan.tls:
        tls_adv = f" advertise {plan.public_host}:{plan.tls_port}" if plan.public_host else ""
        lines.append(f"listen=tls:{host}:{plan.tls_port}{tls_adv}")
    lines += [f"listen={extra}" for extra in plan.extra_listen]
    return lines


# What a worker must not see in an SDP, as PCRE (multiline: ^ and $ at every line),
# one per line of the regex module's group 0; a body matching any of them is refused.
_IPV4 = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
SDP_REFUSED = (
    r"\nm=[\s\S]*" * MAX_MEDIA_LINES + r"\nm=",  # more than MAX_MEDIA_LINES media lines
    rf"^c=(?!IN IP4 {_IPV4}\r?$)",  # a connection address that is not an IPv4 literal
    rf"^a=rtcp:(?!\d{{1,5}}(\r?$| IN IP4 {_IPV4}\r?$))",  # an odd RTCP port or address
    r"^o=[^\r\n]{200}",  # an over-long origin line
    r"^m=[a-z]+ (?!\d{1,5}(/\d+)? )",  # a media port that is not a number
)


def sdp_regex_file() -> str:
    """The regex module's file: group 0 holds the SDP patterns refused at the edge."""
    return "[0]\n" + "\n".join(SDP_REFUSED) + "\n"


def kamailio_cfg(plan: EdgePlan) -> str:
    """The text of kamailio.cfg for `plan`."""
    allow = _subnets(plan.allow_networks)
    if plan.listen_port <= 0 or not plan.workers:
        raise ValueError("an edge needs a port and at least one worker")
    listen = "\n".join(_listen(plan))
    tls = (
        f'loadmodule "tls.so"\nmodparam("tls", "config", {_quoted(str(plan.run_dir / "tls.cfg"))})'
        if plan.tls
        else ""
    )
    allow_check = (
        f'!is_in_subnet("$si", {_quoted(allow)})' if allow else "1 == 1"
    )  # an empty allow-list lets everyone in, like the workers'
    return _TEMPLATE.format(
        auth_module=_auth_module(plan),
        auth_check="route(AUTH);" if plan.inbound_auth else "",
        auth_route=_auth_route(plan),
        children=plan.children,
        listen=listen,
        enable_tls="yes" if plan.tls else "no",
        tls=tls,
        dispatcher_list=_quoted(str(plan.run_dir / "dispatcher.list")),
        regex_file=_quoted(str(plan.run_dir / "sdp.regex")),
        rpc_socket=_quoted(str(plan.rpc_socket)),
        density=max(1, plan.requests_per_s_per_source * 2),
        new_calls=max(1, plan.new_calls_per_s),
        max_bytes=plan.max_message_bytes,
        allow_check=allow_check,
        allow_methods=ALLOW,
        retry_after=plan.drain_retry_after_s,
        fr_timeout=plan.worker_answer_timeout_ms,
        set=WORKERS_SET,
        max_media=MAX_MEDIA_LINES,
    )


def _auth_module(plan: EdgePlan) -> str:
    if plan.inbound_auth is None:
        return ""
    if len(plan.auth_secret) < 16:
        raise ValueError("the edge's nonce secret must be at least 16 characters")
    # Nonces live 30 s and open one call each (a replayed INVITE is challenged again).
    return "\n".join(
        (
            'loadmodule "auth.so"',
            f'modparam("auth", "secret", {_quoted(plan.auth_secret)})',
            'modparam("auth", "nonce_expire", 30)',
            'modparam("auth", "one_time_nonce", 1)',
        )
    )


def _auth_route(plan: EdgePlan) -> str:
    """route[AUTH]: a new call without the right digest gets 407 and goes nowhere."""
    creds = plan.inbound_auth
    if creds is None:
        return ""
    realm, user, password = _quoted(creds.realm), _quoted(creds.username), _quoted(creds.password)
    return _AUTH_ROUTE.format(realm=realm, user=user, password=password)


# pv_proxy_authenticate's results (Kamailio auth module): 1 ok, -2 wrong password, -3 wrong
# user, -4 nonce expired, -5 no credentials, -6 nonce used before, -8 auth user mismatch.
_AUTH_ROUTE = """
route[AUTH] {{
    pv_proxy_authenticate({realm}, {password}, "0");
    $var(auth) = $rc;
    if ($var(auth) == 1 && $au == {user}) {{
        consume_credentials();
        return;
    }}
    if ($var(auth) == 1 || $var(auth) == -2 || $var(auth) == -3 || $var(auth) == -8) {{
        xlog("L_WARN", "EDGE|refuse|407|INVITE from $si:$sp: wrong credentials for $au\\n");
    }}
    proxy_challenge({realm}, "1");
    exit;
}}
"""


def dispatcher_list(plan: EdgePlan) -> str:
    """The dispatcher list: every worker in one set, in order."""
    lines = ["# setid destination flags priority attributes"]
    for i, worker in enumerate(plan.workers):
        lines.append(f"{WORKERS_SET} sip:{worker} 0 0 duid=w{i}")
    return "\n".join(lines) + "\n"


def tls_cfg(plan: EdgePlan) -> str:
    """tls.cfg: the edge's certificate; clients are not asked for one."""
    if not plan.tls:
        return ""
    assert plan.tls_cert is not None and plan.tls_key is not None
    return _TLS_TEMPLATE.format(cert=plan.tls_cert, key=plan.tls_key)


_TLS_TEMPLATE = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = {cert}
private_key = {key}

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
"""

# The script. Doubled braces are literal braces of Kamailio's language.
_TEMPLATE = """#!KAMAILIO
# Generated by `sipagent serve` from its settings at every start: do not edit.
# Log level: notices, warnings and errors (the script's refusals are warnings).
debug=1
log_stderror=yes
children={children}
tcp_children={children}
auto_aliases=no
mhomed=1
server_signature=no
sip_warning=0
user_agent_header="User-Agent: -"
tcp_accept_no_cl=yes
tcp_connection_lifetime=3605
enable_tls={enable_tls}
{listen}

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "ipops.so"
loadmodule "regex.so"
loadmodule "htable.so"
loadmodule "pike.so"
loadmodule "pipelimit.so"
loadmodule "dispatcher.so"
loadmodule "jsonrpcs.so"
{tls}
{auth_module}

modparam("regex", "file", {regex_file})
modparam("regex", "pcre_multiline", 1)
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", {rpc_socket})
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 1)
modparam("tm", "fr_timer", 5000)
modparam("tm", "fr_inv_timer", 120000)
modparam("tm", "reparse_on_dns_failover", 0)
modparam("htable", "htable", "edge=>size=4;")
# A source sending more than the density in two seconds is dropped until it slows down.
modparam("pike", "sampling_time_unit", 2)
modparam("pike", "reqs_density_per_unit", {density})
modparam("pike", "remove_latency", 4)
modparam("pipelimit", "timer_interval", 1)
modparam("pipelimit", "reply_code", 503)
modparam("pipelimit", "reply_reason", "Service Unavailable")
modparam("dispatcher", "list_file", {dispatcher_list})
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "ds_ping_interval", 1)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_probing_threshold", 1)
modparam("dispatcher", "ds_inactive_threshold", 1)
modparam("dispatcher", "ds_ping_reply_codes", "class=2")
modparam("dispatcher", "ds_ping_from", "sip:edge@localhost")

request_route {{
    if ($ml > {max_bytes}) {{
        xlog("L_WARN", "EDGE|drop|oversized|$ml bytes from $si:$sp\\n");
        exit;
    }}
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (!sanity_check()) {{
        xlog("L_WARN", "EDGE|drop|malformed|$rm from $si:$sp\\n");
        exit;
    }}
    if (ds_is_from_list("{set}")) {{
        route(FROM_WORKER);
        exit;
    }}
    if ({allow_check}) {{
        if (!is_method("ACK")) {{
            xlog("L_WARN", "EDGE|refuse|403|$rm from $si:$sp: source not in sip.allow_networks\\n");
            sl_send_reply("403", "Forbidden");
        }}
        exit;
    }}
    if (!pike_check_req()) {{
        xlog("L_WARN", "EDGE|drop|flood|$rm from $si:$sp\\n");
        exit;
    }}
    if (has_totag()) {{
        route(IN_DIALOG);
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("ACK")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();
    if (is_method("OPTIONS")) {{
        if ($sht(edge=>draining) == 1) {{
            append_to_reply("Retry-After: {retry_after}\\r\\n");
            sl_send_reply("503", "Service Unavailable");
        }} else {{
            append_to_reply("Allow: {allow_methods}\\r\\n");
            sl_send_reply("200", "OK");
        }}
        exit;
    }}
    if (!is_method("INVITE")) {{
        route(NOT_A_CALL);
        exit;
    }}
    route(SDP);
    if ($var(sdp_bad) == 1) {{
        sl_send_reply("488", "Not Acceptable Here");
        exit;
    }}
    if ($sht(edge=>draining) == 1) {{
        append_to_reply("Retry-After: {retry_after}\\r\\n");
        sl_send_reply("503", "Service Unavailable");
        exit;
    }}
    {auth_check}
    if (!pl_check("invites", "TAILDROP", {new_calls})) {{
        append_to_reply("Retry-After: 1\\r\\n");
        xlog("L_WARN", "EDGE|refuse|503|INVITE from $si:$sp: pool-wide new-call limit\\n");
        sl_send_reply("503", "Service Unavailable");
        exit;
    }}
    record_route();
    if (!ds_select_dst("{set}", "4")) {{
        xlog("L_WARN", "EDGE|refuse|486|INVITE from $si:$sp: no worker is up\\n");
        sl_send_reply("486", "Busy Here");
        exit;
    }}
    route(TO_WORKER);
}}

{auth_route}
route[TO_WORKER] {{
    xlog("L_INFO", "EDGE|route|$ci|$du\\n");
    t_set_fr(0, {fr_timeout});
    t_on_failure("NEXT_WORKER");
    if (!t_relay()) {{
        sl_reply_error();
    }}
}}

failure_route[NEXT_WORKER] {{
    if (t_is_canceled()) {{
        exit;
    }}
    if (t_branch_timeout() && !t_branch_replied()) {{
        xlog("L_WARN", "EDGE|worker|down|$du did not answer\\n");
        ds_mark_dst("ip");
    }} else if (!t_check_status("486|503|500|408")) {{
        exit;
    }}
    if (ds_next_dst()) {{
        route(TO_WORKER);
        exit;
    }}
    xlog("L_WARN", "EDGE|refuse|486|INVITE $ci: every worker is busy\\n");
    t_reply("486", "Busy Here");
}}

route[IN_DIALOG] {{
    if (is_method("INVITE|UPDATE|PRACK|ACK")) {{
        route(SDP);
        if ($var(sdp_bad) == 1) {{
            if (!is_method("ACK")) {{
                sl_send_reply("488", "Not Acceptable Here");
            }}
            exit;
        }}
    }}
    if (loose_route()) {{
        if (is_method("INVITE")) {{
            record_route();
        }}
        t_relay();
        exit;
    }}
    if (is_method("ACK") && t_check_trans()) {{
        t_relay();
        exit;
    }}
    # A peer that ignored the Record-Route still names a worker in the Request-URI.
    if (ds_is_from_list("{set}", "2", "$ru")) {{
        t_relay();
        exit;
    }}
    if (!is_method("ACK")) {{
        sl_send_reply("481", "Call/Transaction Does Not Exist");
    }}
}}

route[NOT_A_CALL] {{
    if (!is_method("REGISTER|MESSAGE|SUBSCRIBE|PUBLISH|REFER|NOTIFY|BYE|INFO|UPDATE|PRACK")) {{
        sl_send_reply("501", "Not Implemented");
        exit;
    }}
    if (is_method("BYE|INFO|UPDATE|PRACK")) {{
        sl_send_reply("481", "Call/Transaction Does Not Exist");
        exit;
    }}
    append_to_reply("Allow: {allow_methods}\\r\\n");
    sl_send_reply("405", "Method Not Allowed");
}}

# A worker's own request: in a dialog, along its route set; a new call (outbound, the
# human's leg of a warm transfer, a REFER's call), out to its Request-URI.
route[FROM_WORKER] {{
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();
    if (is_method("INVITE")) {{
        record_route();
    }}
    remove_hf("Route");
    t_on_reply("FROM_OUTSIDE");
    if (!t_relay()) {{
        sl_reply_error();
    }}
}}

# An answer from the outside to a worker's call: an SDP a worker must not see is dropped
# (the call then fails as if the answer was lost).
onreply_route[FROM_OUTSIDE] {{
    route(SDP);
    if ($var(sdp_bad) == 1) {{
        xlog("L_WARN", "EDGE|drop|sdp|$rs reply from $si:$sp\\n");
        drop;
    }}
}}

# Sets $var(sdp_bad) to 1 when the body holds an SDP a worker must not see: more than
# {max_media} media lines, a connection or RTCP address that is not an IPv4 literal, an
# over-long origin line, a media port that is not a number.
route[SDP] {{
    $var(sdp_bad) = 0;
    if (!has_body()) {{
        return;
    }}
    if (pcre_match_group("$rb", "0")) {{
        xlog("L_WARN", "EDGE|refuse|488|$rm from $si:$sp: SDP a worker must not take\\n");
        $var(sdp_bad) = 1;
    }}
}}
"""
