"""Team management: roles, disabling, external (MDR) users, settings, and losing access at once."""

from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Permission, Role
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from tether.server.services.access_settings import AccessSettingsStore
from tether.server.services.audit import AuditLog
from tether.server.services.team import OWN_FACTOR, OWN_ROLES, Team
from tether.server.services.users import LOGIN_REFUSED, Stage, User, Users

from ..support import FakeClock


def acting(username: str) -> User:
    """The admin making a change, as the routes hand it to the team service."""
    return User(0, username, frozenset({"admin"}), False)


PASSWORD = "correct horse battery"


class Recorder:
    """An access-lost listener that remembers its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    async def __call__(self, user_id: int, reason: str) -> None:
        self.calls.append((user_id, reason))


@pytest.fixture
def lost(users: Users) -> Recorder:
    recorder = Recorder()
    users.on_access_lost(recorder)
    return recorder


@pytest.fixture
def settings(engine: AsyncEngine, audit: AuditLog, team: Team, users: Users) -> AccessSettingsStore:
    return AccessSettingsStore(
        engine, audit, team.end_external_access, on_change=users.forget_everyone
    )


async def test_responder_without_mfa_gets_an_enrollment_only_session(users: Users) -> None:
    await users.create("rita", PASSWORD, {Role.SCRIPT})
    session = await users.login("rita", PASSWORD, source="s", client="cli")
    assert session.stage is Stage.ENROLL
    user = await users.authenticate(session.token, enrolling=True)
    assert user.enrollment_only
    assert not user.mfa_verified


async def test_mfa_for_everyone_setting_limits_other_users_too(
    users: Users, settings: AccessSettingsStore, audit: AuditLog
) -> None:
    await users.create("ann", PASSWORD, {Role.ANALYST})
    before = await users.login("ann", PASSWORD, source="s", client="cli")
    assert before.stage is Stage.FULL
    assert not (await users.authenticate(before.token)).enrollment_only
    await settings.update({"mfa_required_for_everyone": True}, actor="admin", source="s")
    # An existing session without the second factor is limited from the next request on.
    assert (await users.authenticate(before.token, enrolling=True)).enrollment_only
    after = await users.login("ann", PASSWORD, source="s", client="cli")
    assert after.stage is Stage.ENROLL
    assert (await settings.get()).mfa_required_for_everyone
    (change,) = [r async for r in audit.iter_records() if r.action == "settings.change"]
    assert change.to_json()["details"] == {"mfa_required_for_everyone": True}


async def test_grant_and_revoke_roles_are_audited(
    users: Users, team: Team, audit: AuditLog
) -> None:
    await users.create("bob", PASSWORD, {Role.ANALYST})
    info = await team.grant_role("bob", Role.SCRIPT, by=acting("admin"), source="s")
    assert info.roles == ["analyst", "script"]
    info = await team.revoke_role("bob", Role.ANALYST, by=acting("admin"), source="s")
    assert info.roles == ["script"]
    actions = [
        (r.action, r.target) async for r in audit.iter_records() if r.action.startswith("role.")
    ]
    assert actions == [("role.grant", "bob"), ("role.revoke", "bob")]
    with pytest.raises(NotFound, match="no user named 'ghost'"):
        await team.grant_role("ghost", Role.ADMIN, by=acting("admin"), source="s")


async def test_removing_the_responder_role_ends_sessions_at_once(
    users: Users, team: Team, lost: Recorder
) -> None:
    rita = await users.create("rita", PASSWORD, {Role.SCRIPT, Role.ANALYST})
    session = await users.login("rita", PASSWORD, source="s", client="cli")
    await team.revoke_role("rita", Role.SCRIPT, by=acting("admin"), source="s")
    with pytest.raises(Unauthenticated, match="not valid"):
        await users.authenticate(session.token)
    assert lost.calls == [(rita.id, "active response role removed")]
    # Removing another role does not end anything.
    fresh = await users.login("rita", PASSWORD, source="s", client="cli")
    await team.revoke_role("rita", Role.ANALYST, by=acting("admin"), source="s")
    await users.authenticate(fresh.token)
    assert len(lost.calls) == 1


async def test_disabling_ends_sessions_and_enabling_lets_them_log_in(
    users: Users, team: Team, lost: Recorder
) -> None:
    await users.create("root", PASSWORD, {Role.ADMIN})
    bob = await users.create("bob", PASSWORD, {Role.ANALYST})
    session = await users.login("bob", PASSWORD, source="s", client="cli")
    await team.set_disabled("bob", True, actor="root", source="s")
    with pytest.raises(Unauthenticated):
        await users.authenticate(session.token)
    assert lost.calls == [(bob.id, "disabled")]
    with pytest.raises(Unauthenticated, match=LOGIN_REFUSED):
        await users.login("bob", PASSWORD, source="s", client="cli")
    await team.set_disabled("bob", False, actor="root", source="s")
    await users.login("bob", PASSWORD, source="s", client="cli")


async def test_the_last_admin_cannot_be_disabled_or_demoted(users: Users, team: Team) -> None:
    await users.create("root", PASSWORD, {Role.ADMIN})
    with pytest.raises(Conflict, match="'root' is the last enabled admin; make another admin"):
        await team.set_disabled("root", True, actor="root", source="s")
    with pytest.raises(Conflict, match="last enabled admin"):
        # Only through someone else: nobody changes their own roles.
        await team.revoke_role("root", Role.ADMIN, by=acting("other"), source="s")
    await users.create("second", PASSWORD, {Role.ADMIN})
    await team.revoke_role("root", Role.ADMIN, by=acting("second"), source="s")
    with pytest.raises(Conflict, match="'second' is the last enabled admin"):
        await team.set_disabled("second", True, actor="second", source="s")


async def test_external_users_expire_and_carry_their_organisation(
    users: Users, clock: FakeClock, audit: AuditLog
) -> None:
    expires = clock.now + timedelta(minutes=10)
    ext = await users.create(
        "mdr1",
        PASSWORD,
        {Role.ANALYST},
        external=True,
        organisation="Acme MDR",
        access_expires_at=expires,
        actor="admin",
        source="s",
    )
    assert ext.actor == "mdr1 (Acme MDR)"
    session = await users.login("mdr1", PASSWORD, source="s", client="cli")
    assert Permission.HOSTS_READ in (await users.authenticate(session.token)).permissions
    clock.advance(timedelta(minutes=10))
    with pytest.raises(Unauthenticated, match="Your access ended on"):
        await users.authenticate(session.token)
    with pytest.raises(Unauthenticated, match=LOGIN_REFUSED):
        await users.login("mdr1", PASSWORD, source="s", client="cli")
    await users.login_failures.flush(everything=True)
    last = [r async for r in audit.iter_records() if r.action == "auth.login.failures"][-1]
    assert last.to_json()["details"]["reasons"] == {"external access expired via cli": 1}
    logins = [r.actor async for r in audit.iter_records() if r.action == "auth.login"]
    assert logins[0] == "mdr1 (Acme MDR)"


async def test_suspending_external_access_ends_their_sessions_only(
    users: Users, settings: AccessSettingsStore, lost: Recorder
) -> None:
    ext = await users.create(
        "mdr1", PASSWORD, {Role.ANALYST}, external=True, organisation="Acme MDR"
    )
    await users.create("staff", PASSWORD, {Role.ANALYST})
    ext_session = await users.login("mdr1", PASSWORD, source="s", client="cli")
    staff_session = await users.login("staff", PASSWORD, source="s", client="cli")
    await settings.update({"external_access_suspended": True}, actor="admin", source="s")
    with pytest.raises(Unauthenticated):
        await users.authenticate(ext_session.token)
    await users.authenticate(staff_session.token)
    assert lost.calls == [(ext.id, "external access suspended")]
    with pytest.raises(Unauthenticated, match=LOGIN_REFUSED):
        await users.login("mdr1", PASSWORD, source="s", client="cli")
    await settings.update({"external_access_suspended": False}, actor="admin", source="s")
    await users.login("mdr1", PASSWORD, source="s", client="cli")


async def test_marking_external_needs_an_organisation(users: Users, team: Team) -> None:
    await users.create("bob", PASSWORD, set())
    with pytest.raises(Invalid, match="needs the name of their organisation"):
        await team.set_external(
            "bob", external=True, organisation=" ", access_expires_at=None, actor="a", source="s"
        )
    info = await team.set_external(
        "bob", external=True, organisation="Acme", access_expires_at=None, actor="a", source="s"
    )
    assert (info.external, info.organisation) == (True, "Acme")


async def test_resetting_the_second_factor_ends_sessions_and_forces_enrollment(
    users: Users, team: Team, lost: Recorder, audit: AuditLog
) -> None:
    rita = await users.create("rita", PASSWORD, {Role.SCRIPT})
    await users.mfa.enroll_directly(rita.id, b"12345678901234567890")
    pending = await users.login("rita", PASSWORD, source="s", client="cli")
    assert pending.stage is Stage.SECOND_FACTOR
    issued = await team.reset_mfa("rita", by=acting("admin"), source="s")
    assert issued.username == "rita"
    assert (await team.get("rita")).mfa_enabled is False
    assert lost.calls == [(rita.id, "second factor reset")]
    assert await users.mfa.recovery_codes_left(rita.id) == 0
    again = await users.login("rita", PASSWORD, source="s", client="cli")
    assert again.stage is Stage.ENROLL
    resets = [r.target async for r in audit.iter_records() if r.action == "mfa.reset"]
    assert resets == ["rita"]


async def test_disabling_between_the_two_login_steps_kills_the_pending_login(
    users: Users, team: Team
) -> None:
    await users.create("root", PASSWORD, {Role.ADMIN})
    rita = await users.create("rita", PASSWORD, {Role.SCRIPT})
    await users.mfa.enroll_directly(rita.id, b"12345678901234567890")
    pending = await users.login("rita", PASSWORD, source="s", client="cli")
    await team.set_disabled("rita", True, actor="root", source="s")
    with pytest.raises(Unauthenticated, match="start again with your password"):
        await users.second_factor(pending.token, code="123456", source="s", client="cli")


async def test_a_failing_listener_does_not_stop_the_others(
    users: Users, team: Team, lost: Recorder
) -> None:
    async def broken(user_id: int, reason: str) -> None:
        raise RuntimeError("live session registry down")

    after = Recorder()
    users.on_access_lost(broken)
    users.on_access_lost(after)
    await users.create("root", PASSWORD, {Role.ADMIN})
    bob = await users.create("bob", PASSWORD, {Role.ANALYST})
    await team.set_disabled("bob", True, actor="root", source="s")
    assert lost.calls == after.calls == [(bob.id, "disabled")]


async def test_nobody_changes_their_own_roles_or_second_factor(
    users: Users, team: Team, audit: AuditLog
) -> None:
    await users.create("root", PASSWORD, {Role.ADMIN})
    await users.create("other", PASSWORD, {Role.ADMIN})
    me = acting("root")
    with pytest.raises(Forbidden) as grant:
        await team.grant_role("root", Role.SCRIPT, by=me, source="s")
    assert str(grant.value) == OWN_ROLES
    with pytest.raises(Forbidden) as revoke:
        await team.revoke_role("root", Role.ADMIN, by=me, source="s")
    assert str(revoke.value) == OWN_ROLES
    with pytest.raises(Forbidden) as reset:
        await team.reset_mfa("root", by=me, source="s")
    assert str(reset.value) == OWN_FACTOR
    assert (await team.get("root")).roles == ["admin"]
    refused = [
        (r.action, r.target, r.outcome, r.to_json()["details"]["reason"])
        async for r in audit.iter_records()
        if r.outcome == "failure"
    ]
    assert refused == [
        ("role.grant", "root", "failure", "own account"),
        ("role.revoke", "root", "failure", "own account"),
        ("mfa.reset", "root", "failure", "own account"),
    ]
    # Someone else may.
    await team.grant_role("root", Role.SCRIPT, by=acting("other"), source="s")
    assert (await team.get("root")).roles == ["admin", "script"]
