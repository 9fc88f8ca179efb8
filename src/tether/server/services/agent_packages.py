"""Agent packages the platform builds and serves on the analyst port (docs/adr/0052).

An admin (step-up, audited) asks for a package of a format for a segment; the platform issues a
fresh enrollment token for it (as `tether agent package` does), builds the package around the
cached agent bundle, and keeps it under the data directory. It is served at
`/api/v1/agent-packages/<link>/<file>`, where `<link>` is 256 random bits the platform keeps only
as a hash, until the token expires, is revoked or is used up, and for at most a few downloads per
use. Each download is audited with the address that fetched it; a refused one is logged only,
so a leaked link cannot grow the audit chain at will.
"""

import asyncio
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from cryptography import x509
from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.auth.tokens import token_hash
from tether.server.errors import Gone, Invalid, NotFound, Unavailable
from tether.server.services.audit import AuditLog
from tether.server.services.enrollment import MAX_TOKEN_LIFETIME, MAX_TOKEN_USES, Enrollment
from tether.server.services.install_commands import FILENAMES, install_command, public_key_pin
from tether.server.services.segments import check_segment_name
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import agent_package_links, enrollment_tokens, segments

FORMATS = tuple(FILENAMES)
# Downloads a link serves per enrollment use: a retry or two, never an open mirror.
DOWNLOADS_PER_USE = 3
API_PATH = "/api/v1/agent-packages"
log = logging.getLogger(__name__)
LINK_UNKNOWN = "No agent package is served at this address; ask an admin for a new install command."


class PackageBuilder(Protocol):
    """Builds package files; the platform's is `BundlePackager` (the real bundle and tools)."""

    def prepare(self, fmt: str) -> Path:
        """The bundle directory to package (built or from the cache); raises when it cannot."""
        ...

    def build(self, fmt: str, bundle: Path, token: str, output: Path) -> None:
        """Write the package of `fmt` holding `token` to `output`."""
        ...


class BundlePackager:
    """`tether.packaging` on this host: PyInstaller bundle (cached by content), dpkg-deb, rpmbuild."""

    def __init__(self, cache: Path | None = None) -> None:
        self._cache = cache

    def prepare(self, fmt: str) -> Path:
        from tether.packaging.bundle import build_bundle
        from tether.packaging.errors import PackagingError
        from tether.packaging.packages import missing_tool

        missing = missing_tool(fmt)  # type: ignore[arg-type]
        if missing is not None:
            raise Unavailable(
                f"This platform host cannot build {fmt} packages: {missing} is not installed."
            )
        try:
            return build_bundle(self._cache).directory
        except PackagingError as exc:
            raise Unavailable(str(exc)) from exc

    def build(self, fmt: str, bundle: Path, token: str, output: Path) -> None:
        from tether.packaging.errors import PackagingError
        from tether.packaging.packages import build_package

        try:
            build_package(fmt, bundle, token, output)  # type: ignore[arg-type]
        except PackagingError as exc:
            raise Unavailable(str(exc)) from exc


@dataclass(frozen=True)
class ServedPackage:
    """A package just built: what the admin copies, shown once (the link is a secret)."""

    id: int
    token_id: int
    format: str
    segment: str
    uses: int
    url: str
    sha256: str
    size: int
    expires_at: datetime
    command: str


@dataclass(frozen=True)
class Download:
    """A package file an endpoint may fetch now."""

    path: Path
    format: str
    filename: str
    size: int


class AgentPackages:
    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        enrollment: Enrollment,
        *,
        directory: Path,
        analyst_url: str,
        ca_pem: str,
        server_cert: x509.Certificate,
        builder: PackageBuilder,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._enrollment = enrollment
        self._directory = directory
        self._analyst_url = analyst_url.rstrip("/")
        self._ca_pem = ca_pem
        self._pin = public_key_pin(server_cert)
        self._builder = builder
        self._clock = clock
        # One build at a time: each is a CPU-heavy compression of ~50 MB.
        self._building = asyncio.Lock()

    def _file(self, sha256: str, filename: str) -> Path:
        return self._directory / f"{sha256}-{filename}"

    async def create(
        self,
        *,
        fmt: str,
        segment: str,
        uses: int,
        lifetime: timedelta,
        actor: str,
        source: str,
    ) -> ServedPackage:
        """Issue a token, build the package around it and serve it; audited as built."""
        if fmt not in FORMATS:
            raise Invalid(f"{fmt!r} is not a package format; choose deb, rpm or tar.")
        # What the token would refuse, refused before a build that may take minutes.
        if not 1 <= uses <= MAX_TOKEN_USES:
            raise Invalid(f"Uses must be between 1 and {MAX_TOKEN_USES}.")
        if not timedelta(minutes=1) <= lifetime <= MAX_TOKEN_LIFETIME:
            raise Invalid("An enrollment token must live between one minute and one year.")
        check_segment_name(segment)
        async with self._engine.connect() as conn:
            known = (
                await conn.execute(select(segments.c.id).where(segments.c.name == segment))
            ).scalar()
        if known is None:
            raise NotFound(
                f"No segment is named {segment!r}; create it first "
                f"('tether segment create {segment}')."
            )
        filename = FILENAMES[fmt]
        async with self._building:
            # The bundle first, as `tether agent package` does: a failed build leaves no token.
            bundle = await asyncio.to_thread(self._builder.prepare, fmt)
            issued = await self._enrollment.create_token(
                segment=segment, uses=uses, lifetime=lifetime, actor=actor, source=source
            )
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            partial = self._directory / f".{secrets.token_hex(8)}.partial"
            try:
                await asyncio.to_thread(self._builder.build, fmt, bundle, issued.token, partial)
                sha256, size = await asyncio.to_thread(_digest, partial)
                partial.rename(self._file(sha256, filename))
            except Exception:
                partial.unlink(missing_ok=True)
                # The token went into no package anyone can fetch: take it back at once.
                await self._enrollment.revoke_token(str(issued.id), actor=actor, source=source)
                raise
        link = secrets.token_urlsafe(32)
        async with self._audit.transaction() as tx:
            result = await tx.conn.execute(
                insert(agent_package_links).values(
                    link_hash=token_hash(link),
                    token_id=issued.id,
                    format=fmt,
                    filename=filename,
                    sha256=sha256,
                    size=size,
                    expires_at=issued.expires_at,
                    max_downloads=issued.max_uses * DOWNLOADS_PER_USE,
                    downloads=0,
                    created_by=actor[:64],
                    created_at=self._clock(),
                )
            )
            package_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            await tx.record(
                "agent_package.create",
                actor=actor,
                target=f"package:{package_id}",
                source=source,
                details={
                    "format": fmt,
                    "segment": issued.segment,
                    "token": issued.id,
                    "sha256": sha256,
                    "size": size,
                    "expires_at": issued.expires_at.isoformat(),
                },
            )
        await self.remove_expired()
        url = f"{self._analyst_url}{API_PATH}/{link}/{filename}"
        return ServedPackage(
            id=package_id,
            token_id=issued.id,
            format=fmt,
            segment=issued.segment,
            uses=issued.max_uses,
            url=url,
            sha256=sha256,
            size=size,
            expires_at=issued.expires_at,
            command=install_command(fmt, url, sha256, self._ca_pem, self._pin),
        )

    async def fetch(self, link: str, filename: str, *, source: str) -> Download:
        """The package behind `link`, counted and audited; refused in one sentence otherwise."""
        now = self._clock()
        async with self._audit.transaction() as tx:
            row = (
                await tx.conn.execute(
                    select(
                        agent_package_links,
                        enrollment_tokens.c.uses.label("token_uses"),
                        enrollment_tokens.c.max_uses.label("token_max_uses"),
                        enrollment_tokens.c.revoked_at,
                    )
                    .join(
                        enrollment_tokens,
                        enrollment_tokens.c.id == agent_package_links.c.token_id,
                    )
                    .where(agent_package_links.c.link_hash == token_hash(link))
                )
            ).one_or_none()
            if row is None or row.filename != filename:
                raise NotFound(LINK_UNKNOWN)
            refusal = _refusal(row, now)
            if refusal is None:
                counted = await tx.conn.execute(
                    update(agent_package_links)
                    .where(
                        and_(
                            agent_package_links.c.id == row.id,
                            agent_package_links.c.downloads < agent_package_links.c.max_downloads,
                        )
                    )
                    .values(downloads=agent_package_links.c.downloads + 1)
                )
                if counted.rowcount != 1:
                    refusal = (
                        f"This agent package was downloaded {row.max_downloads} times, as many "
                        "as its link allows; ask an admin for a new install command."
                    )
            if refusal is not None:
                # Not in the chain: a leaked link must not let anyone grow the audit log at
                # will. Successful downloads are, and they are bounded by `max_downloads`.
                log.warning("Agent package %s refused to %s: %s", row.id, source, refusal)
                raise Gone(refusal)
            await tx.record(
                "agent_package.download",
                actor=f"package link {row.id}",
                target=f"package:{row.id}",
                source=source,
                details={"format": row.format, "token": row.token_id, "sha256": row.sha256},
            )
        path = self._file(row.sha256, row.filename)
        if not path.is_file():
            raise NotFound(
                "This agent package is no longer on the platform host; ask an admin for a new "
                "install command."
            )
        return Download(path, row.format, row.filename, row.size)

    async def remove_expired(self) -> int:
        """Delete the files of links that expired; returns how many went."""
        now = self._clock()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(agent_package_links.c.sha256, agent_package_links.c.filename).where(
                        agent_package_links.c.expires_at <= now
                    )
                )
            ).all()
        removed = 0
        for row in rows:
            path = self._file(row.sha256, row.filename)
            if path.is_file():
                path.unlink()
                removed += 1
        return removed


def _refusal(row: object, now: datetime) -> str | None:
    """Why the package behind `row` may not be fetched now, in one sentence, or None."""
    expires = as_utc(row.expires_at)  # type: ignore[attr-defined]
    assert expires is not None
    if expires <= now:
        return (
            f"This agent package's link expired on {expires:%Y-%m-%d %H:%M} UTC; "
            "ask an admin for a new install command."
        )
    if row.revoked_at is not None:  # type: ignore[attr-defined]
        return (
            "The enrollment token in this agent package was revoked; "
            "ask an admin for a new install command."
        )
    if row.token_uses >= row.token_max_uses:  # type: ignore[attr-defined]
        return (
            "The enrollment token in this agent package is used up; "
            "ask an admin for a new install command."
        )
    return None


def _digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), os.path.getsize(path)
