"""The enforcement check's output, read into the sentence the analyst gets (no Windows here)."""

import json
from typing import Any

import pytest

from tether.agent.isolation.enforcement import enforcement_problem, parse_enforcement


def line(active: int = 7, **changes: dict[str, Any]) -> str:
    profiles = []
    for name in ("Domain", "Private", "Public"):
        profile = {
            "name": name,
            "enabled": "True",
            "outbound": "Allow",
            "local": "NotConfigured",
            "excluded": ["NotConfigured"],
        }
        profile.update(changes.get(name, {}))
        profiles.append(profile)
    return "TetherEnforcement " + json.dumps({"profiles": profiles, "active": active})


def test_enforced_everywhere_is_isolation() -> None:
    assert enforcement_problem("noise before\n" + line(), expected_rules=7) is None
    # A profile that blocks outbound by default changes nothing: block rules beat allow.
    assert enforcement_problem(line(Public={"outbound": "Block"}), expected_rules=7) is None
    assert enforcement_problem(line(Domain={"local": "True"}), expected_rules=7) is None
    parsed = parse_enforcement(line())
    assert [p.name for p in parsed.profiles] == ["Domain", "Private", "Public"]
    assert parsed.profiles[0].excluded == ("NotConfigured",)


@pytest.mark.parametrize(
    ("output", "sentence"),
    [
        (
            line(Domain={"local": "False"}),
            "Group Policy ignores local firewall rules on this host, so it cannot be isolated "
            "this way.",
        ),
        (
            # Group Policy is named first even when a profile is off as well.
            line(Domain={"local": "False"}, Public={"enabled": "False"}),
            "Group Policy ignores local firewall rules on this host, so it cannot be isolated "
            "this way.",
        ),
        (
            line(Domain={"enabled": "False"}),
            "Windows Firewall is off in the Domain profile on this host, so it cannot be "
            "isolated this way.",
        ),
        (
            line(Private={"enabled": "False"}, Public={"enabled": "NotConfigured"}),
            "Windows Firewall is off in the Private, Public profiles on this host, so it cannot "
            "be isolated this way.",
        ),
        (
            line(Public={"excluded": ["Ethernet 2", "vEthernet (WSL)"]}),
            "Windows Firewall does not filter the interface Ethernet 2, vEthernet (WSL) on this "
            "host (DisabledInterfaceAliases), so it cannot be isolated this way.",
        ),
        (
            line(active=5),
            "Only 5 of the 7 isolation rules are in force on this host (the active firewall "
            "policy leaves the others out), so it cannot be isolated this way.",
        ),
        (
            "TetherEnforcement "
            + json.dumps(
                {
                    "profiles": {
                        "name": "Domain",
                        "enabled": "True",
                        "outbound": "Allow",
                        "local": "True",
                        "excluded": None,
                    },
                    "active": 7,
                }
            ),
            "Windows Firewall did not report its Private, Public profile on this host, so it "
            "cannot be isolated this way.",
        ),
    ],
)
def test_what_is_not_enforced_is_said(output: str, sentence: str) -> None:
    assert enforcement_problem(output, expected_rules=7) == sentence


@pytest.mark.parametrize(
    "output",
    [
        "",
        "TetherEnforcement not json",
        line() + "\n" + line(),
        'TetherEnforcement {"profiles": [], "active": "7"}',
        'TetherEnforcement {"profiles": [{"name": 1}], "active": 7}',
        "TetherEnforcement []",
    ],
)
def test_an_unreadable_check_is_never_isolation(output: str) -> None:
    assert enforcement_problem(output, expected_rules=7) == (
        "Windows Firewall did not say whether it enforces the isolation rules, so the host is "
        "not reported isolated."
    )
