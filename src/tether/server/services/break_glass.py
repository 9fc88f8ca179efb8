"""`tether server enrollment-code`: the way back in for an account, run on the platform host.

When the only admin has lost their second factor and recovery codes (or an upgraded platform's
admin never had one), no admin session can issue them an enrollment code. Whoever can read the
data directory (the database, the audit key) already holds the platform; this command uses that
access openly: it forgets the account's second factor, issues an enrollment code, ends the
account's sessions, and puts it all in the audit chain as the platform host's doing.
"""

import asyncio
from datetime import timedelta

from sqlalchemy import delete, select, update

from tether.server.config import Settings
from tether.server.errors import NotFound
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.enrollment_codes import EnrollmentCodes, IssuedCode
from tether.server.store.db import create_engine, utcnow
from tether.server.store.tables import recovery_codes, sessions, users

ACTOR = "platform host"
SOURCE = "tether server enrollment-code"


def issue_on_host(settings: Settings, username: str, lifetime: timedelta) -> IssuedCode:
    """Reset `username`'s second factor and issue an enrollment code, straight in the database."""
    return asyncio.run(_issue(settings, username, lifetime))


async def _issue(settings: Settings, username: str, lifetime: timedelta) -> IssuedCode:
    engine = create_engine(settings.db_url)
    try:
        audit = AuditLog(engine, CheckpointSigner(settings.audit_key, settings.audit_anchor))
        now = utcnow()
        async with engine.begin() as conn:
            row = (
                await conn.execute(
                    select(users.c.id, users.c.mfa_secret).where(users.c.username == username)
                )
            ).first()
            if row is None:
                raise NotFound(f"There is no user named {username!r}.")
            await conn.execute(
                update(users)
                .where(users.c.id == row.id)
                .values(
                    mfa_secret=None,
                    mfa_pending_secret=None,
                    mfa_pending_session=None,
                    mfa_last_step=None,
                )
            )
            await conn.execute(delete(recovery_codes).where(recovery_codes.c.user_id == row.id))
            # A session that passed the forgotten factor must not outlive it.
            await conn.execute(
                update(sessions)
                .where(sessions.c.user_id == row.id, sessions.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        if row.mfa_secret is not None:
            await audit.record(
                "mfa.reset",
                actor=ACTOR,
                target=username,
                source=SOURCE,
                details={"break_glass": True},
            )
        codes = EnrollmentCodes(engine, audit, utcnow)
        return await codes.issue(
            username,
            actor=ACTOR,
            actor_username=None,
            source=SOURCE,
            lifetime=lifetime,
            replacing_factor=True,
        )
    finally:
        await engine.dispose()
