"""Roles and the permissions they grant: the one table every layer reads.

The access-control issue fills in `analyst` and `responder` and the MFA rules; until then only
`admin` exists, and every route already names the permission it needs.
"""

from enum import StrEnum


class Permission(StrEnum):
    """What a route or an action requires."""

    HOSTS_READ = "hosts.read"
    HOSTS_MANAGE = "hosts.manage"
    ENROLLMENT_MANAGE = "enrollment.manage"
    AUDIT_READ = "audit.read"
    ACTIVE_RESPONSE = "active_response"


class Role(StrEnum):
    """Roles a user can hold; a user may hold several."""

    ADMIN = "admin"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(
        {
            Permission.HOSTS_READ,
            Permission.HOSTS_MANAGE,
            Permission.ENROLLMENT_MANAGE,
            Permission.AUDIT_READ,
        }
    ),
}


def permissions_of(roles: set[str]) -> frozenset[Permission]:
    """Union of the permissions of the given role names; unknown names grant nothing."""
    granted: set[Permission] = set()
    for name in roles:
        try:
            granted |= ROLE_PERMISSIONS[Role(name)]
        except ValueError:
            continue
    return frozenset(granted)
