"""Step-up: a sensitive change needs a second-factor check at most 5 minutes old, or a fresh
code, which renews it; wrong codes count against the session and end it after five."""

from datetime import timedelta

import pytest

from tether.protocol import Role
from tether.server.auth.totp import from_base32, new_secret, to_base32, totp
from tether.server.errors import Forbidden, StepUpRequired, Unauthenticated
from tether.server.services.audit import AuditLog
from tether.server.services.step_up import FRESH_CODE_NEEDED, TOO_MANY, StepUp
from tether.server.services.users import CODE_REFUSED, CODE_REPLAYED, User, Users

from ..support import FakeClock

PASSWORD = "correct horse battery"


async def _admin(users: Users, clock: FakeClock) -> tuple[User, str, str]:
    """An admin logged in with both factors; returns the session's user, token and secret."""
    created = await users.create("root", PASSWORD, {Role.ADMIN})
    secret = new_secret()
    await users.mfa.enroll_directly(created.id, secret)
    pending = await users.login("root", PASSWORD, source="s", client="cli")
    full = await users.second_factor(
        pending.token, code=totp(secret, clock.now.timestamp()), source="s", client="cli"
    )
    return await users.authenticate(full.token), full.token, to_base32(secret)


async def test_a_fresh_session_passes_and_a_stale_one_needs_a_new_code(
    users: Users, clock: FakeClock, audit: AuditLog
) -> None:
    user, token, secret = await _admin(users, clock)
    step_up = StepUp(users._engine, audit, users.mfa, clock, on_change=users.forget_user)
    await step_up.require_fresh(user, None, what="roles", source="s")
    clock.advance(timedelta(minutes=5, seconds=1))
    user = await users.authenticate(token)
    with pytest.raises(StepUpRequired) as stale:
        await step_up.require_fresh(user, None, what="roles", source="s")
    assert str(stale.value) == FRESH_CODE_NEEDED
    # The code used at login is spent; one from an older step too.
    with pytest.raises(StepUpRequired) as old:
        await step_up.require_fresh(
            user, totp(from_base32(secret), clock.now.timestamp() - 400), what="roles", source="s"
        )
    assert str(old.value) == CODE_REFUSED
    code = totp(from_base32(secret), clock.now.timestamp())
    await step_up.require_fresh(user, code, what="roles", source="s")
    with pytest.raises(StepUpRequired) as replay:
        # `user` still carries the stale check it was loaded with: the same code again.
        await step_up.require_fresh(user, code, what="roles", source="s")
    assert str(replay.value) == CODE_REPLAYED
    outcomes = [
        (r.outcome, (r.to_json()["details"] or {}).get("reason"))
        async for r in audit.iter_records()
        if r.action == "auth.step_up"
    ]
    assert outcomes == [
        ("failure", "no fresh code"),
        ("failure", "wrong code"),
        ("success", None),
        ("failure", "replay"),
    ]


async def _stale(users: Users, token: str, clock: FakeClock) -> User:
    clock.advance(timedelta(minutes=6))
    return await users.authenticate(token)


async def test_the_renewed_check_lasts_five_minutes(
    users: Users, clock: FakeClock, audit: AuditLog
) -> None:
    user, token, secret = await _admin(users, clock)
    step_up = StepUp(users._engine, audit, users.mfa, clock, on_change=users.forget_user)
    user = await _stale(users, token, clock)
    await step_up.require_fresh(
        user, totp(from_base32(secret), clock.now.timestamp()), what="roles", source="s"
    )
    clock.advance(timedelta(minutes=4))
    await step_up.require_fresh(await users.authenticate(token), None, what="roles", source="s")


async def test_five_wrong_codes_end_the_session(
    users: Users, clock: FakeClock, audit: AuditLog
) -> None:
    user, token, secret = await _admin(users, clock)
    step_up = StepUp(users._engine, audit, users.mfa, clock, on_change=users.forget_user)
    user = await _stale(users, token, clock)
    valid = {totp(from_base32(secret), clock.now.timestamp() + 30 * s) for s in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222") if c not in valid)
    for _ in range(4):
        with pytest.raises(StepUpRequired):
            await step_up.require_fresh(user, wrong, what="roles", source="s")
    with pytest.raises(Forbidden) as ended:
        await step_up.require_fresh(user, wrong, what="roles", source="s")
    assert str(ended.value) == TOO_MANY
    with pytest.raises(Unauthenticated):
        await users.authenticate(token)
