"""Isolation as one nftables table, `inet tether_isolation`, replaced and removed whole.

The table has its own input, output and forward base chains with policy drop. A packet must be
accepted by every base chain on its hook, so this table only ever narrows what the host's own
firewall allows, and dropping its table gives that firewall back untouched.

Connection tracking decides what "inbound" means: a connection whose first packet came in has
its packets travel in conntrack's *original* direction on input and its answers in the *reply*
direction on output. Outbound mode allows exactly that pair, so an investigator's SSH session
works while a connection this host opened to anywhere but the platform (a C2 channel opened
before isolation included) is cut both ways.
"""

import ipaddress
from collections.abc import Iterable

from tether.agent.errors import IsolationFailed
from tether.agent.isolation.backend import first_error_line, run_command
from tether.agent.isolation.policy import (
    DHCP4_CLIENT,
    DHCP4_SERVER,
    DHCP6_CLIENT,
    DHCP6_SERVER,
    IPAddress,
    IsolationPolicy,
)
from tether.protocol.isolation import AllowRule, Backend

FAMILY = "inet"
TABLE = "tether_isolation"

# Neighbour discovery (and the MLD reports that join its multicast groups) is how IPv6 finds
# the router and the platform on the link; without it IPv6 dies within a minute.
ND_IN = "nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect"
ND_OUT = (
    "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, "
    "mld-listener-report, mld2-listener-report"
)


def _set(items: Iterable[object]) -> str:
    values = [str(item) for item in items]
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _family(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return "ip" if network.version == 4 else "ip6"


def _platform_rules(addresses: tuple[IPAddress, ...], port: int, inbound: bool) -> list[str]:
    rules = []
    for family in ("ip", "ip6"):
        chosen = [a for a in addresses if (a.version == 4) == (family == "ip")]
        if not chosen:
            continue
        if inbound:
            # The agent is always the client: the platform answers from its port.
            rules.append(f"{family} saddr {_set(chosen)} tcp sport {port} accept")
            # ICMP errors about the platform connection (path MTU above all, which IPv6
            # depends on) come from routers on the way, not from the platform itself.
            rules.append(f"ct state related ct original {family} daddr {_set(chosen)} accept")
        else:
            rules.append(f"{family} daddr {_set(chosen)} tcp dport {port} accept")
    return rules


def _allow_rules(allow: tuple[AllowRule, ...], direction: str) -> list[str]:
    """Allowlist rules for one chain: "input", "output" or "forward".

    An entry's ports are service ports: traffic to them on the listed network (outbound
    connections) and to them on this host from that network (inbound ones) both pass, with
    answers. Stateless on purpose, so connections already open when isolation begins keep
    working whichever side conntrack thinks opened them.
    """
    rules = []
    for entry in allow:
        network = entry.network()
        family = _family(network)
        # input: the network is the source; output: the destination; forward: either.
        sides = {"input": ("saddr",), "output": ("daddr",), "forward": ("saddr", "daddr")}[
            direction
        ]
        for side in sides:
            match = f"{family} {side} {network}"
            if not entry.ports:
                rules.append(f"{match} accept")
                continue
            ports = _set(entry.ports)
            # Their service (we connect to it) or ours (they connect to us).
            remote, local = ("sport", "dport") if side == "saddr" else ("dport", "sport")
            for port_side in (remote, local):
                rules.append(f"{match} meta l4proto {{ tcp, udp }} th {port_side} {ports} accept")
    return rules


def ruleset(policy: IsolationPolicy) -> str:
    """The table for `policy`, as `nft -f` reads it (the table block only)."""
    inbound_extra: list[str] = []
    outbound_extra: list[str] = []
    forward_extra: list[str] = []
    if policy.inbound_open:
        inbound_extra = [
            "ct state invalid drop",
            # A TCP packet that opens a conntrack entry without being a SYN belongs to a
            # connection that was running before tracking began (conntrack picks it up
            # mid-stream, in whichever direction the next packet happens to go): who opened
            # it is unknown, so it is never taken for an inbound one. New inbound connections
            # start with a SYN and are tracked from it.
            "ct state new tcp flags & (fin | syn | rst | ack) != syn drop",
            "ct direction original accept",
        ]
        outbound_extra = ["ct direction reply accept"]
        # Ports a container publishes arrive through DNAT: inbound, with their replies.
        forward_extra = ["ct status dnat accept"]
    chains = {
        "input": [
            'iif "lo" accept',
            f"icmpv6 type {{ {ND_IN} }} accept",
            *_platform_rules(policy.platform, policy.platform_port, inbound=True),
            f"udp sport {DHCP4_SERVER} udp dport {DHCP4_CLIENT} accept",
            f"udp sport {DHCP6_SERVER} udp dport {DHCP6_CLIENT} accept",
            *_allow_rules(policy.allow, "input"),
            *inbound_extra,
        ],
        "output": [
            'oif "lo" accept',
            f"icmpv6 type {{ {ND_OUT} }} accept",
            *_platform_rules(policy.platform, policy.platform_port, inbound=False),
            f"udp sport {DHCP4_CLIENT} udp dport {DHCP4_SERVER} accept",
            f"udp sport {DHCP6_CLIENT} udp dport {DHCP6_SERVER} accept",
            *_allow_rules(policy.allow, "output"),
            *outbound_extra,
        ],
        # Containers and VMs on the host route through here; without this chain they would
        # keep the network the host lost. Only the allowlist (and, in outbound mode,
        # published ports) passes; the platform is the agent's business, not theirs.
        "forward": [*_allow_rules(policy.allow, "forward"), *forward_extra],
    }
    lines = [f"table {FAMILY} {TABLE} {{"]
    for name, rules in chains.items():
        lines.append(f"\tchain {name} {{")
        lines.append(f"\t\ttype filter hook {name} priority filter; policy drop;")
        lines.extend(f"\t\t{rule}" for rule in rules)
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def replace_script(policy: IsolationPolicy) -> str:
    """One nft transaction that replaces the table, whether or not it exists.

    Declaring the empty table first makes the delete valid when there was none; nft applies a
    whole file atomically, so the host never runs with no rules or half of them.
    """
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{ruleset(policy)}"


REMOVE_SCRIPT = f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


class NftablesBackend:
    """Isolation as the nftables table `inet tether_isolation`."""

    name: Backend = "nftables"

    def __init__(self, nft: str = "nft") -> None:
        self._nft = nft

    async def _run_script(self, script: str, doing: str) -> None:
        result = await run_command([self._nft, "-f", "-"], stdin=script)
        if result.returncode != 0:
            raise IsolationFailed(f"nft refused to {doing}: {first_error_line(result.stderr)}.")

    async def apply(self, policy: IsolationPolicy) -> None:
        await self._run_script(replace_script(policy), "apply the isolation rules")

    async def remove(self) -> None:
        await self._run_script(REMOVE_SCRIPT, "remove the isolation rules")

    async def installed(self) -> bool:
        result = await run_command([self._nft, "list", "tables", FAMILY])
        if result.returncode != 0:
            raise IsolationFailed(
                f"nft could not list the firewall tables: {first_error_line(result.stderr)}."
            )
        return f"table {FAMILY} {TABLE}" in result.stdout.splitlines()

    async def listing(self) -> str | None:
        if not await self.installed():
            return None
        # No counters in these rules, so the listing changes only when the rules do.
        result = await run_command([self._nft, "list", "table", FAMILY, TABLE])
        if result.returncode != 0:
            raise IsolationFailed(
                f"nft could not list the isolation rules: {first_error_line(result.stderr)}."
            )
        return result.stdout
