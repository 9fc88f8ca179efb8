"""The file library: what analysts upload for deployment and what was retrieved from endpoints.

The bytes live once in the content-addressed blob store; each library entry says what they are.
A retrieved file keeps its chain of custody (host, path, size, SHA-256, file time, owner and mode
as the endpoint reported them, the job, who asked and when); every upload, retrieval and
download is audited with the hash.
"""

import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.action_names import FILES_GET, FILES_PUT
from tether.protocol.transfer import TransferDone, format_size, transfer_id_for
from tether.server.errors import Invalid, NotFound
from tether.server.services.audit import AuditLog, AuditRecord, AuditTransaction
from tether.server.services.bindings import file_binding
from tether.server.services.file_transfers import FinishedJob
from tether.server.store.blobs import Blob, BlobReader, BlobStore, BlobTooLarge
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import hosts, library_files

log = logging.getLogger(__name__)

# A library name is a file name: no directories, nothing a terminal or a shell would interpret.
_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,255}$")
# Audit records a custody page shows at most: a tool deployed thousands of times has a long one.
CUSTODY_SHOWN = 1000


def check_name(name: str) -> str:
    """The name, or Invalid with the reason."""
    if not _NAME.fullmatch(name) or name in {".", ".."} or name.strip() != name:
        raise Invalid(
            f"{name[:80]!r} is not a valid library name: use 1-255 characters without "
            "slashes, backslashes, control characters or surrounding spaces."
        )
    return name


@dataclass(frozen=True)
class LibraryFile:
    id: str
    kind: str
    name: str
    sha256: str
    size: int
    host_id: str | None
    hostname: str | None
    source_path: str | None
    file_mtime: datetime | None
    file_owner: str | None
    file_mode: str | None
    job_id: str | None
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class Retrieved:
    """What an endpoint reported about a file it sent, with the job that asked for it."""

    job_id: str
    host_id: str
    path: str
    size: int
    sha256: str
    mtime: datetime | None
    owner: str | None
    mode: str | None
    requested_by: str
    transfer_id: str
    # "files.get", or "script" for a script's tether.script.upload.
    via: str = FILES_GET


@dataclass(frozen=True)
class Custody:
    """A file's chain of custody as far as it is shown; `more` when records were left off."""

    records: list[AuditRecord]
    more: bool


def _view(row: Any) -> LibraryFile:
    return LibraryFile(
        id=row.id,
        kind=row.kind,
        name=row.name,
        sha256=row.sha256,
        size=row.size,
        host_id=row.host_id,
        hostname=row.hostname,
        source_path=row.source_path,
        file_mtime=as_utc(row.file_mtime),
        file_owner=row.file_owner,
        file_mode=row.file_mode,
        job_id=row.job_id,
        created_by=row.created_by,
        created_at=as_utc(row.created_at),  # type: ignore[arg-type]
    )


def _query() -> Any:
    return select(library_files, hosts.c.hostname).outerjoin(
        hosts, hosts.c.id == library_files.c.host_id
    )


async def _insert_bound(tx: AuditTransaction, **values: Any) -> Any:
    """Insert a library entry naming the record about to be written for it (the caller writes
    that record next, in the same transaction); returns the stored row."""
    values["record_seq"] = await tx.next_seq()
    await tx.conn.execute(library_files.insert().values(**values))
    return (
        await tx.conn.execute(select(library_files).where(library_files.c.id == values["id"]))
    ).one()


class FileLibrary:
    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        blobs: BlobStore,
        verified: Callable[[str], Blob | None],
        peek_verified: Callable[[str], Blob | None],
        delivery: Callable[[str], TransferDone | str | None] = lambda _job: None,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self.blobs = blobs
        # What the platform's own transfer verified for a job (FileTransfers.verified).
        self._verified = verified
        self._peek_verified = peek_verified
        # How the platform's own send for a files.put job ended (FileTransfers.delivery).
        self._delivery = delivery

    async def upload(
        self, name: str, chunks: AsyncIterator[bytes], *, actor: str, source: str
    ) -> LibraryFile:
        """Store an analyst's file; nothing is kept if the upload breaks off or is too large."""
        check_name(name)
        partial = await self.blobs.open_partial(uuid.uuid4())
        try:
            async for chunk in chunks:
                if chunk:
                    await partial.write(partial.size, chunk)
            blob = await partial.commit(partial.sha256_so_far(), partial.size)
        except BlobTooLarge as e:
            await partial.discard()
            raise BlobTooLarge(
                f"The file is over the {format_size(self.blobs.max_bytes)} limit for library "
                "files; nothing was kept."
            ) from e
        except BaseException:
            await partial.discard()
            raise
        file_id = uuid.uuid4().hex
        async with self._audit.transaction() as tx:
            row = await _insert_bound(
                tx,
                id=file_id,
                kind="upload",
                name=name,
                sha256=blob.sha256,
                size=blob.size,
                created_by=actor,
                created_at=utcnow(),
            )
            await tx.record(
                "file.upload",
                actor=actor,
                target=f"file:{file_id}",
                source=source,
                details={
                    "name": name,
                    "sha256": blob.sha256,
                    "size": blob.size,
                    "library": file_binding(row),
                },
            )
        return await self.get(file_id)

    async def record_retrieved(self, retrieved: Retrieved) -> LibraryFile:
        """Add a file an endpoint sent (already verified into the blob store) to the library."""
        async with self._audit.transaction() as tx:
            file_id = await self._record_retrieved_in(tx, retrieved)
        return await self.get(file_id)

    async def _record_retrieved_in(self, tx: AuditTransaction, retrieved: Retrieved) -> str:
        """The library entry and its record in `tx`; returns its id (the existing one when this
        transfer was recorded before)."""
        name = name_from_path(retrieved.path)
        file_id = uuid.uuid4().hex
        existing = (
            await tx.conn.execute(
                select(library_files.c.id).where(
                    library_files.c.transfer_id == retrieved.transfer_id
                )
            )
        ).scalar_one_or_none()
        if existing is None:
            row = await _insert_bound(
                tx,
                id=file_id,
                kind="retrieved",
                name=name,
                sha256=retrieved.sha256,
                size=retrieved.size,
                host_id=retrieved.host_id,
                source_path=retrieved.path,
                file_mtime=retrieved.mtime,
                file_owner=retrieved.owner,
                file_mode=retrieved.mode,
                job_id=retrieved.job_id,
                transfer_id=retrieved.transfer_id,
                created_by=retrieved.requested_by,
                created_at=utcnow(),
            )
            await tx.record(
                "file.retrieve",
                actor=retrieved.requested_by,
                target=f"host:{retrieved.host_id}",
                source="endpoint",
                details={
                    "path": retrieved.path,
                    "size": retrieved.size,
                    "sha256": retrieved.sha256,
                    "job": retrieved.job_id,
                    "file": file_id,
                    "via": retrieved.via,
                    "library": file_binding(row),
                },
            )
        return existing if existing is not None else file_id

    async def find(
        self,
        *,
        kind: str | None = None,
        job_id: str | None = None,
        host: str = "",
        name: str = "",
        limit: int = 500,
    ) -> list[LibraryFile]:
        """Newest first; `host` matches part of the hostname or id, `name` part of the name."""
        query = _query().order_by(library_files.c.created_at.desc()).limit(limit)
        if kind is not None:
            query = query.where(library_files.c.kind == kind)
        if job_id is not None:
            query = query.where(library_files.c.job_id == job_id)
        if host:
            query = query.where(
                hosts.c.hostname.contains(host, autoescape=True)
                | library_files.c.host_id.contains(host, autoescape=True)
            )
        if name:
            query = query.where(library_files.c.name.contains(name, autoescape=True))
        async with self._engine.connect() as conn:
            return [_view(r) for r in (await conn.execute(query)).all()]

    async def get(self, ref: str) -> LibraryFile:
        """A library file by id, or an uploaded file by name (the newest with that name)."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    _query()
                    .where(
                        or_(
                            library_files.c.id == ref,
                            (library_files.c.name == ref) & (library_files.c.kind == "upload"),
                        )
                    )
                    .order_by(library_files.c.created_at.desc())
                    .limit(2)
                )
            ).all()
        by_id = [r for r in rows if r.id == ref]
        if by_id or rows:
            return _view((by_id or rows)[0])
        raise NotFound(f"The library holds no file with the id or name {ref!r}.")

    async def by_sha256(self, sha256: str) -> LibraryFile:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    _query()
                    .where(library_files.c.sha256 == sha256)
                    .order_by(library_files.c.created_at.desc())
                    .limit(1)
                )
            ).one_or_none()
        if row is None or not await self.blobs.exists(sha256):
            raise NotFound(f"The library holds no file with SHA-256 {sha256}.")
        return _view(row)

    async def check_put(self, args: dict[str, Any]) -> None:
        """At submission of `files.put`: the library must hold that exact file."""
        entry = await self.by_sha256(str(args["sha256"]))
        if entry.size != args["size"]:
            raise Invalid(
                f"The library file with SHA-256 {entry.sha256} is {entry.size} bytes, "
                f"not {args['size']}."
            )

    async def job_finished(self, job: FinishedJob) -> None:
        """Record a retrieval in the library, or a deployment in the audit log.

        What is recorded is what was asked (the job's arguments) and what the platform itself
        verified; the agent's own report is believed only where it matches.
        """
        if job.action == FILES_GET:
            # Recorded with the ending (record_in_commit); what this process verified is done.
            self._verified(job.job_id)
            return
        if job.state != "succeeded" or job.result is None:
            return
        if job.action == FILES_PUT:
            # Succeeded only if `deploy_problem` found none when the ending was recorded: a
            # deploy the platform did not stream and see confirmed ended failed instead.
            await self._audit.record(
                "file.deploy",
                actor=job.created_by,
                target=f"host:{job.host_id}",
                source="endpoint",
                details={
                    "path": job.args["path"],
                    "size": job.args["size"],
                    "sha256": job.args["sha256"],
                    # What was asked, and what the endpoint says the file has now (its word).
                    "mode": job.args.get("mode"),
                    "mode_reported": job.result.get("mode"),
                    "job": job.job_id,
                },
            )

    def retrieval_problem(self, job_id: str, result: dict[str, Any]) -> str | None:
        """Why an endpoint's report of a retrieval cannot be believed, or None: checked before
        the job's ending is recorded (Dispatcher.check_result), so a false claim ends it failed."""
        blob = self._peek_verified(job_id)
        if blob is None or (str(result.get("sha256")), result.get("size")) != (
            blob.sha256,
            blob.size,
        ):
            return (
                "The endpoint reported a file the platform did not receive and verify for this "
                "job, so nothing was kept."
            )
        return None

    def deploy_problem(self, job_id: str, result: dict[str, Any]) -> str | None:
        """Why an endpoint's report of a deploy cannot be believed, or None: the platform must
        have streamed every byte of the job's transfer itself and received the agent's
        confirmation of the size and SHA-256 of the file it wrote, matching the report."""
        outcome = self._delivery(job_id)
        if isinstance(outcome, str):
            return outcome
        if outcome is None or (str(result.get("sha256")), result.get("size")) != (
            outcome.sha256,
            outcome.size,
        ):
            return (
                "The endpoint reported a deploy that the platform did not send in full and see "
                "confirmed for this job, so it is not counted as deployed."
            )
        return None

    async def record_in_commit(self, tx: AuditTransaction, job: FinishedJob) -> None:
        """A succeeded retrieval's library entry and its record, in the transaction of the job's
        ending (Dispatcher.on_ending_commit): whoever sees the job succeeded finds the file."""
        if job.action != FILES_GET or job.state != "succeeded" or job.result is None:
            return
        result = job.result
        blob = self._peek_verified(job.job_id)
        reported = (str(result.get("sha256")), result.get("size"))
        if blob is None or reported != (blob.sha256, blob.size):
            # The ending was checked with the same blob before it was recorded; another
            # process's transfer cannot be seen here, and is never added unverified.
            log.warning("Job %s's retrieval was not verified here; nothing was kept.", job.job_id)
            return
        mtime = result.get("mtime")
        await self._record_retrieved_in(
            tx,
            Retrieved(
                job_id=job.job_id,
                host_id=job.host_id,
                path=str(job.args["path"]),
                size=blob.size,
                sha256=blob.sha256,
                mtime=datetime.fromisoformat(mtime) if mtime else None,
                owner=result.get("owner"),
                mode=result.get("mode"),
                requested_by=job.created_by,
                transfer_id=str(transfer_id_for(job.job_id)),
            ),
        )

    async def open(self, ref: str, *, actor: str, source: str) -> tuple[LibraryFile, BlobReader]:
        """Open a library file for download; the download is audited with the hash."""
        entry = await self.get(ref)
        reader = await self.blobs.open_read(entry.sha256)
        await self._audit.record(
            "file.download",
            actor=actor,
            target=f"file:{entry.id}",
            source=source,
            details={"name": entry.name, "sha256": entry.sha256, "size": entry.size},
        )
        return entry, reader

    async def custody(self, entry: LibraryFile, *, limit: int = CUSTODY_SHOWN) -> Custody:
        """The audit records of this file's chain of custody, oldest first: its upload or
        retrieval and each download (which name the file's id), and every deployment of its
        bytes (a deployment names the SHA-256 it sent, whichever entry holds those bytes).

        Oldest first so that the record where the chain begins is always there; past `limit`
        candidate records the rest is left off, and `Custody.more` says so."""
        found = await self._audit.mentioning(
            (entry.id, entry.sha256), action_prefix="file.", limit=limit + 1
        )

        def about_this_file(record: AuditRecord) -> bool:
            details = record.details_object()
            if record.target == f"file:{entry.id}" or details.get("file") == entry.id:
                return True
            return record.action == "file.deploy" and details.get("sha256") == entry.sha256

        return Custody(
            records=[r for r in found[:limit] if about_this_file(r)], more=len(found) > limit
        )


def name_from_path(path: str) -> str:
    """A library name for a file retrieved from `path` (its last component, made safe)."""
    base = re.split(r"[/\\]", path.rstrip("/\\"))[-1] or "file"
    cleaned = re.sub(r"[\x00-\x1f\x7f]", "_", base).strip() or "file"
    if cleaned in {".", ".."}:
        cleaned = "file"
    return cleaned[:255]
