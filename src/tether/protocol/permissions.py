"""Roles and the permissions they grant: the one table every layer reads.

`responder` is the Active Response role. Holding it is necessary but never sufficient for a
response action: the host's segment must have Active Response enabled and the session must have
passed the second factor (see `tether.server.services.access`).
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
    ACTIVE_RESPONSE = "active_response"


class Role(StrEnum):
    """Roles a user can hold; a user may hold several."""

    ADMIN = "admin"
    ANALYST = "analyst"
    RESPONDER = "responder"


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
            # alone. The first admin also holds responder (see `tether server init`).
        }
    ),
    Role.ANALYST: frozenset({Permission.HOSTS_READ, Permission.RESULTS_READ}),
    Role.RESPONDER: frozenset(
        {
            Permission.HOSTS_READ,
            Permission.RESULTS_READ,
            Permission.ACTIVE_RESPONSE,
            Permission.AUDIT_READ,
        }
    ),
}

# Whoever holds one of these roles must use a second factor, whatever the platform setting says:
# responder reaches endpoints, and admin can grant responder, switch a segment's Active Response
# on and mint enrollment tokens, so a password alone must reach neither (docs/adr/0034).
MFA_REQUIRED_ROLES: frozenset[Role] = frozenset({Role.ADMIN, Role.RESPONDER})


def permissions_of(roles: set[str]) -> frozenset[Permission]:
    """Union of the permissions of the given role names; unknown names grant nothing."""
    granted: set[Permission] = set()
    for name in roles:
        try:
            granted |= ROLE_PERMISSIONS[Role(name)]
        except ValueError:
            continue
    return frozenset(granted)
