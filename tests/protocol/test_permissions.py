from tether.protocol import ROLE_PERMISSIONS, Permission, Role, permissions_of


def test_admin_gets_its_table_row() -> None:
    assert permissions_of({"admin"}) == ROLE_PERMISSIONS[Role.ADMIN]
    assert Permission.HOSTS_READ in permissions_of({"admin"})


def test_unknown_and_empty_roles_grant_nothing() -> None:
    assert permissions_of(set()) == frozenset()
    assert permissions_of({"root", "Admin", ""}) == frozenset()


def test_unknown_roles_do_not_spoil_known_ones() -> None:
    assert permissions_of({"admin", "superuser"}) == ROLE_PERMISSIONS[Role.ADMIN]


def test_every_role_has_a_row() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)
