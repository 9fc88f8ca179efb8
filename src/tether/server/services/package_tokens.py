"""Enrollment tokens for agent packages, issued on the platform host (`tether agent package`).

Like `tether server enrollment-code`, this uses the platform host's access to the data directory
openly: the token is created by the enrollment service, in the audit chain, as the platform host's
doing, with the package's format in the record so the chain says where the token went.
"""

import asyncio
from datetime import timedelta

from tether.server.config import Settings
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.enrollment import Enrollment, IssuedToken
from tether.server.services.pki import CertificateAuthority
from tether.server.store.db import create_engine

ACTOR = "platform host"
SOURCE = "tether agent package"


def issue_package_token(
    settings: Settings, *, segment: str, uses: int, lifetime: timedelta, package_format: str
) -> IssuedToken:
    """A fresh enrollment token for a package of `package_format`, audited."""
    return asyncio.run(_issue(settings, segment, uses, lifetime, package_format))


async def _issue(
    settings: Settings, segment: str, uses: int, lifetime: timedelta, package_format: str
) -> IssuedToken:
    engine = create_engine(settings.db_url)
    try:
        audit = AuditLog(engine, CheckpointSigner(settings.audit_key, settings.audit_anchor))
        ca = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
        enrollment = Enrollment(engine, audit, ca, settings.analyst_url, settings.agent_url)
        return await enrollment.create_token(
            segment=segment,
            uses=uses,
            lifetime=lifetime,
            actor=ACTOR,
            source=f"{SOURCE} --format {package_format}",
        )
    finally:
        await engine.dispose()
