"""The platform's services wired together once, from the settings, for one process."""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.config import Settings
from tether.server.services.access import ResponseAccess
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.enrollment import Enrollment
from tether.server.services.hosts import Hosts
from tether.server.services.pki import CertificateAuthority
from tether.server.services.policy import PolicyDelivery
from tether.server.services.presence import Presence
from tether.server.services.reachability import Reachability
from tether.server.services.segments import Segments
from tether.server.services.users import SessionPolicy, Users
from tether.server.store.db import create_engine


@dataclass
class Platform:
    """Everything a request handler or the gateway may call."""

    settings: Settings
    engine: AsyncEngine
    ca: CertificateAuthority
    audit: AuditLog
    users: Users
    enrollment: Enrollment
    presence: Presence
    hosts: Hosts
    reachability: Reachability
    policies: PolicyDelivery
    segments: Segments
    access: ResponseAccess

    @classmethod
    def build(cls, settings: Settings, engine: AsyncEngine | None = None) -> "Platform":
        engine = engine or create_engine(settings.db_url)
        ca = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
        audit = AuditLog(engine, CheckpointSigner(settings.audit_key, settings.audit_anchor))
        presence = Presence(engine)
        policies = PolicyDelivery(engine, presence)
        return cls(
            settings=settings,
            engine=engine,
            ca=ca,
            audit=audit,
            users=Users(
                engine,
                audit,
                SessionPolicy(
                    idle=timedelta(minutes=settings.session_idle_minutes),
                    lifetime=timedelta(hours=settings.session_lifetime_hours),
                ),
            ),
            enrollment=Enrollment(engine, audit, ca, settings.analyst_url, settings.agent_url),
            presence=presence,
            hosts=Hosts(engine, audit, presence),
            reachability=Reachability(presence, audit),
            policies=policies,
            segments=Segments(engine, audit, policies),
            access=ResponseAccess(engine),
        )

    async def close(self) -> None:
        await self.presence.flush()
        await self.engine.dispose()
