"""Roles, the tiers of the Active Response role, and the permissions they grant: the one table
every layer reads.

Active Response comes in three tiers, each holding everything of the one below it (docs/adr/0037):

- *collect*: list processes and files, hash and retrieve files, the live session's read commands;
- *respond*: collect plus kill, deploy a file, isolate and release, run library scripts;
- *script*: respond plus arbitrary scripts (the live session's `py`), and changing the library.

Each action declares the tier it needs (`tether.protocol.actions`). A tier is necessary but never
sufficient for a response action: the host's segment must have Active Response enabled and the
session must have passed the second factor (see `tether.server.services.access`).
"""

from enum import StrEnum


class Permission(StrEnum):
    """What a route or an action requires."""

    HOSTS_READ = "hosts.read"
    HOSTS_MANAGE = "hosts.manage"
    RESULTS_READ = "results.read"
    ENROLLMENT_MANAGE = "enrollment.manage"
    SEGMENTS_MANAGE = "segments.manage"
    USERS_MANAGE = "users.manage"
    SETTINGS_MANAGE = "settings.manage"
    AUDIT_READ = "audit.read"
    # Held by every tier: a route behind it is for any Active Response holder; what the holder
    # may do there is decided by the action's tier (`tier_refusal`).
    ACTIVE_RESPONSE = "active_response"


class Tier(StrEnum):
    """A tier of the Active Response role; `TIERS` orders them."""

    COLLECT = "collect"
    RESPOND = "respond"
    SCRIPT = "script"


# Lowest first: a tier holds everything the tiers before it hold.
TIERS: tuple[Tier, ...] = (Tier.COLLECT, Tier.RESPOND, Tier.SCRIPT)


class Role(StrEnum):
    """Roles a user can hold; a user may hold several, but at most one tier."""

    ADMIN = "admin"
    ANALYST = "analyst"
    # The Active Response tiers are roles named after their tier. The old single role,
    # `responder`, became `script` in migration 0011 (what its holders could do before).
    COLLECT = "collect"
    RESPOND = "respond"
    SCRIPT = "script"


_ACTIVE_RESPONSE = frozenset(
    {
        Permission.HOSTS_READ,
        Permission.RESULTS_READ,
        Permission.ACTIVE_RESPONSE,
        # The audit log ("Session History") is readable by every tier.
        Permission.AUDIT_READ,
    }
)

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(
        {
            Permission.HOSTS_READ,
            Permission.HOSTS_MANAGE,
            Permission.ENROLLMENT_MANAGE,
            Permission.SEGMENTS_MANAGE,
            Permission.USERS_MANAGE,
            Permission.SETTINGS_MANAGE,
            # No AUDIT_READ: the audit log ("Session History") is for the Active Response role
            # alone. The first admin also holds the script tier (see `tether server init`).
        }
    ),
    Role.ANALYST: frozenset({Permission.HOSTS_READ, Permission.RESULTS_READ}),
    Role.COLLECT: _ACTIVE_RESPONSE,
    Role.RESPOND: _ACTIVE_RESPONSE,
    Role.SCRIPT: _ACTIVE_RESPONSE,
}

TIER_ROLES: frozenset[Role] = frozenset({Role.COLLECT, Role.RESPOND, Role.SCRIPT})

# Whoever holds one of these roles must use a second factor, whatever the platform setting says:
# every tier reaches endpoints (collect retrieves their files), and admin can grant a tier,
# switch a segment's Active Response on and mint enrollment tokens, so a password alone must
# reach none of them (docs/adr/0034).
MFA_REQUIRED_ROLES: frozenset[Role] = frozenset({Role.ADMIN, *TIER_ROLES})


def permissions_of(roles: set[str]) -> frozenset[Permission]:
    """Union of the permissions of the given role names; unknown names grant nothing."""
    granted: set[Permission] = set()
    for name in roles:
        try:
            granted |= ROLE_PERMISSIONS[Role(name)]
        except ValueError:
            continue
    return frozenset(granted)


def tier_of(roles: set[str] | frozenset[str]) -> Tier | None:
    """The highest tier among the role names, or None for no Active Response at all."""
    held = [t for t in TIERS if t.value in roles]
    return held[-1] if held else None


def tier_allows(held: Tier | None, needed: Tier) -> bool:
    """Whether holding tier `held` is enough for something that needs tier `needed`."""
    return held is not None and TIERS.index(held) >= TIERS.index(needed)


def tier_refusal(username: str, held: Tier | None, needed: Tier, what: str) -> str | None:
    """The sentence refusing `what` (an action's short name, "kill") to `username`, or None."""
    if tier_allows(held, needed):
        return None
    if held is None:
        return f"{username} has no Active Response tier; {what} needs {needed.value}."
    return f"{username} has the {held.value} tier; {what} needs {needed.value}."


class Approval(StrEnum):
    """A segment's four-eyes setting: which actions need a second person's approval
    (docs/adr/0039). `respond` covers respond and script actions; `script` only script ones."""

    OFF = "off"
    RESPOND = "respond"
    SCRIPT = "script"


def approval_needed(setting: Approval | str, needed: Tier) -> bool:
    """Whether an action needing tier `needed` waits for approval in a segment set to `setting`."""
    if setting == Approval.OFF:
        return False
    return tier_allows(needed, Tier(setting))


# Least to most: "respond" makes more actions wait than "script".
_APPROVAL_STRENGTH: tuple[Approval, ...] = (Approval.OFF, Approval.SCRIPT, Approval.RESPOND)


def approval_weakens(new: Approval | str, current: Approval | str) -> bool:
    """Whether moving a segment from `current` to `new` lets more actions run without a second
    person: as sensitive as switching Active Response on, so it asks for a fresh code."""
    return _APPROVAL_STRENGTH.index(Approval(new)) < _APPROVAL_STRENGTH.index(Approval(current))
