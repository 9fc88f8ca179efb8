"""Signed agent upgrades rolled out over the agents' own connections (docs/adr/0051).

An admin holding the script tier names a bundle archive in the file library and the hosts; the
platform reads the archive's version, signs (version, SHA-256, size) with its upgrade key,
records the request in the audit chain, and sends `agent.upgrade` jobs at most `max_parallel`
at a time: each host's job ending (upgraded, rolled back, refused, failed) is recorded as the
rollout's outcome for that host, and frees the slot for the next host.
"""

import asyncio
import logging
import tarfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Permission, Tier
from tether.protocol.action_names import AGENT_UPGRADE
from tether.protocol.permissions import tier_refusal
from tether.protocol.upgrade import (
    BUNDLE_DIRECTORY,
    VERSION_FILE,
    UpgradeArgs,
    outcome_of,
    valid_version,
)
from tether.server.errors import Forbidden, Invalid, NotFound, PlatformError
from tether.server.services.access import user_refusal
from tether.server.services.audit import AuditLog
from tether.server.services.file_transfers import FinishedJob
from tether.server.services.files import FileLibrary
from tether.server.services.jobs import Jobs, Selection
from tether.server.services.upgrade_key import UpgradeSigner
from tether.server.services.users import User
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import agent_upgrade_hosts, agent_upgrades, hosts

log = logging.getLogger(__name__)

ACTION = AGENT_UPGRADE
MAX_PARALLEL = 1000
# A host offline for longer than this is not waited for: its slot goes to the next host.
JOB_TTL = timedelta(hours=1)
RESERVED = (
    "Agent upgrades are sent by 'tether agent upgrade' (or the Upgrade agents page), which "
    "signs the bundle; they are not submitted as jobs."
)
_VERSION_MEMBER = f"{BUNDLE_DIRECTORY}/{VERSION_FILE}"
_EXECUTABLE_MEMBER = f"{BUNDLE_DIRECTORY}/tether-agent"


@dataclass(frozen=True)
class RolloutHost:
    host_id: str
    hostname: str
    position: int
    job_id: str | None
    outcome: str | None
    error: str | None
    ended_at: datetime | None


@dataclass
class Rollout:
    id: str
    version: str
    sha256: str
    size: int
    max_parallel: int
    selection: str
    created_by: str
    created_at: datetime
    hosts: list[RolloutHost] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counted: dict[str, int] = {}
        for host in self.hosts:
            key = host.outcome or ("running" if host.job_id else "waiting")
            counted[key] = counted.get(key, 0) + 1
        return counted


def bundle_version(archive: Path) -> str:
    """The version an agent bundle archive carries; Invalid when it is not such an archive."""
    try:
        with tarfile.open(archive, "r:gz") as bundle:
            names = set(bundle.getnames())
            if _EXECUTABLE_MEMBER not in names or _VERSION_MEMBER not in names:
                raise Invalid(
                    f"That file is not an agent bundle archive (it needs {_EXECUTABLE_MEMBER} "
                    f"and {_VERSION_MEMBER}); make one with 'tether agent upgrade-bundle'."
                )
            member = bundle.extractfile(_VERSION_MEMBER)
            raw = member.read(256) if member is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise Invalid(
            "That file is not an agent bundle archive (a .tar.gz from 'tether agent "
            "upgrade-bundle')."
        ) from exc
    version = raw.decode("ascii", "replace").strip()
    if not valid_version(version):
        raise Invalid(f"The bundle's version {version[:64]!r} is not a valid agent version.")
    return version


class Upgrades:
    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        jobs: Jobs,
        files: FileLibrary,
        signer: UpgradeSigner,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._jobs = jobs
        self._files = files
        self.signer = signer
        # Who asked, by rollout, for the jobs of its later waves; a platform restart forgets
        # it, and the rest of that rollout waits to be asked for again (docs/adr/0051).
        self._requesters: dict[str, User] = {}
        self._lock = asyncio.Lock()
        # Jobs that ended before their rollout row named them (refused at dispatch at once).
        self._ended_early: dict[str, FinishedJob] = {}
        self._advancing: set[asyncio.Task[None]] = set()

    @staticmethod
    def check_requester(user: User) -> None:
        """Refuse anyone but a person holding admin and the script tier with a second factor."""
        if user.service:
            raise Forbidden("Agent upgrades are made by a person, not by a service token.")
        if Permission.HOSTS_MANAGE not in user.permissions:
            raise Forbidden("You need the hosts.manage permission to upgrade agents.")
        if (refusal := user_refusal(user)) is not None:
            raise Forbidden(refusal)
        if refusal := tier_refusal(user.username, user.tier, Tier.SCRIPT, "an agent upgrade"):
            raise Forbidden(refusal)

    async def start(
        self,
        user: User,
        *,
        sha256: str,
        selection: Selection,
        max_parallel: int,
        source: str,
    ) -> Rollout:
        """Sign the library file `sha256` as an agent upgrade and start sending it."""
        self.check_requester(user)
        if not 1 <= max_parallel <= MAX_PARALLEL:
            raise Invalid(f"--max-parallel must be between 1 and {MAX_PARALLEL}.")
        entry = await self._files.by_sha256(sha256)
        version = await asyncio.to_thread(bundle_version, self._files.blobs.path_of(sha256))
        host_ids = await self._jobs.resolve(selection)
        signature, public = await asyncio.to_thread(
            self.signer.sign, version, entry.sha256, entry.size
        )
        # The arguments as the agent will check them, validated before anything is stored.
        UpgradeArgs(version=version, sha256=entry.sha256, size=entry.size, signature=signature)
        rollout_id = uuid.uuid4().hex
        now = utcnow()
        async with self._audit.transaction() as tx:
            await tx.conn.execute(
                agent_upgrades.insert().values(
                    id=rollout_id,
                    version=version,
                    sha256=entry.sha256,
                    size=entry.size,
                    signature=signature,
                    max_parallel=max_parallel,
                    selection=selection.describe(),
                    created_by=user.actor,
                    created_at=now,
                )
            )
            await tx.conn.execute(
                agent_upgrade_hosts.insert(),
                [
                    {"upgrade_id": rollout_id, "host_id": h, "position": n}
                    for n, h in enumerate(host_ids)
                ],
            )
            await tx.record(
                "agent.upgrade.request",
                actor=user.actor,
                target=f"upgrade:{rollout_id}",
                source=source,
                details={
                    "version": version,
                    "sha256": entry.sha256,
                    "size": entry.size,
                    "file": entry.id,
                    "selection": selection.describe(),
                    "hosts": host_ids if len(host_ids) <= 1000 else len(host_ids),
                    "max_parallel": max_parallel,
                    # Which key signed it: agents refuse any other.
                    "upgrade_key": public,
                },
            )
        self._requesters[rollout_id] = user
        await self._advance(rollout_id, source)
        return await self.get(rollout_id)

    async def _advance(self, rollout_id: str, source: str) -> None:
        """Send the next hosts' jobs while fewer than `max_parallel` of the rollout run."""
        user = self._requesters.get(rollout_id)
        if user is None:
            return
        async with self._lock:
            rollout = await self.get(rollout_id)
            running = sum(1 for h in rollout.hosts if h.job_id and h.outcome is None)
            waiting = [h for h in rollout.hosts if h.job_id is None and h.outcome is None]
            args = {
                "version": rollout.version,
                "sha256": rollout.sha256,
                "size": rollout.size,
                "signature": await self._signature(rollout_id),
            }
            free = rollout.max_parallel - running
            for host in waiting:
                if free <= 0:
                    break
                try:
                    batch = await self._jobs.submit(
                        user,
                        ACTION,
                        args,
                        Selection(host_ids=[host.host_id]),
                        ttl=JOB_TTL,
                        source=source,
                        reserved=True,
                    )
                except PlatformError as exc:
                    # Refused for this host (its segment, a service token's bounds): the slot
                    # goes to the next host.
                    await self._end_host(rollout, host.host_id, "not sent", str(exc), None)
                    continue
                free -= 1
                job_id = batch.jobs[0].id if batch.jobs else None
                early = self._ended_early.pop(job_id, None) if job_id else None
                async with self._engine.begin() as conn:
                    await conn.execute(
                        update(agent_upgrade_hosts)
                        .where(
                            and_(
                                agent_upgrade_hosts.c.upgrade_id == rollout_id,
                                agent_upgrade_hosts.c.host_id == host.host_id,
                            )
                        )
                        .values(job_id=job_id)
                    )
                if early is not None:
                    await self._end_host(
                        rollout,
                        host.host_id,
                        outcome_of(early.state, early.error),
                        early.error,
                        early,
                    )
                    self._kick(rollout_id)
            if all(h.outcome is not None for h in (await self.get(rollout_id)).hosts):
                self._requesters.pop(rollout_id, None)

    async def _signature(self, rollout_id: str) -> str:
        async with self._engine.connect() as conn:
            signature: str = (
                await conn.execute(
                    select(agent_upgrades.c.signature).where(agent_upgrades.c.id == rollout_id)
                )
            ).scalar_one()
        return signature

    async def _end_host(
        self,
        rollout: Rollout,
        host_id: str,
        outcome: str,
        error: str | None,
        job: FinishedJob | None,
    ) -> None:
        """Record one host's outcome with its audit record, in one transaction."""
        async with self._audit.transaction() as tx:
            await tx.conn.execute(
                update(agent_upgrade_hosts)
                .where(
                    and_(
                        agent_upgrade_hosts.c.upgrade_id == rollout.id,
                        agent_upgrade_hosts.c.host_id == host_id,
                    )
                )
                .values(outcome=outcome, error=error, ended_at=utcnow())
            )
            await tx.record(
                "agent.upgrade.end",
                actor=job.created_by if job is not None else rollout.created_by,
                target=f"host:{host_id}",
                outcome="success" if outcome == "upgraded" else "failure",
                source="endpoint" if job is not None else "platform",
                details={
                    "upgrade": rollout.id,
                    "version": rollout.version,
                    "sha256": rollout.sha256,
                    "outcome": outcome,
                    "job": job.job_id if job is not None else None,
                    "error": error,
                },
            )

    async def job_finished(self, job: FinishedJob) -> None:
        """An `agent.upgrade` job ended: its host's outcome, then the next host's turn."""
        if job.action != ACTION:
            return
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(agent_upgrade_hosts.c.upgrade_id).where(
                        agent_upgrade_hosts.c.job_id == job.job_id
                    )
                )
            ).one_or_none()
        if row is None:
            # Ended while its rollout was still sending it: recorded once the row names it.
            self._ended_early[job.job_id] = job
            return
        rollout = await self.get(row.upgrade_id)
        await self._end_host(rollout, job.host_id, outcome_of(job.state, job.error), job.error, job)
        self._kick(rollout.id)

    def _kick(self, rollout_id: str) -> None:
        """Advance the rollout in a task of its own: an ending may be reported from inside a
        submission of this very rollout, which holds the lock."""
        task = asyncio.create_task(self._advance(rollout_id, "platform"))
        self._advancing.add(task)
        task.add_done_callback(self._advancing.discard)

    async def get(self, rollout_id: str) -> Rollout:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(agent_upgrades).where(agent_upgrades.c.id == rollout_id))
            ).one_or_none()
            if row is None:
                raise NotFound(f"No agent upgrade has the id {rollout_id!r}.")
            members = (
                await conn.execute(
                    select(agent_upgrade_hosts, hosts.c.hostname)
                    .join(hosts, hosts.c.id == agent_upgrade_hosts.c.host_id, isouter=True)
                    .where(agent_upgrade_hosts.c.upgrade_id == rollout_id)
                    .order_by(agent_upgrade_hosts.c.position)
                )
            ).all()
        return Rollout(
            id=row.id,
            version=row.version,
            sha256=row.sha256,
            size=row.size,
            max_parallel=row.max_parallel,
            selection=row.selection,
            created_by=row.created_by,
            created_at=as_utc(row.created_at) or utcnow(),
            hosts=[
                RolloutHost(
                    host_id=m.host_id,
                    hostname=m.hostname or m.host_id,
                    position=m.position,
                    job_id=m.job_id,
                    outcome=m.outcome,
                    error=m.error,
                    ended_at=as_utc(m.ended_at),
                )
                for m in members
            ],
        )

    async def find(self, limit: int = 50) -> list[Rollout]:
        async with self._engine.connect() as conn:
            ids = list(
                (
                    await conn.execute(
                        select(agent_upgrades.c.id)
                        .order_by(agent_upgrades.c.created_at.desc())
                        .limit(limit)
                    )
                ).scalars()
            )
        return [await self.get(i) for i in ids]
