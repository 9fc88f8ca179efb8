"""The files a running script moves: `tether.script.upload` and `download` (docs/adr/0011).

A script asks through its agent (`transfer.request`); the platform grants only a script job of
that very host that is still running, and only what its submitter could have done by hand:
an upload lands in the file library with its chain of custody like a `files.get`, a download
sends a library file like a `files.put`, and both are audited under the job's submitter.
"""

import logging
from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.text import safe_text
from tether.protocol.transfer import (
    TransferDone,
    TransferGrant,
    TransferRequest,
    format_size,
    transfer_id_for,
)
from tether.server.errors import NotFound
from tether.server.services.audit import AuditLog
from tether.server.services.endpoint_misbehaviour import TRANSFER_REQUEST, EndpointMisbehaviour
from tether.server.services.file_transfers import SCRIPT_ACTION, FileTransfers, FinishedJob
from tether.server.services.files import FileLibrary, Retrieved
from tether.server.store.blobs import Blob
from tether.server.store.tables import jobs

log = logging.getLogger(__name__)

_RUNNING = ("delivered", "running")


class ScriptFiles:
    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        transfers: FileTransfers,
        library: FileLibrary,
        misbehaviour: EndpointMisbehaviour | None = None,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._transfers = transfers
        self._library = library
        self._misbehaviour = misbehaviour or EndpointMisbehaviour(audit)
        # The grants given, by host, job and request number: a repeated request of the same
        # host gets the same answer; another host naming the job is asked who it is first.
        self._grants: dict[tuple[str, str, int], TransferGrant] = {}

    async def on_request(self, host_id: str, request: TransferRequest) -> TransferGrant:
        """Answer one request of a running script on `host_id`; never raises for bad input."""
        key = (host_id, request.job_id, request.seq)
        known = self._grants.get(key)
        if known is not None:
            # A repeat after a reconnect: the transfer resumes (or its end is said again).
            return known
        refusal, created_by, own = await self._check_job(host_id, request.job_id)
        if refusal is not None:
            if not own:
                await self._misbehaviour.note(host_id, TRANSFER_REQUEST, request.job_id)
            return self._refuse(request, refusal)
        transfer_id = transfer_id_for(request.job_id, request.seq)
        if request.direction == "get":
            grant = await self._grant_upload(host_id, request, transfer_id, created_by)
        else:
            grant = await self._grant_download(host_id, request, transfer_id, created_by)
        if grant.error is None:
            self._grants[key] = grant
        return grant

    async def _check_job(self, host_id: str, job_id: str) -> tuple[str | None, str, bool]:
        """Why the request is refused (or None), who ran the script, and whether the job is a
        script of this host at all."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.host_id, jobs.c.action, jobs.c.state, jobs.c.created_by).where(
                        jobs.c.id == job_id
                    )
                )
            ).one_or_none()
        # The same answer whether the job is unknown, another host's or not a script: an
        # endpoint learns nothing about jobs that are not its own.
        if row is None or row.host_id != host_id or row.action != SCRIPT_ACTION:
            return f"Job {safe_text(job_id, 64)} is not a script running on this host.", "", False
        if row.state not in _RUNNING:
            return f"Job {job_id} has ended, so its script can no longer move files.", "", True
        return None, str(row.created_by), True

    @staticmethod
    def _refuse(request: TransferRequest, reason: str) -> TransferGrant:
        return TransferGrant(job_id=request.job_id, seq=request.seq, error=reason)

    async def _grant_upload(
        self, host_id: str, request: TransferRequest, transfer_id: UUID, created_by: str
    ) -> TransferGrant:
        cap = self._transfers.max_file_bytes
        if request.size > cap:
            return self._refuse(
                request,
                f"The file is {format_size(request.size)}, over the platform's "
                f"{format_size(cap)} limit for retrieved files.",
            )

        async def received(blob: Blob) -> None:
            # What the platform itself received and verified, under the path that was named.
            await self._library.record_retrieved(
                Retrieved(
                    job_id=request.job_id,
                    host_id=host_id,
                    path=request.path,
                    size=blob.size,
                    sha256=blob.sha256,
                    mtime=None,
                    owner=None,
                    mode=None,
                    requested_by=created_by,
                    transfer_id=str(transfer_id),
                    via="script",
                )
            )

        await self._transfers.receive(
            host_id, request.job_id, transfer_id, max_bytes=cap, on_done=received
        )
        return TransferGrant(job_id=request.job_id, seq=request.seq, transfer_id=transfer_id)

    async def _grant_download(
        self, host_id: str, request: TransferRequest, transfer_id: UUID, created_by: str
    ) -> TransferGrant:
        try:
            entry = await self._library.get(request.name)
        except NotFound:
            return self._refuse(
                request, f"The file library holds no file named {safe_text(request.name, 100)!r}."
            )
        if not await self._library.blobs.exists(entry.sha256):
            return self._refuse(
                request, f"The content of library file {entry.name!r} is missing on the platform."
            )
        details: dict[str, Any] = {
            "path": request.path,
            "size": entry.size,
            "sha256": entry.sha256,
            "job": request.job_id,
            "file": entry.id,
            "via": "script",
        }

        async def delivered(_done: TransferDone) -> None:
            await self._audit.record(
                "file.deploy",
                actor=created_by,
                target=f"host:{host_id}",
                source="endpoint",
                details=details,
            )

        await self._transfers.send(
            host_id, request.job_id, transfer_id, entry.sha256, request.path, on_done=delivered
        )
        return TransferGrant(
            job_id=request.job_id,
            seq=request.seq,
            transfer_id=transfer_id,
            size=entry.size,
            sha256=entry.sha256,
        )

    async def job_finished(self, job: FinishedJob) -> None:
        """Forget the grants of an ended script; FileTransfers gives up its transfers."""
        if job.action == SCRIPT_ACTION:
            for key in [key for key in self._grants if key[1] == job.job_id]:
                del self._grants[key]
