"""Windows Firewall rules, as generated here; nothing in this file runs on Windows."""

import ipaddress
import json
import re
import subprocess
import sys
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
        # The DHCP client ports reach their server port and nothing else (as on Linux).
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
            remote_ports=("1-66", "68-65535"),
            local_ports=("68",),
        ),
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
            remote_ports=("1-546", "548-65535"),
            local_ports=("546",),
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
    dhcp = [r for r in inbound if r.protocol == "UDP" and r.local_ports in (("68",), ("546",))]
    inbound = [r for r in inbound if r not in dhcp]
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
    # Inbound to the client ports only from the server ports, for every blocked range.
    assert [(r.local_ports, r.remote_ports) for r in dhcp] == [
        (("68",), ("1-66", "68-65535")),
        (("546",), ("1-546", "548-65535")),
    ] * 2
    # The platform is never an inbound exception: its traffic is replies to the agent.
    assert not any(a == "192.0.2.10" for r in inbound for a in r.addresses)


NETSECURITY_CALL = re.compile(r"\b(?:New|Get|Remove|Set)-NetFirewall\w+")
ENFORCED = {
    "profiles": [
        {
            "name": name,
            "enabled": "True",
            "outbound": "Allow",
            "local": "NotConfigured",
            "excluded": ["NotConfigured"],
        }
        for name in ("Domain", "Private", "Public")
    ],
    "active": 99,
}


def every_script() -> dict[str, str]:
    return {
        "apply": apply_script(policy(IsolationMode.FULL, AllowRule(cidr="10.0.0.0/8")), "G7"),
        "remove": REMOVE_SCRIPT,
        "count": COUNT_SCRIPT,
        "list": LIST_SCRIPT,
    }


@pytest.mark.parametrize("name", ["apply", "remove", "count", "list"])
def test_every_netsecurity_call_stops_on_its_error(name: str) -> None:
    """CDXML cmdlets ignore the script's $ErrorActionPreference: each call carries its own
    -ErrorAction Stop, and no query turns its errors into "no rules"."""
    text = every_script()[name]
    assert "SilentlyContinue" not in text
    assert "Continue" not in text.replace("$ErrorActionPreference = 'Stop'", "")
    calls = 0
    for line in text.splitlines():
        for segment in line.split(" | "):
            if NETSECURITY_CALL.search(segment):
                calls += 1
                assert "-ErrorAction Stop" in segment, segment
            if "Remove-NetFirewallRule" in segment:
                # Only ever with the rules to remove, and only when there are some: called
                # without one it removes every rule in the store.
                assert re.search(
                    r"if \((\$\w+)\.Count -gt 0\) \{ Remove-NetFirewallRule "
                    r"-InputObject \1 ",
                    segment,
                ), segment
    assert calls >= 1
    lines = text.splitlines()
    assert lines[0] == "$ErrorActionPreference = 'Stop'"
    assert lines[-5:] == [
        "} catch {",
        "    [Console]::Error.WriteLine($_.Exception.Message)",
        "    exit 1",
        "}",
        "exit 0",
    ]
    # The only error read as "no rules" is the group's own ObjectNotFound.
    assert "if ($_.CategoryInfo.Category -eq 'ObjectNotFound') { @() } else { throw }" in text


def test_the_script_adds_the_new_generation_before_removing_older_ones() -> None:
    script = apply_script(policy(IsolationMode.OUTBOUND, v6=False), "G7").splitlines()
    body = script[script.index("try {") + 1 : script.index("} catch {")]
    assert body[0] == (
        "    New-NetFirewallRule -Name 'TetherIsolation-G7-1' "
        "-DisplayName 'Tether isolation: block outbound TCP' -Group 'Tether Isolation' "
        "-Direction Outbound -Action Block -Protocol TCP "
        "-RemoteAddress '0.0.0.0-126.255.255.255','128.0.0.0-192.0.2.9',"
        "'192.0.2.11-255.255.255.255','::','::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff' "
        "-Profile Any -Enabled True -ErrorAction Stop | Out-Null"
    )
    assert body[1] == (
        "    New-NetFirewallRule -Name 'TetherIsolation-G7-2' "
        "-DisplayName 'Tether isolation: block outbound TCP' -Group 'Tether Isolation' "
        "-Direction Outbound -Action Block -Protocol TCP -RemoteAddress '192.0.2.10' "
        "-RemotePort '1-8443','8445-65535' -Profile Any -Enabled True -ErrorAction Stop "
        "| Out-Null"
    )
    created = [line for line in body if "New-NetFirewallRule" in line]
    assert len(created) == len(block_rules(policy(IsolationMode.OUTBOUND, v6=False))) == 7
    # Older generations go only after every new rule is in; then what is enforced is printed.
    assert body[len(created) : len(created) + 2] == [
        "    $old = @(Get-TetherRules | Where-Object { $_.Name -notlike 'TetherIsolation-G7-*' })",
        # Never Remove-NetFirewallRule without a rule: that would remove every rule there is.
        "    if ($old.Count -gt 0) { Remove-NetFirewallRule -InputObject $old -ErrorAction Stop }",
    ]
    assert "Get-NetFirewallProfile -PolicyStore ActiveStore -ErrorAction Stop" in body[-3]
    assert body[-2].startswith("    $active = @(Get-TetherRules 'ActiveStore' | ")
    assert body[-1].startswith("    'TetherEnforcement ' + (ConvertTo-Json")


def test_release_checks_that_no_rule_is_left() -> None:
    body = REMOVE_SCRIPT.splitlines()
    assert body[body.index("try {") + 1 :][:4] == [
        "    $rules = @(Get-TetherRules)",
        "    if ($rules.Count -gt 0) { Remove-NetFirewallRule -InputObject $rules -ErrorAction Stop }",
        "    $left = @(Get-TetherRules).Count",
        '    if ($left -ne 0) { throw "$left isolation rules are still there after removing '
        'them." }',
    ]
    assert powershell(Path("C:/ProgramData/Tether/agent/isolation-x.ps1"))[0] == (
        r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"
    )


@pytest.fixture
def fake_powershell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable stand-in for powershell.exe; returns the log of statements it ran."""
    program = tmp_path / "powershell"
    program.write_text(
        f"#!{sys.executable}\n" + (Path(__file__).parent / "fake_powershell.py").read_text()
    )
    program.chmod(0o755)
    log = tmp_path / "ran.log"
    monkeypatch.setenv("FAKE_PS_LOG", str(log))
    monkeypatch.setenv("FAKE_PS_ENFORCEMENT", json.dumps(ENFORCED))
    monkeypatch.delenv("FAKE_PS_FAIL", raising=False)
    return program


def backend_for(fake: Path) -> WindowsFirewallBackend:
    scripts = fake.parent / "scripts"
    scripts.mkdir(exist_ok=True)
    return WindowsFirewallBackend(script_dir=scripts, program=str(fake))


def test_the_stand_in_lets_an_error_without_stop_go_by(
    fake_powershell: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in keeps the flaw it checks for: the old script shape (no -ErrorAction) ran
    to exit 0 past a failed New-NetFirewallRule and deleted the older rules."""
    old_shape = apply_script(policy(IsolationMode.OUTBOUND, v6=False), "G1").replace(
        " -ErrorAction Stop", ""
    )
    script = fake_powershell.parent / "old.ps1"
    script.write_text(old_shape, encoding="utf-8-sig")
    monkeypatch.setenv("FAKE_PS_FAIL", "New-NetFirewallRule")
    ran = subprocess.run(
        [str(fake_powershell), "-File", str(script)], capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0
    assert "The RPC server is unavailable" in ran.stderr
    assert "Remove-NetFirewallRule" in fake_powershell.with_name("ran.log").read_text()


@pytest.mark.parametrize(
    "cmdlet",
    [
        "New-NetFirewallRule",
        "Get-NetFirewallRule",
        "Remove-NetFirewallRule",
        "Get-NetFirewallProfile",
    ],
)
async def test_one_failing_cmdlet_makes_apply_fail(
    fake_powershell: Path, monkeypatch: pytest.MonkeyPatch, cmdlet: str
) -> None:
    monkeypatch.setenv("FAKE_PS_FAIL", cmdlet)
    backend = backend_for(fake_powershell)
    with pytest.raises(
        IsolationFailed,
        match=rf"^Windows Firewall refused to apply the isolation rules: {cmdlet}: The RPC "
        r"server is unavailable\.$",
    ):
        await backend.apply(policy(IsolationMode.OUTBOUND, v6=False))
    ran = fake_powershell.with_name("ran.log").read_text().splitlines()
    if cmdlet == "New-NetFirewallRule":
        # Stopped at the first rule: the older rules were never removed.
        assert len(ran) == 1
        assert not any("Remove-NetFirewallRule" in line for line in ran)
    assert list((fake_powershell.parent / "scripts").iterdir()) == []


@pytest.mark.parametrize("cmdlet", ["Get-NetFirewallRule", "Remove-NetFirewallRule"])
async def test_one_failing_cmdlet_makes_release_fail(
    fake_powershell: Path, monkeypatch: pytest.MonkeyPatch, cmdlet: str
) -> None:
    monkeypatch.setenv("FAKE_PS_FAIL", cmdlet)
    with pytest.raises(
        IsolationFailed,
        match=rf"^Windows Firewall refused to remove the isolation rules: {cmdlet}: The RPC",
    ):
        await backend_for(fake_powershell).remove()


async def test_a_release_that_leaves_rules_fails(
    fake_powershell: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PS_LEFT", "2")
    with pytest.raises(
        IsolationFailed,
        match=r"^Windows Firewall refused to remove the isolation rules: 2 isolation rules are "
        r"still there after removing them\.$",
    ):
        await backend_for(fake_powershell).remove()


async def test_apply_passes_only_when_the_rules_are_enforced(
    fake_powershell: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_for(fake_powershell)
    await backend.apply(policy(IsolationMode.OUTBOUND, v6=False))
    ignored = json.loads(json.dumps(ENFORCED))
    ignored["profiles"][0]["local"] = "False"
    monkeypatch.setenv("FAKE_PS_ENFORCEMENT", json.dumps(ignored))
    with pytest.raises(
        IsolationFailed,
        match=r"^Group Policy ignores local firewall rules on this host, so it cannot be "
        r"isolated this way\.$",
    ):
        await backend.apply(policy(IsolationMode.OUTBOUND, v6=False))


async def test_count_and_listing_through_the_stand_in(
    fake_powershell: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_for(fake_powershell)
    assert await backend.installed() is False
    assert await backend.listing() is None
    monkeypatch.setenv("FAKE_PS_RULES", "13")
    monkeypatch.setenv("FAKE_PS_LISTING", "TetherIsolation-G7-1 True Block Outbound")
    assert await backend.installed() is True
    # Rules that Group Policy makes the firewall ignore are not isolation.
    ignored = json.loads(json.dumps(ENFORCED))
    ignored["profiles"][2]["local"] = "False"
    monkeypatch.setenv("FAKE_PS_ENFORCEMENT", json.dumps(ignored))
    assert await backend.installed() is False
    monkeypatch.setenv("FAKE_PS_ENFORCEMENT", json.dumps(ENFORCED))
    listing = await backend.listing()
    assert listing is not None
    assert listing.splitlines() == [
        "TetherIsolation-G7-1 True Block Outbound",
        "TetherEnforcement " + json.dumps(ENFORCED),
    ]
