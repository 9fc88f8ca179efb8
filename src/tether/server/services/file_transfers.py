"""The platform's file transfers, driven by `files.get` and `files.put` jobs.

One transfer engine per host (tether.server.services.transfers.HostTransfers), created when a
transfer needs it, attached to the host's connection while there is one. A transfer is started
when its job is sent, and again when the job is re-sent after a reconnect or a platform restart:
the transfer id is derived from the job id, so a retrieval resumes from the partial file on disk.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from tether.protocol.transfer import (
    AnyTransferMessage,
    TransferFailed,
    Transport,
    transfer_id_for,
)
from tether.server.services.transfers import HostTransfers
from tether.server.store.blobs import Blob, BlobError, BlobStore

log = logging.getLogger(__name__)

TRANSFER_ACTIONS = frozenset({"files.get", "files.put"})


@dataclass(frozen=True)
class FinishedJob:
    """A job that reached a final state, as the services that care about it see it."""

    job_id: str
    host_id: str
    action: str
    state: str
    result: dict[str, Any] | None
    error: str | None
    created_by: str
    # The arguments the job was submitted with (what was asked, as opposed to what was said).
    args: dict[str, Any]


class FileTransfers:
    def __init__(self, store: BlobStore, *, max_file_bytes: int) -> None:
        self.store = store
        self._max = max_file_bytes
        self._engines: dict[str, HostTransfers] = {}
        self._links: dict[str, Transport] = {}
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        # What this platform itself received and verified, by job: the only file a files.get
        # job may be credited with, whatever its agent reports.
        self._verified: dict[str, Blob] = {}

    def verified(self, job_id: str) -> Blob | None:
        """The blob this process verified for the job's retrieval, taken once."""
        return self._verified.pop(job_id, None)

    def _engine(self, host_id: str) -> HostTransfers:
        engine = self._engines.get(host_id)
        if engine is None:
            engine = self._engines[host_id] = HostTransfers(self.store)
        return engine

    async def connected(self, host_id: str, link: Transport) -> None:
        self._links[host_id] = link
        engine = self._engines.get(host_id)
        if engine is not None:
            await engine.attach(link)

    def disconnected(self, host_id: str, link: Transport) -> None:
        if self._links.get(host_id) is link:
            del self._links[host_id]
            engine = self._engines.get(host_id)
            if engine is not None:
                engine.detach()

    async def _attached_engine(self, host_id: str) -> HostTransfers:
        known = host_id in self._engines
        engine = self._engine(host_id)
        link = self._links.get(host_id)
        if not known and link is not None:
            await engine.attach(link)
        return engine

    async def on_message(self, host_id: str, message: AnyTransferMessage) -> None:
        """A transfer message from the host's agent (ProtocolError when it breaks the rules)."""
        await (await self._attached_engine(host_id)).on_message(message)

    async def on_chunk(self, host_id: str, frame: bytes) -> None:
        await (await self._attached_engine(host_id)).on_chunk(frame)

    async def start_for_job(
        self, host_id: str, job_id: str, action: str, args: dict[str, Any]
    ) -> None:
        """Be ready for the job's transfer (once; a second call while it runs does nothing)."""
        if action not in TRANSFER_ACTIONS:
            return
        transfer_id = transfer_id_for(job_id)
        if transfer_id in self._tasks:
            return
        engine = await self._attached_engine(host_id)
        if action == "files.get":
            # The job's own cap, not only the platform's: the endpoint sends what it likes.
            cap = min(int(args.get("max_bytes", self._max)), self._max)
            work: Any = engine.receive_file(transfer_id, job_id, max_bytes=cap)
        else:
            work = engine.send_blob(
                transfer_id, job_id, str(args["sha256"]), path=str(args["path"])
            )
        task = asyncio.create_task(self._run(work, job_id), name=f"transfer {job_id}")
        self._tasks[transfer_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(transfer_id, None))

    async def _run(self, work: Any, job_id: str) -> None:
        try:
            received = await work
        except (TransferFailed, BlobError) as exc:
            # The agent reports the job failed with its side of the story; this is the log's.
            log.info("The transfer of job %s ended without a file: %s", job_id, exc)
            return
        if isinstance(received, Blob):
            self._verified[job_id] = received

    async def job_finished(self, job: FinishedJob) -> None:
        """A transfer job ended: give up whatever of its transfer is still open, and its
        partial file, even when the agent says it succeeded (it may not have sent a thing)."""
        if job.action not in TRANSFER_ACTIONS:
            return
        transfer_id = transfer_id_for(job.job_id)
        task = self._tasks.pop(transfer_id, None)
        engine = self._engines.get(job.host_id)
        if task is not None and engine is not None:
            await engine.abort(transfer_id, job.error or f"The job ended {job.state}.")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # A partial left by a run of the platform that never saw this host again.
        await asyncio.to_thread(self.store.discard_partial, transfer_id)

    async def close(self) -> None:
        """Stop waiting for transfers (partials stay on disk for the next start to resume)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
