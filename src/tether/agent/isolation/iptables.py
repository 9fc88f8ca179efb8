"""Isolation as iptables chains, for endpoints without the `nft` tool.

Three chains of the filter table, `TETHER-ISO-IN`, `-OUT` and `-FWD`, hold the same rules as the
nftables table (see `nftables` for why each rule is there) and end in DROP; INPUT, OUTPUT and
FORWARD jump to them first. They are written with `iptables-restore --noflush`, which replaces a
declared chain's contents in one commit per table and leaves every other rule of the host alone,
and removed whole (jump, flush, delete chain) the same way.

Limits against nftables (docs/adr/0017): IPv4 and IPv6 are two commits, so for a moment one family
can hold the new rules and the other the old; an allowlist entry with more than 15 ports becomes
several rules, as the multiport match takes at most 15.
"""

from dataclasses import dataclass

from tether.agent.errors import IsolationFailed
from tether.agent.isolation.backend import first_error_line, run_command
from tether.agent.isolation.policy import (
    DHCP4_CLIENT,
    DHCP4_SERVER,
    DHCP6_CLIENT,
    DHCP6_SERVER,
    IsolationPolicy,
)
from tether.protocol.isolation import AllowRule, Backend

CHAINS = {"INPUT": "TETHER-ISO-IN", "OUTPUT": "TETHER-ISO-OUT", "FORWARD": "TETHER-ISO-FWD"}
IN, OUT, FWD = CHAINS["INPUT"], CHAINS["OUTPUT"], CHAINS["FORWARD"]
MULTIPORT_MAX = 15
# ICMPv6 types by number (names differ between iptables versions): router solicitation and
# advertisement, neighbour solicitation and advertisement, redirect, MLD reports.
ND_IN_TYPES = (134, 135, 136, 137)
ND_OUT_TYPES = (133, 135, 136, 131, 143)


@dataclass(frozen=True)
class Tools:
    """The restore and save commands of one address family."""

    restore: str
    save: str


IPV4 = Tools("iptables-restore", "iptables-save")
IPV6 = Tools("ip6tables-restore", "ip6tables-save")
LEGACY_IPV4 = Tools("iptables-legacy-restore", "iptables-legacy-save")
LEGACY_IPV6 = Tools("ip6tables-legacy-restore", "ip6tables-legacy-save")


def _port_groups(ports: tuple[int, ...]) -> list[str]:
    return [
        ",".join(str(p) for p in ports[i : i + MULTIPORT_MAX])
        for i in range(0, len(ports), MULTIPORT_MAX)
    ]


def _allow_rules(allow: tuple[AllowRule, ...], version: int) -> list[str]:
    """The allowlist for one family, as `-A CHAIN ...` lines (same shape as nftables)."""
    rules = []
    for entry in allow:
        network = entry.network()
        if network.version != version:
            continue
        for chain, sides in ((IN, ("-s",)), (OUT, ("-d",)), (FWD, ("-s", "-d"))):
            for side in sides:
                if not entry.ports:
                    rules.append(f"-A {chain} {side} {network} -j ACCEPT")
                    continue
                remote, local = (
                    ("--sports", "--dports") if side == "-s" else ("--dports", "--sports")
                )
                for proto in ("tcp", "udp"):
                    for port_side in (remote, local):
                        for group in _port_groups(entry.ports):
                            rules.append(
                                f"-A {chain} {side} {network} -p {proto} -m multiport "
                                f"{port_side} {group} -j ACCEPT"
                            )
    return rules


def chain_rules(policy: IsolationPolicy, version: int) -> list[str]:
    """The `-A` lines of the three chains for one family (4 or 6), final DROPs included."""
    platform = policy.platform_v4 if version == 4 else policy.platform_v6
    port = policy.platform_port
    host = "/32" if version == 4 else "/128"
    rules = [f"-A {IN} -i lo -j ACCEPT", f"-A {OUT} -o lo -j ACCEPT"]
    if version == 6:
        rules += [f"-A {IN} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in ND_IN_TYPES]
        rules += [
            f"-A {OUT} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in ND_OUT_TYPES
        ]
    for address in platform:
        rules.append(f"-A {IN} -s {address}{host} -p tcp -m tcp --sport {port} -j ACCEPT")
        rules.append(
            f"-A {IN} -m conntrack --ctstate RELATED --ctorigdst {address}{host} -j ACCEPT"
        )
        rules.append(f"-A {OUT} -d {address}{host} -p tcp -m tcp --dport {port} -j ACCEPT")
    client, server = (DHCP4_CLIENT, DHCP4_SERVER) if version == 4 else (DHCP6_CLIENT, DHCP6_SERVER)
    rules.append(f"-A {IN} -p udp -m udp --sport {server} --dport {client} -j ACCEPT")
    rules.append(f"-A {OUT} -p udp -m udp --sport {client} --dport {server} -j ACCEPT")
    rules += _allow_rules(policy.allow, version)
    if policy.inbound_open:
        rules += [
            f"-A {IN} -m conntrack --ctstate INVALID -j DROP",
            # Mid-stream pickups: see the nftables module.
            f"-A {IN} -p tcp ! --syn -m conntrack --ctstate NEW -j DROP",
            f"-A {IN} -m conntrack --ctdir ORIGINAL -j ACCEPT",
            f"-A {OUT} -m conntrack --ctdir REPLY -j ACCEPT",
            f"-A {FWD} -m conntrack --ctstate DNAT -j ACCEPT",
        ]
    rules += [f"-A {chain} -j DROP" for chain in (IN, OUT, FWD)]
    return rules


@dataclass(frozen=True)
class Saved:
    """What iptables-save shows of the isolation in one family's filter table."""

    chains: frozenset[str] = frozenset()  # our chains that exist
    jumps: frozenset[str] = frozenset()  # our chains a built-in chain jumps to
    leading: frozenset[str] = frozenset()  # ... with that jump as its first rule
    lines: tuple[str, ...] = ()  # our chains' declarations and rules, and the jumps' places

    def listing(self) -> str:
        return "\n".join(self.lines)


def apply_script(policy: IsolationPolicy, version: int, saved: Saved = Saved()) -> str:
    """iptables-restore --noflush input that replaces the chains' contents in one commit.

    Declaring a chain that exists flushes it. Each jump ends up as the first rule of its
    built-in chain, where nothing inserted before it can accept around isolation, and only
    once: a missing jump is inserted, one further down is moved up.
    """
    lines = ["*filter", *(f":{chain} - [0:0]" for chain in CHAINS.values())]
    lines += chain_rules(policy, version)
    for builtin, chain in CHAINS.items():
        if chain in saved.leading:
            continue
        if chain in saved.jumps:
            lines.append(f"-D {builtin} -j {chain}")
        lines.append(f"-I {builtin} 1 -j {chain}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def remove_script(saved: Saved) -> str | None:
    """iptables-restore --noflush input that removes what exists of the chains; None: nothing."""
    lines = ["*filter"]
    for builtin, chain in CHAINS.items():
        if chain in saved.jumps:
            lines.append(f"-D {builtin} -j {chain}")
    for chain in CHAINS.values():
        if chain in saved.chains:
            lines += [f"-F {chain}", f"-X {chain}"]
    if len(lines) == 1:
        return None
    return "\n".join([*lines, "COMMIT"]) + "\n"


def parse_save(text: str) -> Saved:
    """From iptables-save output of the filter table: what of the isolation is there."""
    chains: set[str] = set()
    jumps: set[str] = set()
    leading: set[str] = set()
    lines: list[str] = []
    seen_rule: set[str] = set()  # built-in chains whose first rule has gone by
    ours = tuple(CHAINS.values())
    for line in text.splitlines():
        for builtin, chain in CHAINS.items():
            if line == f"-A {builtin} -j {chain}":
                jumps.add(chain)
                if builtin not in seen_rule:
                    leading.add(chain)
                lines.append(f"{line} (first: {builtin not in seen_rule})")
            if line.startswith(f"-A {builtin} "):
                seen_rule.add(builtin)
        if line.startswith(tuple(f":{chain} " for chain in ours)):
            chains.add(line.split()[0][1:])
            lines.append(line)
        elif line.startswith(tuple(f"-A {chain} " for chain in ours)):
            lines.append(line)
    return Saved(frozenset(chains), frozenset(jumps), frozenset(leading), tuple(lines))


class IptablesBackend:
    """Isolation as chains of the iptables filter table, IPv4 and IPv6."""

    name: Backend = "iptables"

    def __init__(self, ipv4: Tools = IPV4, ipv6: Tools = IPV6) -> None:
        self._families = ((4, ipv4), (6, ipv6))

    async def _present(self, tools: Tools) -> Saved:
        result = await run_command([tools.save, "-t", "filter"])
        if result.returncode != 0:
            raise IsolationFailed(
                f"{tools.save} could not read the firewall: {first_error_line(result.stderr)}."
            )
        return parse_save(result.stdout)

    async def _restore(self, tools: Tools, script: str, doing: str) -> None:
        result = await run_command([tools.restore, "-w", "--noflush"], stdin=script)
        if result.returncode != 0:
            raise IsolationFailed(
                f"{tools.restore} refused to {doing}: {first_error_line(result.stderr)}."
            )

    async def apply(self, policy: IsolationPolicy) -> None:
        for version, tools in self._families:
            saved = await self._present(tools)
            await self._restore(
                tools, apply_script(policy, version, saved), "apply the isolation rules"
            )

    async def remove(self) -> None:
        for _version, tools in self._families:
            script = remove_script(await self._present(tools))
            if script is not None:
                await self._restore(tools, script, "remove the isolation rules")

    async def installed(self) -> bool:
        return await self.listing() is not None

    async def listing(self) -> str | None:
        parts = []
        for version, tools in self._families:
            saved = await self._present(tools)
            if saved.chains:
                parts.append(f"IPv{version}\n{saved.listing()}")
        return "\n".join(parts) if parts else None
