"""Isolation as Windows Firewall block rules in the group "Tether Isolation".

Windows Firewall lets a block rule beat every allow rule, so isolation is block rules only, and
it leaves the host's own rules and profiles alone. What must stay reachable (the platform on its
port, the allowlist, loopback) is cut out of the address space; the rules block TCP, UDP, ICMPv4
and ICMPv6 to what is left:

- the address space is split into ranges that each allow one set of ports (or everything), so
  overlapping allowlist entries add up instead of blocking each other's ports;
- per protocol, one rule per distinct set of allowed ports: RemoteAddress the ranges, RemotePort
  (LocalPort for inbound) the complement of the ports;
- UDP between the DHCP client and server ports (68 and 67, 546 and 547) is never blocked, so
  the lease renews, and nothing else: from the client ports to any other port is blocked like
  all UDP (as on Linux); the ICMP types of neighbour discovery and path MTU discovery are never
  blocked.

Outbound mode blocks outbound only: Windows Firewall is stateful, so replies to inbound
connections are part of an allowed flow. Full mode adds the same shape inbound (without the
platform, whose traffic is replies to the agent's own connection).

The scripts run with Windows PowerShell by its full path (`-File`, from a file in the agent's
state directory) and fail loudly (docs/adr/0041): every NetSecurity cmdlet carries
`-ErrorAction Stop`, because those CDXML functions do not honour the script's
`$ErrorActionPreference`; the only error taken as "no rules" is the group's ObjectNotFound; the
script exits 1 on any error. Applying ends with an enforcement check read from the ActiveStore
(every profile on, local rules merged, no interface excluded, every new rule in force), and the
rules count as isolation only when it passes (tether.agent.isolation.enforcement).

Nothing here has run on Windows (docs/adr/0017): the commands are generated and unit-tested,
and a stand-in PowerShell checks how failures travel.
"""

import ipaddress
import itertools
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tether.agent.errors import IsolationFailed
from tether.agent.isolation.backend import first_error_line, run_command
from tether.agent.isolation.enforcement import ENFORCEMENT_MARKER, enforcement_problem
from tether.agent.isolation.policy import (
    DHCP4_CLIENT,
    DHCP4_SERVER,
    DHCP6_CLIENT,
    DHCP6_SERVER,
    IsolationPolicy,
)
from tether.agent.windows_tools import powershell_path
from tether.protocol.isolation import Backend

log = logging.getLogger("tether.agent.isolation")

GROUP = "Tether Isolation"
NAME_PREFIX = "TetherIsolation"
ANY = None  # an address range where every protocol and port is allowed
DHCP_CLIENT_PORTS = frozenset({DHCP4_CLIENT, DHCP6_CLIENT})
# Each client port talks to its server port only (the Linux backends allow the same pairs).
DHCP_PAIRS = ((DHCP4_CLIENT, DHCP4_SERVER), (DHCP6_CLIENT, DHCP6_SERVER))
# ICMP types never blocked: IPv4 destination unreachable (path MTU discovery needs "fragmentation
# needed"); IPv6 packet too big, MLD reports, router and neighbour discovery. Neighbour discovery
# also runs between global addresses (unreachability probes), so it is exempt by type, not by
# address. Every other type is blocked to the blocked addresses.
ICMPV4_EXEMPT = frozenset({3})
ICMPV6_EXEMPT = frozenset({2, 131, 133, 134, 135, 136, 137, 143})
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

Ports = frozenset[int]


@dataclass(frozen=True)
class Allowed:
    """What one entry lets through: every protocol (`tcp` ANY) or these TCP and UDP ports."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    tcp: Ports | None
    udp: Ports | None


@dataclass(frozen=True)
class Span:
    """A range of addresses [first, last] of one family and what it allows."""

    version: int
    first: int
    last: int
    tcp: Ports | None
    udp: Ports | None

    def text(self) -> str:
        make = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        first, last = make(self.first), make(self.last)
        return str(first) if self.first == self.last else f"{first}-{last}"


def spans(entries: Sequence[Allowed]) -> list[Span]:
    """Both address spaces cut into ranges, each with the union of what its entries allow."""
    result: list[Span] = []
    for version, top in ((4, 2**32), (6, 2**128)):
        mine = [e for e in entries if e.network.version == version]
        cuts = {0, top}
        for entry in mine:
            cuts.add(int(entry.network.network_address))
            cuts.add(int(entry.network.broadcast_address) + 1)
        ordered = sorted(cuts)
        for first, after in itertools.pairwise(ordered):
            covering = [
                e
                for e in mine
                if int(e.network.network_address) <= first <= int(e.network.broadcast_address)
            ]
            tcp: Ports | None = frozenset()
            udp: Ports | None = frozenset()
            for entry in covering:
                tcp = None if tcp is None or entry.tcp is None else tcp | entry.tcp
                udp = None if udp is None or entry.udp is None else udp | entry.udp
            span = Span(version, first, after - 1, tcp, udp)
            # Neighbouring ranges that allow the same merge, to keep the rules short.
            if (
                result
                and result[-1].version == version
                and result[-1].last + 1 == first
                and (
                    result[-1].tcp,
                    result[-1].udp,
                )
                == (tcp, udp)
            ):
                span = Span(version, result[-1].first, after - 1, tcp, udp)
                result[-1] = span
            else:
                result.append(span)
    return result


def port_ranges_except(allowed: Iterable[int]) -> list[str]:
    """Ports 1-65535 without `allowed`, as Windows Firewall port ranges."""
    ranges = []
    start = 1
    for port in sorted(set(allowed)):
        if port > start:
            ranges.append(f"{start}-{port - 1}" if port - 1 > start else str(start))
        start = port + 1
    if start <= 65535:
        ranges.append(f"{start}-65535" if start < 65535 else "65535")
    return ranges


def _quoted(values: Iterable[str]) -> str:
    return ",".join("'" + value.replace("'", "''") + "'" for value in values)


@dataclass(frozen=True)
class BlockRule:
    """One New-NetFirewallRule with action Block."""

    direction: str  # "Outbound" or "Inbound"
    protocol: str  # "TCP", "UDP", "ICMPv4", "ICMPv6"
    addresses: tuple[str, ...]
    remote_ports: tuple[str, ...] = ()
    local_ports: tuple[str, ...] = ()
    icmp_types: tuple[str, ...] = ()

    def command(self, name: str) -> str:
        parts = [
            "New-NetFirewallRule",
            f"-Name '{name}'",
            f"-DisplayName 'Tether isolation: block {self.direction.lower()} {self.protocol}'",
            f"-Group '{GROUP}'",
            f"-Direction {self.direction}",
            "-Action Block",
            f"-Protocol {self.protocol}",
            f"-RemoteAddress {_quoted(self.addresses)}",
        ]
        if self.remote_ports:
            parts.append(f"-RemotePort {_quoted(self.remote_ports)}")
        if self.local_ports:
            parts.append(f"-LocalPort {_quoted(self.local_ports)}")
        if self.icmp_types:
            parts.append(f"-IcmpType {_quoted(self.icmp_types)}")
        # -ErrorAction Stop: a rejected rule must stop the script (see the module docstring).
        parts += ["-Profile Any", "-Enabled True", "-ErrorAction Stop", "| Out-Null"]
        return " ".join(parts)


def _entries(policy: IsolationPolicy, inbound: bool) -> list[Allowed]:
    entries = [Allowed(network, ANY, ANY) for network in LOOPBACK]
    if not inbound:
        entries += [
            Allowed(ipaddress.ip_network(address), frozenset({policy.platform_port}), frozenset())
            for address in policy.platform
        ]
    for rule in policy.allow:
        ports = frozenset(rule.ports) if rule.ports else ANY
        entries.append(Allowed(rule.network(), ports, ports))
    return entries


def _port_rules(direction: str, protocol: str, blocked: list[Span], attr: str) -> list[BlockRule]:
    inbound = direction == "Inbound"
    groups: dict[Ports, list[str]] = {}
    for span in blocked:
        ports = getattr(span, attr)
        if ports is not ANY:
            groups.setdefault(ports, []).append(span.text())
    rules = []
    for ports, addresses in sorted(groups.items(), key=lambda item: sorted(item[0])):
        exempt = ports | DHCP_CLIENT_PORTS if (protocol == "UDP" and inbound) else ports
        service = tuple(port_ranges_except(exempt)) if exempt else ()
        remote, local = ((), service) if inbound else (service, ())
        if protocol == "UDP" and not inbound:
            # The DHCP client's own port: its renewals go out from it.
            local = tuple(port_ranges_except(DHCP_CLIENT_PORTS))
        rules.append(BlockRule(direction, protocol, tuple(addresses), remote, local))
        if protocol == "UDP":
            rules += _dhcp_rules(direction, tuple(addresses), ports)
    return rules


def _dhcp_rules(direction: str, addresses: tuple[str, ...], ports: Ports) -> list[BlockRule]:
    """What the DHCP client ports may not do: reach (or be reached from) anything but their
    server port. The main UDP rule leaves the client ports out, so these block the rest."""
    rules = []
    for client, server in DHCP_PAIRS:
        if direction == "Inbound" and client in ports:
            continue  # the allowlist opened the client port itself: nothing to narrow
        # Outbound, an allowed remote port stays allowed from the client port too.
        spared = {server} | (set(ports) if direction == "Outbound" else set())
        rules.append(
            BlockRule(
                direction,
                "UDP",
                addresses,
                remote_ports=tuple(port_ranges_except(spared)),
                local_ports=(str(client),),
            )
        )
    return rules


def block_rules(policy: IsolationPolicy) -> list[BlockRule]:
    """Every block rule for `policy`, in the order they are created."""
    rules: list[BlockRule] = []
    directions = ["Outbound"] if policy.inbound_open else ["Outbound", "Inbound"]
    for direction in directions:
        entries = _entries(policy, inbound=direction == "Inbound")
        cut = spans(entries)
        rules += _port_rules(direction, "TCP", cut, "tcp")
        rules += _port_rules(direction, "UDP", cut, "udp")
        for version, protocol, exempt in (
            (4, "ICMPv4", ICMPV4_EXEMPT),
            (6, "ICMPv6", ICMPV6_EXEMPT),
        ):
            blocked = [s.text() for s in cut if s.version == version and s.tcp is not ANY]
            if blocked:
                types = tuple(str(t) for t in range(256) if t not in exempt)
                rules.append(BlockRule(direction, protocol, tuple(blocked), icmp_types=types))
    return rules


# The one error that means "no rule in the group": anything else (the firewall service stopped,
# access denied, a broken WMI provider) stops the script instead of reading as zero rules.
_GROUP_RULES = f"""function Get-TetherRules([string]$Store = 'PersistentStore') {{
    try {{
        @(Get-NetFirewallRule -PolicyStore $Store -Group '{GROUP}' -ErrorAction Stop)
    }} catch {{
        if ($_.CategoryInfo.Category -eq 'ObjectNotFound') {{ @() }} else {{ throw }}
    }}
}}"""

# What is enforced, read from the ActiveStore (local rules merged with Group Policy's), as one
# line of JSON after a marker. Enum values are turned into their names: ConvertTo-Json on
# Windows PowerShell 5.1 would write their numbers.
_ENFORCEMENT = [
    "$profiles = @(Get-NetFirewallProfile -PolicyStore ActiveStore -ErrorAction Stop | "
    'ForEach-Object { [pscustomobject]@{ name = "$($_.Name)"; enabled = "$($_.Enabled)"; '
    'outbound = "$($_.DefaultOutboundAction)"; local = "$($_.AllowLocalFirewallRules)"; '
    'excluded = @($_.DisabledInterfaceAliases | ForEach-Object { "$_" }) } })',
    "$active = @(Get-TetherRules 'ActiveStore' | "
    "Where-Object { \"$($_.Enabled)\" -eq 'True' -and \"$($_.Action)\" -eq 'Block' })",
    f"'{ENFORCEMENT_MARKER} ' + (ConvertTo-Json -Compress -Depth 4 "
    "([pscustomobject]@{ profiles = $profiles; active = $active.Count }))",
]


# Remove-NetFirewallRule with nothing to remove is never run: called without a rule it removes
# every rule in the store, so an empty pipeline is not trusted to mean "nothing".
_REMOVE_LISTED = (
    "if ({rules}.Count -gt 0) {{ Remove-NetFirewallRule -InputObject {rules} -ErrorAction Stop }}"
)


def script(*body: str) -> str:
    """A PowerShell script that runs `body` and stops at the first error with exit status 1.

    Run as a file (`-File`), not piped to `-Command -`: piped lines run one by one, as typed,
    and a failing line would not stop the next ones. `$ErrorActionPreference` covers the
    script's own statements; the NetSecurity cmdlets ignore it and carry `-ErrorAction Stop`
    each.
    """
    lines = ["$ErrorActionPreference = 'Stop'", *_GROUP_RULES.splitlines(), "try {"]
    lines += [f"    {line}" for line in body]
    lines += [
        "} catch {",
        "    [Console]::Error.WriteLine($_.Exception.Message)",
        "    exit 1",
        "}",
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def apply_script(policy: IsolationPolicy, generation: str) -> str:
    """PowerShell that adds this generation's rules, removes every older one, then prints
    what is enforced (the enforcement line).

    New before old: for a moment both sets block (stricter, never looser), and the host is
    never without rules. A failure stops the script with the old rules still in place (and
    perhaps some new ones), and the Isolator rolls back.
    """
    prefix = f"{NAME_PREFIX}-{generation}"
    commands = [rule.command(f"{prefix}-{n}") for n, rule in enumerate(block_rules(policy), 1)]
    commands += [
        f"$old = @(Get-TetherRules | Where-Object {{ $_.Name -notlike '{prefix}-*' }})",
        _REMOVE_LISTED.format(rules="$old"),
    ]
    return script(*commands, *_ENFORCEMENT)


# Release checks its own work: a rule still there afterwards is an error, not a release.
REMOVE_SCRIPT = script(
    "$rules = @(Get-TetherRules)",
    _REMOVE_LISTED.format(rules="$rules"),
    "$left = @(Get-TetherRules).Count",
    'if ($left -ne 0) { throw "$left isolation rules are still there after removing them." }',
)
# Rules that are not enforced are not isolation: the count comes with the enforcement line.
COUNT_SCRIPT = script("@(Get-TetherRules).Count", *_ENFORCEMENT)
# Names carry the generation, so a listing changes when the rules were replaced or one was
# disabled, turned into an allow rule or deleted; a rule's addresses are not compared. The
# enforcement line is part of it, so Group Policy turning local rules off, or a profile off,
# changes the listing too and the periodic check re-applies (and fails, saying why).
LIST_SCRIPT = script(
    "Get-TetherRules | Sort-Object Name | "
    'ForEach-Object { "$($_.Name) $($_.Enabled) $($_.Action) $($_.Direction)" }',
    *_ENFORCEMENT,
)


def _delete(path: Path) -> None:
    path.unlink(missing_ok=True)


def powershell(path: Path, program: str | None = None) -> list[str]:
    """The command line that runs script file `path` with Windows PowerShell (full path)."""
    return [
        program or powershell_path(),
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-File",
        str(path),
    ]


class WindowsFirewallBackend:
    """Isolation as the Windows Firewall rule group "Tether Isolation"."""

    name: Backend = "windows-firewall"

    def __init__(self, script_dir: Path | None = None, program: str | None = None) -> None:
        # The agent's state directory (SYSTEM and Administrators only), so nobody else can
        # swap the script between writing and running it; the temp directory otherwise.
        self._script_dir = script_dir
        # Windows PowerShell's full path; tests give a stand-in.
        self._program = program or powershell_path()

    def _write(self, text: str) -> Path:
        # A few kilobytes on local disk: not worth a thread.
        handle, name = tempfile.mkstemp(prefix="isolation-", suffix=".ps1", dir=self._script_dir)
        with os.fdopen(handle, "w", encoding="utf-8-sig") as file:
            file.write(text)
        return Path(name)

    async def _run(self, text: str, doing: str) -> str:
        path = self._write(text)
        try:
            result = await run_command(powershell(path, self._program))
        finally:
            _delete(path)
        if result.returncode != 0:
            raise IsolationFailed(
                f"Windows Firewall refused to {doing}: {first_error_line(result.stderr or result.stdout)}."
            )
        return result.stdout

    async def apply(self, policy: IsolationPolicy) -> None:
        generation = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        output = await self._run(apply_script(policy, generation), "apply the isolation rules")
        # Rules in place are not isolation until the firewall enforces them.
        problem = enforcement_problem(output, expected_rules=len(block_rules(policy)))
        if problem is not None:
            raise IsolationFailed(problem)

    async def remove(self) -> None:
        await self._run(REMOVE_SCRIPT, "remove the isolation rules")

    async def listing(self) -> str | None:
        output = (await self._run(LIST_SCRIPT, "list the isolation rules")).strip()
        rules = [line for line in output.splitlines() if not line.startswith(ENFORCEMENT_MARKER)]
        # No rules is no isolation, whatever the profiles say.
        return output if rules else None

    async def installed(self) -> bool:
        """Whether the group holds rules and the firewall enforces them (a host whose Group
        Policy stopped merging local rules is not isolated, and is reported so)."""
        output = await self._run(COUNT_SCRIPT, "list the isolation rules")
        counts = [line for line in output.splitlines() if not line.startswith(ENFORCEMENT_MARKER)]
        try:
            rules = int("".join(counts).strip() or "0")
        except ValueError as exc:
            raise IsolationFailed(
                "Windows Firewall answered the rule count with something else."
            ) from exc
        if rules == 0:
            return False
        problem = enforcement_problem(output, expected_rules=rules)
        if problem is not None:
            log.warning("Isolation rules are in place but not enforced: %s", problem)
            return False
        return True
