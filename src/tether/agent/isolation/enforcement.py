"""Whether Windows Firewall enforces the isolation rules it holds, read from its ActiveStore.

Rules in the local (persistent) store are not isolation by themselves: Group Policy may tell
the firewall to ignore local rules (`AllowLocalFirewallRules` false in the merged ActiveStore;
Velociraptor met this, its issue 2957), a profile may have the firewall off, an interface may
be excluded from filtering, and a rule may be missing from the active policy. A laptop moves
between profiles without the agent doing anything, so every profile must enforce them
(docs/adr/0041). The apply script prints one line, `ENFORCEMENT_MARKER` and JSON:

    {"profiles": [{"name": "Domain", "enabled": "True", "outbound": "Allow",
                   "local": "NotConfigured", "excluded": ["NotConfigured"]}, ...],
     "active": 12}

and `enforcement_problem` turns it into the sentence the analyst reads, or None when isolation
holds. The default outbound action does not matter: a block rule beats allow either way.
"""

import json
from dataclasses import dataclass

ENFORCEMENT_MARKER = "TetherEnforcement"
PROFILES = ("Domain", "Private", "Public")
# What PowerShell prints for a setting no store configures (the built-in default applies).
NOT_CONFIGURED = "NotConfigured"
_CANNOT = "so it cannot be isolated this way"
_MAX_NAMES = 5


@dataclass(frozen=True)
class ProfileState:
    """One firewall profile as the ActiveStore reports it (PowerShell's names, as text)."""

    name: str
    enabled: str
    outbound: str
    local_rules: str
    excluded: tuple[str, ...]


@dataclass(frozen=True)
class Enforcement:
    """The enforcement line, parsed."""

    profiles: tuple[ProfileState, ...]
    active_rules: int


class EnforcementUnreadable(ValueError):
    """The enforcement line is missing or not what the script prints."""


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise EnforcementUnreadable(f"{field} is not text")
    return value


def parse_enforcement(output: str) -> Enforcement:
    """The enforcement line in a script's output; EnforcementUnreadable when absent or odd."""
    lines = [line for line in output.splitlines() if line.startswith(ENFORCEMENT_MARKER + " ")]
    if len(lines) != 1:
        raise EnforcementUnreadable("no single enforcement line")
    try:
        data = json.loads(lines[0][len(ENFORCEMENT_MARKER) + 1 :])
    except ValueError as exc:
        raise EnforcementUnreadable("not JSON") from exc
    if not isinstance(data, dict):
        raise EnforcementUnreadable("not an object")
    raw_profiles = data.get("profiles")
    # ConvertTo-Json writes a one-element array as that element.
    if isinstance(raw_profiles, dict):
        raw_profiles = [raw_profiles]
    active = data.get("active")
    if not isinstance(raw_profiles, list) or not isinstance(active, int) or active < 0:
        raise EnforcementUnreadable("profiles or active missing")
    profiles = []
    for raw in raw_profiles:
        if not isinstance(raw, dict):
            raise EnforcementUnreadable("a profile is not an object")
        excluded = raw.get("excluded")
        if excluded is None:
            excluded = []
        elif isinstance(excluded, str):
            excluded = [excluded]
        if not isinstance(excluded, list):
            raise EnforcementUnreadable("excluded is not a list")
        profiles.append(
            ProfileState(
                name=_text(raw.get("name"), "name"),
                enabled=_text(raw.get("enabled"), "enabled"),
                outbound=_text(raw.get("outbound"), "outbound"),
                local_rules=_text(raw.get("local"), "local"),
                excluded=tuple(_text(alias, "excluded") for alias in excluded),
            )
        )
    return Enforcement(tuple(profiles), active)


def _names(values: list[str]) -> str:
    shown = ", ".join(values[:_MAX_NAMES])
    more = len(values) - _MAX_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def problem_with(enforcement: Enforcement, expected_rules: int) -> str | None:
    """Why the isolation rules are not enforced on every profile, or None when they are."""
    by_name = {profile.name: profile for profile in enforcement.profiles}
    missing = [name for name in PROFILES if name not in by_name]
    if missing:
        return (
            f"Windows Firewall did not report its {_names(missing)} profile on this host, "
            f"{_CANNOT}."
        )
    ordered = [by_name[name] for name in PROFILES]
    # Group Policy first: it is the cause an administrator has to change centrally.
    if any(profile.local_rules == "False" for profile in ordered):
        return f"Group Policy ignores local firewall rules on this host, {_CANNOT}."
    off = [profile.name for profile in ordered if profile.enabled != "True"]
    if off:
        which = "profile" if len(off) == 1 else "profiles"
        return f"Windows Firewall is off in the {_names(off)} {which} on this host, {_CANNOT}."
    excluded = sorted(
        {alias for profile in ordered for alias in profile.excluded if alias != NOT_CONFIGURED}
    )
    if excluded:
        return (
            f"Windows Firewall does not filter the interface {_names(excluded)} on this host "
            f"(DisabledInterfaceAliases), {_CANNOT}."
        )
    if enforcement.active_rules < expected_rules:
        return (
            f"Only {enforcement.active_rules} of the {expected_rules} isolation rules are in "
            f"force on this host (the active firewall policy leaves the others out), {_CANNOT}."
        )
    return None


def enforcement_problem(output: str, expected_rules: int) -> str | None:
    """The sentence for an apply script's output, or None when isolation is enforced."""
    try:
        enforcement = parse_enforcement(output)
    except EnforcementUnreadable:
        return (
            "Windows Firewall did not say whether it enforces the isolation rules, so the host "
            "is not reported isolated."
        )
    return problem_with(enforcement, expected_rules)
