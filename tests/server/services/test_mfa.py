"""Second factor: enrollment, two-step login, each code accepted once, recovery codes."""

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Role
from tether.server.auth.tokens import token_hash
from tether.server.auth.totp import from_base32, to_base32, totp
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from tether.server.services.audit import AuditLog
from tether.server.services.enrollment_codes import CODE_NEEDED, NOT_FOR_YOURSELF
from tether.server.services.enrollment_codes import CODE_REFUSED as ENROLLMENT_CODE_REFUSED
from tether.server.services.mfa import Enrollment
from tether.server.services.users import CODE_REFUSED, CODE_REPLAYED, Stage, User, Users
from tether.server.store.tables import users as users_table

from ..support import FakeClock

PASSWORD = "correct horse battery"


def code_at(secret: str, clock: FakeClock, steps: int = 0) -> str:
    return totp(from_base32(secret), clock.now.timestamp() + 30 * steps)


def wrong_code(secret: str, clock: FakeClock) -> str:
    """A code valid in none of the accepted steps."""
    valid = {code_at(secret, clock, s) for s in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


async def start(users: Users, user: User) -> Enrollment:
    """Start enrollment for `user`'s session with an enrollment code an admin issued."""
    issued = await users.mfa.codes.issue(
        user.username, actor="admin", actor_username="admin", source="s", replacing_factor=True
    )
    return await users.mfa.start_enrollment(
        user.id,
        user.username,
        actor=user.username,
        enrolled=user.mfa_enabled,
        verified=user.mfa_verified,
        session_hash=user.session_hash,
        enrollment_code=issued.code,
        source="s",
    )


async def enrolled(
    users: Users, clock: FakeClock, name: str = "rita"
) -> tuple[User, str, list[str]]:
    """A responder who went through enrollment; returns the user, secret and recovery codes."""
    await users.create(name, PASSWORD, {Role.SCRIPT})
    session = await users.login(name, PASSWORD, source="10.0.0.1 cli", client="cli")
    assert session.stage is Stage.ENROLL
    user = await users.authenticate(session.token, enrolling=True)
    assert user.enrollment_only
    started = await start(users, user)
    codes = await users.mfa.confirm_enrollment(
        user.id,
        name,
        code_at(started.secret, clock),
        session_hash=token_hash(session.token),
        source="s",
    )
    after = await users.authenticate(session.token)
    assert (after.enrollment_only, after.mfa_verified, after.mfa_enabled) == (False, True, True)
    clock.advance(timedelta(seconds=30))
    return after, started.secret, codes


async def test_enrollment_gives_uri_qr_and_recovery_codes(
    users: Users, clock: FakeClock, engine: AsyncEngine
) -> None:
    await users.create("rita", PASSWORD, {Role.SCRIPT})
    session = await users.login("rita", PASSWORD, source="s", client="cli")
    user = await users.authenticate(session.token, enrolling=True)
    started = await start(users, user)
    assert started.uri.startswith("otpauth://totp/Tether:rita?secret=" + started.secret)
    assert started.qr_svg.startswith("<svg")
    assert "</svg>" in started.qr_svg
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(users_table).where(users_table.c.username == "rita"))
        ).one()
    # Sealed, never the secret itself.
    assert row.mfa_pending_secret is not None
    assert started.secret not in row.mfa_pending_secret
    assert row.mfa_secret is None
    with pytest.raises(Invalid, match="does not match"):
        await users.mfa.confirm_enrollment(
            user.id,
            "rita",
            wrong_code(started.secret, clock),
            session_hash=user.session_hash,
            source="s",
        )
    # The mistyped code kept the secret: the same session sees the same one again.
    again = await users.mfa.pending_enrollment(user.id, "rita", user.session_hash)
    assert again is not None
    assert again.secret == started.secret


async def test_confirm_without_enroll_is_refused(users: Users) -> None:
    user = await users.create("rita", PASSWORD, {Role.SCRIPT})
    with pytest.raises(Conflict, match="run 'tether mfa enroll' first"):
        await users.mfa.confirm_enrollment(user.id, "rita", "123456", session_hash="x", source="s")


async def test_enrolled_user_logs_in_in_two_steps(users: Users, clock: FakeClock) -> None:
    _, secret, _ = await enrolled(users, clock)
    pending = await users.login("rita", PASSWORD, source="10.0.0.1 cli", client="cli")
    assert pending.stage is Stage.SECOND_FACTOR
    assert pending.expires_at == clock.now + timedelta(minutes=5)
    with pytest.raises(Unauthenticated, match="Finish logging in"):
        await users.authenticate(pending.token)
    full = await users.second_factor(
        pending.token, code=code_at(secret, clock), source="10.0.0.1 cli", client="cli"
    )
    assert full.stage is Stage.FULL
    me = await users.authenticate(full.token)
    assert (me.mfa_verified, me.enrollment_only) == (True, False)
    with pytest.raises(Unauthenticated, match="expired; start again"):
        await users.second_factor(
            pending.token, code=code_at(secret, clock), source="s", client="cli"
        )


async def test_a_code_is_accepted_once_and_a_replay_is_audited(
    users: Users, clock: FakeClock, audit: AuditLog
) -> None:
    _, secret, _ = await enrolled(users, clock)
    code = code_at(secret, clock)
    first = await users.login("rita", PASSWORD, source="s", client="cli")
    await users.second_factor(first.token, code=code, source="s", client="cli")
    second = await users.login("rita", PASSWORD, source="s", client="cli")
    with pytest.raises(Unauthenticated) as caught:
        await users.second_factor(second.token, code=code, source="s", client="cli")
    assert str(caught.value) == CODE_REPLAYED
    # An older code (previous step, inside the drift window) is no better.
    with pytest.raises(Unauthenticated, match="already used"):
        await users.second_factor(
            second.token, code=code_at(secret, clock, -1), source="s", client="cli"
        )
    # The next step's code (one step of drift) is accepted.
    await users.second_factor(
        second.token, code=code_at(secret, clock, 1), source="s", client="cli"
    )
    details = [
        r.to_json()["details"]
        async for r in audit.iter_records()
        if r.action == "auth.login" and r.outcome == "failure"
    ]
    assert [d["reason"] for d in details] == ["replay", "replay"]


async def test_drift_beyond_one_step_is_refused(users: Users, clock: FakeClock) -> None:
    _, secret, _ = await enrolled(users, clock)
    pending = await users.login("rita", PASSWORD, source="s", client="cli")
    for steps in (-2, 2):
        with pytest.raises(Unauthenticated) as caught:
            await users.second_factor(
                pending.token, code=code_at(secret, clock, steps), source="s", client="cli"
            )
        assert str(caught.value) == CODE_REFUSED


async def test_pending_login_dies_after_five_wrong_codes_and_after_five_minutes(
    users: Users, clock: FakeClock
) -> None:
    _, secret, _ = await enrolled(users, clock)
    pending = await users.login("rita", PASSWORD, source="s", client="cli")
    wrong = wrong_code(secret, clock)
    for _ in range(5):
        with pytest.raises(Unauthenticated, match="code is wrong"):
            await users.second_factor(pending.token, code=wrong, source="s", client="cli")
    with pytest.raises(Unauthenticated, match="expired; start again"):
        await users.second_factor(
            pending.token, code=code_at(secret, clock), source="s", client="cli"
        )
    clock.advance(timedelta(minutes=20))  # past the throttle's delays
    late = await users.login("rita", PASSWORD, source="s", client="cli")
    clock.advance(timedelta(minutes=5))
    with pytest.raises(Unauthenticated, match="expired; start again"):
        await users.second_factor(late.token, code=code_at(secret, clock), source="s", client="cli")


async def test_recovery_codes_work_once_each(
    users: Users, clock: FakeClock, audit: AuditLog
) -> None:
    _, _, codes = await enrolled(users, clock)
    assert len(codes) == 10
    user_id = (
        await users.authenticate(
            (await users.login("rita", PASSWORD, source="s", client="cli")).token
        )
        if False
        else None
    )
    assert user_id is None
    pending = await users.login("rita", PASSWORD, source="s", client="cli")
    full = await users.second_factor(
        pending.token, recovery_code=codes[3].lower(), source="s", client="cli"
    )
    assert (await users.authenticate(full.token)).mfa_verified
    again = await users.login("rita", PASSWORD, source="s", client="cli")
    with pytest.raises(Unauthenticated, match="already used"):
        await users.second_factor(again.token, recovery_code=codes[3], source="s", client="cli")
    with pytest.raises(Unauthenticated, match="code is wrong"):
        await users.second_factor(
            again.token, recovery_code="AAAAA-AAAAA", source="s", client="cli"
        )
    me = await users.authenticate(full.token)
    assert await users.mfa.recovery_codes_left(me.id) == 9
    factors = [
        (r.outcome, r.to_json()["details"]["factor"])
        async for r in audit.iter_records()
        if r.action == "auth.login" and r.to_json()["details"].get("factor") == "recovery_code"
    ]
    assert factors == [
        ("success", "recovery_code"),
        ("failure", "recovery_code"),
        ("failure", "recovery_code"),
    ]


async def test_replacing_a_second_factor_needs_a_verified_session(
    users: Users, clock: FakeClock
) -> None:
    user, _, _ = await enrolled(users, clock)
    with pytest.raises(Forbidden, match="log in with it to replace it"):
        await start(users, replace(user, mfa_verified=False))
    # A session that passed the factor replaces it without an enrollment code.
    started = await users.mfa.start_enrollment(
        user.id,
        "rita",
        actor="rita",
        enrolled=True,
        verified=True,
        session_hash=user.session_hash,
        enrollment_code=None,
        source="s",
    )
    assert to_base32(from_base32(started.secret)) == started.secret


async def _enroll_session(users: Users, name: str = "rita") -> User:
    session = await users.login(name, PASSWORD, source="s", client="cli")
    return await users.authenticate(session.token, enrolling=True)


async def _start_with(users: Users, user: User, code: str | None) -> Enrollment:
    return await users.mfa.start_enrollment(
        user.id,
        user.username,
        actor=user.username,
        enrolled=False,
        verified=False,
        session_hash=user.session_hash,
        enrollment_code=code,
        source="s",
    )


async def test_the_password_alone_cannot_enroll_a_second_factor(
    users: Users, clock: FakeClock, audit: AuditLog
) -> None:
    await users.create("rita", PASSWORD, {Role.SCRIPT})
    await users.create("mallory", PASSWORD, {Role.SCRIPT})
    rita = await _enroll_session(users)
    with pytest.raises(Forbidden) as none:
        await _start_with(users, rita, None)
    assert str(none.value) == CODE_NEEDED.format(username="rita")
    for_mallory = await users.mfa.codes.issue(
        "mallory", actor="admin", actor_username="admin", source="s"
    )
    for_rita = await users.mfa.codes.issue(
        "rita", actor="admin", actor_username="admin", source="s", lifetime=timedelta(hours=1)
    )
    # Someone else's code, a made-up one, then an expired one: all refused the same way.
    with pytest.raises(Forbidden) as other:
        await _start_with(users, rita, for_mallory.code)
    assert str(other.value) == ENROLLMENT_CODE_REFUSED.format(username="rita")
    with pytest.raises(Forbidden):
        await _start_with(users, rita, "AAAAA-AAAAA-AAAAA-AAAAA")
    clock.advance(timedelta(hours=1, seconds=1))
    with pytest.raises(Forbidden):
        await _start_with(users, rita, for_rita.code)
    fresh = await users.mfa.codes.issue("rita", actor="admin", actor_username="admin", source="s")
    started = await _start_with(users, rita, fresh.code.lower().replace("-", " "))
    assert started.secret
    # Used once: a second login cannot start its own enrollment with it, nor see the secret.
    second = await _enroll_session(users)
    with pytest.raises(Forbidden):
        await _start_with(users, second, fresh.code)
    assert await users.mfa.pending_enrollment(second.id, "rita", second.session_hash) is None
    with pytest.raises(Conflict):
        await users.mfa.confirm_enrollment(
            second.id,
            "rita",
            code_at(started.secret, clock),
            session_hash=second.session_hash,
            source="s",
        )
    uses = [
        (r.outcome, (r.to_json()["details"] or {}).get("reason"))
        async for r in audit.iter_records()
        if r.action == "mfa.enrollment_code.use"
    ]
    assert uses == [
        ("failure", "no code"),
        ("failure", "wrong or used"),
        ("failure", "wrong or used"),
        ("failure", "expired"),
        ("success", None),
        ("failure", "wrong or used"),
    ]
    issues = [r.target async for r in audit.iter_records() if r.action.endswith(".issue")]
    assert issues == ["mallory", "rita", "rita"]


async def test_asking_again_keeps_the_pending_secret_until_cancelled(
    users: Users, clock: FakeClock
) -> None:
    await users.create("rita", PASSWORD, {Role.SCRIPT})
    rita = await _enroll_session(users)
    code = await users.mfa.codes.issue("rita", actor="admin", actor_username="admin", source="s")
    started = await _start_with(users, rita, code.code)
    # Asking again (a reload, a second 'tether mfa enroll') answers the same secret, no code.
    assert (await _start_with(users, rita, None)).secret == started.secret
    await users.mfa.cancel_enrollment(rita.id, "rita", session_hash=rita.session_hash, source="s")
    assert await users.mfa.pending_enrollment(rita.id, "rita", rita.session_hash) is None
    with pytest.raises(Forbidden):
        await _start_with(users, rita, None)


async def test_an_admin_cannot_issue_an_enrollment_code_for_themselves(
    users: Users, audit: AuditLog
) -> None:
    await users.create("root", PASSWORD, {Role.ADMIN})
    with pytest.raises(Forbidden) as own:
        await users.mfa.codes.issue("root", actor="root", actor_username="root", source="s")
    assert str(own.value) == NOT_FOR_YOURSELF
    with pytest.raises(NotFound):
        await users.mfa.codes.issue("ghost", actor="root", actor_username="root2", source="s")
    refused = [(r.action, r.outcome) async for r in audit.iter_records() if r.target == "root"]
    assert refused == [("mfa.enrollment_code.issue", "failure")]
