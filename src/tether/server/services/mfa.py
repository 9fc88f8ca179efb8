"""The second factor: TOTP enrollment, code checks that accept each code once, recovery codes.

A TOTP code is valid for its 30-second step and one step either side (clock drift). The last
accepted step is stored per user and only a later step is accepted afterwards, so a code (or an
older one) cannot be replayed; pyotp's verify() alone would not stop that (DESIGN.md section 10).
"""

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import segno
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.server.auth.recovery import new_recovery_codes, recovery_hash
from tether.server.auth.sealing import Sealer, new_key
from tether.server.auth.totp import new_secret as new_totp_secret
from tether.server.auth.totp import provisioning_uri, time_step, to_base32, totp
from tether.server.errors import ConfigurationError, Conflict, Forbidden, Invalid
from tether.server.services.audit import AuditLog
from tether.server.services.enrollment_codes import EnrollmentCodes
from tether.server.services.pki import write_private
from tether.server.store.tables import recovery_codes, sessions, users

DRIFT_STEPS = 1


def load_sealer(path: Path) -> Sealer:
    """The sealing key from the data directory, created (mode 0600) on first use."""
    if not path.exists():
        write_private(path, new_key())
    try:
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise ConfigurationError(f"{path} must be readable by its owner only (chmod 600).")
        return Sealer(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"Cannot use the MFA sealing key {path}: {exc}.") from exc


class CodeCheck(StrEnum):
    OK = "ok"
    WRONG = "wrong code"
    REPLAY = "replay"
    NOT_ENROLLED = "not enrolled"


@dataclass(frozen=True)
class Enrollment:
    secret: str
    uri: str
    qr_svg: str


def _enrollment(username: str, secret: bytes) -> Enrollment:
    uri = provisioning_uri(username, secret)
    svg = segno.make(uri, error="m").svg_inline(scale=4)
    return Enrollment(secret=to_base32(secret), uri=uri, qr_svg=svg)


def sealing_context(user_id: int) -> str:
    """What a user's TOTP secret is sealed for: a secret moved to another row does not open."""
    return f"user:{user_id}:totp"


_context = sealing_context


def matching_step(secret: bytes, code: str, now: datetime) -> int | None:
    """The time step within the drift window whose code is `code`, or None."""
    current = time_step(now.timestamp())
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if totp(secret, step * 30) == code:
            return step
    return None


class Mfa:
    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        sealer: Sealer,
        clock: Callable[[], datetime],
        on_change: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._sealer = sealer
        self._clock = clock
        # Told the user id after a factor is enrolled: authentication's cache forgets the user.
        self._on_change = on_change
        self.codes = EnrollmentCodes(engine, audit, clock)

    async def start_enrollment(
        self,
        user_id: int,
        username: str,
        *,
        actor: str,
        enrolled: bool,
        verified: bool,
        session_hash: str,
        enrollment_code: str | None,
        source: str,
    ) -> Enrollment:
        """A secret pending until confirmed with a code; the old factor (if any) still works.

        The pending secret belongs to the session that started it: asking again from that
        session shows the same secret (a mistyped confirmation must not throw away the one just
        scanned). A session that has not passed a second factor needs an enrollment code.
        """
        if enrolled and not verified:
            # Only the password was proven: replacing the second factor now would let a stolen
            # password take over the account.
            raise Forbidden("You already have a second factor; log in with it to replace it.")
        pending = await self.pending_enrollment(user_id, username, session_hash)
        if pending is not None:
            return pending
        if not verified:
            await self.codes.redeem(user_id, username, enrollment_code, actor=actor, source=source)
        secret = new_totp_secret()
        async with self._engine.begin() as conn:
            await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(
                    mfa_pending_secret=self._sealer.seal(secret, _context(user_id)),
                    mfa_pending_session=session_hash,
                )
            )
        await self._audit.record("mfa.enroll.start", actor=actor, source=source)
        return _enrollment(username, secret)

    async def pending_enrollment(
        self, user_id: int, username: str, session_hash: str
    ) -> Enrollment | None:
        """The enrollment this session started and has not confirmed or cancelled, if any."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(users.c.mfa_pending_secret, users.c.mfa_pending_session).where(
                        users.c.id == user_id
                    )
                )
            ).first()
        if row is None or row.mfa_pending_secret is None:
            return None
        if row.mfa_pending_session != session_hash:
            return None
        return _enrollment(username, self._sealer.open(row.mfa_pending_secret, _context(user_id)))

    async def cancel_enrollment(
        self, user_id: int, actor: str, *, session_hash: str, source: str
    ) -> None:
        """Forget this session's pending secret; starting again needs a new enrollment code
        unless the session passed a second factor."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(users)
                .where(users.c.id == user_id, users.c.mfa_pending_session == session_hash)
                .values(mfa_pending_secret=None, mfa_pending_session=None)
            )
        if result.rowcount:
            await self._audit.record("mfa.enroll.cancel", actor=actor, source=source)

    async def confirm_enrollment(
        self, user_id: int, actor: str, code: str, *, session_hash: str, source: str
    ) -> list[str]:
        """Activate the pending secret when `code` matches it; returns fresh recovery codes."""
        now = self._clock()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(users.c.mfa_pending_secret, users.c.mfa_pending_session).where(
                        users.c.id == user_id
                    )
                )
            ).first()
            if (
                row is None
                or row.mfa_pending_secret is None
                or (row.mfa_pending_session != session_hash)
            ):
                raise Conflict("No enrollment is pending; run 'tether mfa enroll' first.")
            pending = row.mfa_pending_secret
            step = matching_step(self._sealer.open(pending, _context(user_id)), code, now)
            if step is None:
                await self._audit.record(
                    "mfa.enroll",
                    actor=actor,
                    outcome="failure",
                    source=source,
                    details={"reason": "wrong code"},
                )
                raise Invalid(
                    "That code does not match; enter the code the app shows now "
                    "(check the device's clock)."
                )
            await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(
                    mfa_secret=pending,
                    mfa_pending_secret=None,
                    mfa_pending_session=None,
                    mfa_last_step=step,
                )
            )
            codes = await self._replace_recovery_codes(conn, user_id)
            # Proving the code just now is the second factor for this session too.
            await conn.execute(
                update(sessions)
                .where(sessions.c.token_hash == session_hash)
                .values(stage="full", mfa_verified=True, mfa_verified_at=now)
            )
        await self._changed(user_id)
        await self.codes.retire_all(user_id)
        await self._audit.record("mfa.enroll", actor=actor, source=source)
        return codes

    async def _changed(self, user_id: int) -> None:
        if self._on_change is not None:
            await self._on_change(user_id)

    async def _replace_recovery_codes(self, conn: AsyncConnection, user_id: int) -> list[str]:
        codes = new_recovery_codes()
        await conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
        await conn.execute(
            insert(recovery_codes),
            [{"user_id": user_id, "code_hash": recovery_hash(c)} for c in codes],
        )
        return codes

    async def check_code(self, user_id: int, code: str) -> CodeCheck:
        """Accept a TOTP code once; the step it belongs to becomes the last accepted one."""
        now = self._clock()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(users.c.mfa_secret, users.c.mfa_last_step).where(users.c.id == user_id)
                )
            ).first()
            if row is None or row.mfa_secret is None:
                return CodeCheck.NOT_ENROLLED
            step = matching_step(self._sealer.open(row.mfa_secret, _context(user_id)), code, now)
            if step is None:
                return CodeCheck.WRONG
            # The condition makes the check and the update one step: two requests racing with
            # the same code cannot both win.
            result = await conn.execute(
                update(users)
                .where(
                    users.c.id == user_id,
                    or_(users.c.mfa_last_step.is_(None), users.c.mfa_last_step < step),
                )
                .values(mfa_last_step=step)
            )
            return CodeCheck.OK if result.rowcount == 1 else CodeCheck.REPLAY

    async def use_recovery_code(self, user_id: int, code: str) -> CodeCheck:
        """Accept an unused recovery code once."""
        now = self._clock()
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(recovery_codes)
                .where(
                    recovery_codes.c.user_id == user_id,
                    recovery_codes.c.code_hash == recovery_hash(code),
                    recovery_codes.c.used_at.is_(None),
                )
                .values(used_at=now)
            )
            if result.rowcount == 1:
                return CodeCheck.OK
            used = (
                await conn.execute(
                    select(recovery_codes.c.id).where(
                        recovery_codes.c.user_id == user_id,
                        recovery_codes.c.code_hash == recovery_hash(code),
                    )
                )
            ).first()
        return CodeCheck.REPLAY if used is not None else CodeCheck.WRONG

    async def recovery_codes_left(self, user_id: int) -> int:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(recovery_codes.c.id).where(
                        recovery_codes.c.user_id == user_id, recovery_codes.c.used_at.is_(None)
                    )
                )
            ).all()
        return len(rows)

    async def enroll_directly(self, user_id: int, secret: bytes) -> list[str]:
        """Make `secret` the user's second factor without a code: only for `tether server
        init`, which runs on the platform host and hands the secret out with the password."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(mfa_secret=self._sealer.seal(secret, _context(user_id)))
            )
            codes = await self._replace_recovery_codes(conn, user_id)
        await self._changed(user_id)
        return codes
