"""Windows Firewall rules, as generated here; nothing in this file runs on Windows."""

import ipaddress
import os
from pathlib import Path

import pytest

from tests.agent.isolation.policies import policy
from tether.agent.errors import IsolationFailed
from tether.agent.isolation.windows import (
    ANY,
    COUNT_SCRIPT,
    LIST_SCRIPT,
    REMOVE_SCRIPT,
    Allowed,
    BlockRule,
    Span,
    WindowsFirewallBackend,
    apply_script,
    block_rules,
    port_ranges_except,
    powershell,
    spans,
)
from tether.protocol.isolation import AllowRule, IsolationMode

ICMPV4_TYPES = tuple(str(t) for t in range(256) if t != 3)
ICMPV6_TYPES = tuple(str(t) for t in range(256) if t not in {2, 131, 133, 134, 135, 136, 137, 143})


def test_port_complements() -> None:
    assert port_ranges_except([]) == ["1-65535"]
    assert port_ranges_except([22]) == ["1-21", "23-65535"]
    assert port_ranges_except([1, 2, 65535]) == ["3-65534"]
    assert port_ranges_except([3, 5, 65534]) == ["1-2", "4", "6-65533", "65535"]


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def test_overlapping_entries_add_up_instead_of_blocking_each_other() -> None:
    entries = [
        Allowed(ipaddress.ip_network("10.0.0.0/8"), frozenset({53}), frozenset({53})),
        Allowed(ipaddress.ip_network("10.1.0.0/16"), frozenset({80}), frozenset()),
        Allowed(ipaddress.ip_network("10.1.2.0/24"), ANY, ANY),
    ]
    v4 = [s for s in spans(entries) if s.version == 4]
    assert v4 == [
        Span(4, 0, ip("9.255.255.255"), frozenset(), frozenset()),
        Span(4, ip("10.0.0.0"), ip("10.0.255.255"), frozenset({53}), frozenset({53})),
        Span(4, ip("10.1.0.0"), ip("10.1.1.255"), frozenset({53, 80}), frozenset({53})),
        Span(4, ip("10.1.2.0"), ip("10.1.2.255"), ANY, ANY),
        Span(4, ip("10.1.3.0"), ip("10.1.255.255"), frozenset({53, 80}), frozenset({53})),
        Span(4, ip("10.2.0.0"), ip("10.255.255.255"), frozenset({53}), frozenset({53})),
        Span(4, ip("11.0.0.0"), ip("255.255.255.255"), frozenset(), frozenset()),
    ]
    # Ranges of the same kind on both sides of nothing are merged; IPv6 is one blocked range.
    assert [s.text() for s in spans(entries) if s.version == 6] == [
        "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    ]


def test_outbound_mode_blocks_outbound_only_and_spares_the_platform_port() -> None:
    rules = block_rules(policy(IsolationMode.OUTBOUND, v6=False))
    everything_else = (
        "0.0.0.0-126.255.255.255",
        "128.0.0.0-192.0.2.9",
        "192.0.2.11-255.255.255.255",
        "::",
        "::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    )
    dhcp_exempt = ("1-67", "69-545", "547-65535")
    assert rules == [
        BlockRule("Outbound", "TCP", everything_else),
        BlockRule("Outbound", "TCP", ("192.0.2.10",), remote_ports=("1-8443", "8445-65535")),
        BlockRule(
            "Outbound",
            "UDP",
            (
                "0.0.0.0-126.255.255.255",
                "128.0.0.0-192.0.2.9",
                "192.0.2.10",
                "192.0.2.11-255.255.255.255",
                "::",
                "::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            local_ports=dhcp_exempt,
        ),
        BlockRule(
            "Outbound",
            "ICMPv4",
            (
                "0.0.0.0-126.255.255.255",
                "128.0.0.0-192.0.2.9",
                "192.0.2.10",
                "192.0.2.11-255.255.255.255",
            ),
            icmp_types=ICMPV4_TYPES,
        ),
        BlockRule(
            "Outbound",
            "ICMPv6",
            ("::", "::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            icmp_types=ICMPV6_TYPES,
        ),
    ]


def test_full_mode_blocks_inbound_too_except_the_allowlist_service_ports() -> None:
    rules = block_rules(
        policy(IsolationMode.FULL, AllowRule(cidr="10.0.0.0/8", ports=(22,)), v6=False)
    )
    inbound = [r for r in rules if r.direction == "Inbound"]
    assert [(r.protocol, r.addresses, r.remote_ports, r.local_ports) for r in inbound[:4]] == [
        (
            "TCP",
            (
                "0.0.0.0-9.255.255.255",
                "11.0.0.0-126.255.255.255",
                "128.0.0.0-255.255.255.255",
                "::",
                "::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (),
            (),
        ),
        ("TCP", ("10.0.0.0-10.255.255.255",), (), ("1-21", "23-65535")),
        (
            "UDP",
            (
                "0.0.0.0-9.255.255.255",
                "11.0.0.0-126.255.255.255",
                "128.0.0.0-255.255.255.255",
                "::",
                "::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (),
            ("1-67", "69-545", "547-65535"),
        ),
        ("UDP", ("10.0.0.0-10.255.255.255",), (), ("1-21", "23-67", "69-545", "547-65535")),
    ]
    # The platform is never an inbound exception: its traffic is replies to the agent.
    assert not any(a == "192.0.2.10" for r in inbound for a in r.addresses)


def test_the_script_adds_the_new_generation_before_removing_older_ones() -> None:
    script = apply_script(policy(IsolationMode.OUTBOUND, v6=False), "G7").splitlines()
    assert script[:2] == ["$ErrorActionPreference = 'Stop'", "try {"]
    assert script[2] == (
        "    New-NetFirewallRule -Name 'TetherIsolation-G7-1' "
        "-DisplayName 'Tether isolation: block outbound TCP' -Group 'Tether Isolation' "
        "-Direction Outbound -Action Block -Protocol TCP "
        "-RemoteAddress '0.0.0.0-126.255.255.255','128.0.0.0-192.0.2.9',"
        "'192.0.2.11-255.255.255.255','::','::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff' "
        "-Profile Any -Enabled True | Out-Null"
    )
    assert script[3] == (
        "    New-NetFirewallRule -Name 'TetherIsolation-G7-2' "
        "-DisplayName 'Tether isolation: block outbound TCP' -Group 'Tether Isolation' "
        "-Direction Outbound -Action Block -Protocol TCP -RemoteAddress '192.0.2.10' "
        "-RemotePort '1-8443','8445-65535' -Profile Any -Enabled True | Out-Null"
    )
    assert script[4].startswith("    New-NetFirewallRule -Name 'TetherIsolation-G7-3' ")
    assert " -Protocol UDP " in script[4]
    assert script[6].startswith("    New-NetFirewallRule -Name 'TetherIsolation-G7-5' ")
    assert " -Protocol ICMPv6 " in script[6]
    assert f" -IcmpType {','.join(repr(t) for t in ICMPV6_TYPES)} " in script[6]
    assert script[7:] == [
        "    Get-NetFirewallRule -Group 'Tether Isolation' -ErrorAction SilentlyContinue | "
        "Where-Object { $_.Name -notlike 'TetherIsolation-G7-*' } | Remove-NetFirewallRule",
        "} catch {",
        "    [Console]::Error.WriteLine($_.Exception.Message)",
        "    exit 1",
        "}",
    ]


def test_removal_and_count_scripts() -> None:
    assert REMOVE_SCRIPT.splitlines()[2] == (
        "    Get-NetFirewallRule -Group 'Tether Isolation' -ErrorAction SilentlyContinue | Remove-NetFirewallRule"
    )
    assert COUNT_SCRIPT.splitlines()[2] == (
        "    @(Get-NetFirewallRule -Group 'Tether Isolation' -ErrorAction SilentlyContinue).Count"
    )
    assert powershell(Path("C:/ProgramData/Tether/agent/isolation-x.ps1"))[-2:] == [
        "-File",
        "C:/ProgramData/Tether/agent/isolation-x.ps1",
    ]


async def test_scripts_run_from_a_file_that_is_removed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for powershell.exe that keeps what it was given: the plumbing, not Windows.
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    stand_in = bin_dir / "powershell.exe"
    stand_in.write_text(
        "#!/bin/sh\n"
        "for last; do :; done\n"
        f'cp "$last" {tmp_path}/seen.ps1\n'
        f'echo "$@" > {tmp_path}/argv\n'
        'if grep -q "Get-NetFirewallRule -Group .* | Remove-NetFirewallRule$" "$last"; then\n'
        '  echo "Access is denied." >&2; exit 1\n'
        "fi\n"
        "echo 13\n"
    )
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    backend = WindowsFirewallBackend(script_dir=scripts)

    assert await backend.installed() is True
    assert (tmp_path / "seen.ps1").read_text(encoding="utf-8-sig") == COUNT_SCRIPT
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:6] == [
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-File",
        argv[5],
    ]
    assert Path(argv[5]).parent == scripts
    with pytest.raises(
        IsolationFailed,
        match=r"^Windows Firewall refused to remove the isolation rules: Access is denied\.$",
    ):
        await backend.remove()
    assert list(scripts.iterdir()) == []


def test_the_listing_names_each_rule_with_its_state() -> None:
    assert LIST_SCRIPT.splitlines()[2] == (
        "    Get-NetFirewallRule -Group 'Tether Isolation' -ErrorAction SilentlyContinue | "
        "Sort-Object Name | ForEach-Object "
        '{ "$($_.Name) $($_.Enabled) $($_.Action) $($_.Direction)" }'
    )
