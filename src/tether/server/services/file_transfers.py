"""The platform's file transfers, driven by `files.get` and `files.put` jobs.

One transfer engine per host (tether.server.services.transfers.HostTransfers), created when a
transfer needs it, attached to the host's connection while there is one. A transfer is started
when its job is sent, and again when the job is re-sent after a reconnect or a platform restart:
the transfer id is derived from the job id, so a retrieval resumes from the partial file on disk.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.action_names import AGENT_UPGRADE, FILES_GET, FILES_PUT, SCRIPT_RUN
from tether.protocol.transfer import (
    MAX_SCRIPT_TRANSFERS,
    AnyTransferMessage,
    TransferDone,
    TransferFailed,
    TransferGrant,
    TransferRequest,
    Transport,
    transfer_id_for,
)
from tether.protocol.transfer_engine import Progress
from tether.server.services.transfer_progress import TransferProgress
from tether.server.services.transfers import HostTransfers
from tether.server.store.blobs import Blob, BlobError, BlobStore
from tether.server.store.tables import jobs

log = logging.getLogger(__name__)

# agent.upgrade sends its bundle archive from the library as a files.put sends a file.
TRANSFER_ACTIONS = frozenset({FILES_GET, FILES_PUT, AGENT_UPGRADE})
# Scripts move files through tether.script upload and download (services.script_files).
SCRIPT_ACTION = SCRIPT_RUN


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


RequestHandler = Callable[[str, TransferRequest], Awaitable[TransferGrant]]
Finished = Callable[[Any], Awaitable[None]]


class FileTransfers:
    def __init__(
        self,
        store: BlobStore,
        *,
        max_file_bytes: int,
        progress: TransferProgress | None = None,
    ) -> None:
        self.store = store
        self.max_file_bytes = max_file_bytes
        # Where bytes and rate go for people to watch (the jobs table), by the job moving them.
        self._progress = progress
        self._job_of: dict[UUID, str] = {}
        self._engines: dict[str, HostTransfers] = {}
        self._links: dict[str, Transport] = {}
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        # The transfers of each job still running: a script may move several files.
        self._by_job: dict[str, set[UUID]] = {}
        # Answers a running script's transfer.request (tether.server.services.script_files).
        self.on_request_handler: RequestHandler | None = None
        # What this platform itself received and verified, by job: the only file a files.get
        # job may be credited with, whatever its agent reports.
        self._verified: dict[str, Blob] = {}
        # The host each files.put job sends to, so its outcome can be asked for by job.
        self._put_hosts: dict[str, str] = {}

    def verified(self, job_id: str) -> Blob | None:
        """The blob this process verified for the job's retrieval, taken once."""
        return self._verified.pop(job_id, None)

    def verified_for(self, job_id: str) -> Blob | None:
        """The blob this process verified for the job's retrieval, left in place."""
        return self._verified.get(job_id)

    def delivery(self, job_id: str) -> TransferDone | str | None:
        """How this process's send for `files.put` job `job_id` ended: the agent's done, given
        only after every byte was streamed from here and matched by the hash of the file it
        wrote; the reason it is not believed; or None when no send ended here."""
        host_id = self._put_hosts.get(job_id)
        engine = self._engines.get(host_id) if host_id is not None else None
        return engine.send_outcome(transfer_id_for(job_id)) if engine is not None else None

    def _engine(self, host_id: str) -> HostTransfers:
        engine = self._engines.get(host_id)
        if engine is None:
            engine = self._engines[host_id] = HostTransfers(self.store, progress=self._moved)
        return engine

    def _moved(self, progress: Progress) -> None:
        job_id = self._job_of.get(progress.transfer_id)
        if job_id is not None and self._progress is not None:
            self._progress.note(job_id, progress)

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

    async def on_request(self, host_id: str, message: TransferRequest) -> None:
        """A running script of the host asks to move a file: answer with a grant."""
        if self.on_request_handler is None:
            grant = TransferGrant(
                job_id=message.job_id,
                seq=message.seq,
                error="This platform does not move files for scripts.",
            )
        else:
            grant = await self.on_request_handler(host_id, message)
        link = self._links.get(host_id)
        if link is not None:
            with contextlib.suppress(ConnectionError):
                await link.send_text(grant.model_dump_json())

    async def on_chunk(self, host_id: str, frame: bytes) -> None:
        await (await self._attached_engine(host_id)).on_chunk(frame)

    async def start_for_job(
        self, host_id: str, job_id: str, action: str, args: dict[str, Any]
    ) -> None:
        """Be ready for the job's transfer (once; a second call while it runs does nothing)."""
        if action not in TRANSFER_ACTIONS:
            return
        transfer_id = transfer_id_for(job_id)
        if action == FILES_GET:
            # The job's own cap, not only the platform's: the endpoint sends what it likes.
            cap = min(int(args.get("max_bytes", self.max_file_bytes)), self.max_file_bytes)
            await self.receive(host_id, job_id, transfer_id, max_bytes=cap, on_done=None)
        else:
            self._put_hosts[job_id] = host_id
            path = str(args.get("path") or f"agent bundle {args.get('version', '')}".strip())
            await self.send(host_id, job_id, transfer_id, str(args["sha256"]), path, on_done=None)

    async def receive(
        self,
        host_id: str,
        job_id: str,
        transfer_id: UUID,
        *,
        max_bytes: int,
        on_done: Callable[[Blob], Awaitable[None]] | None,
    ) -> None:
        """Wait for the host to send transfer `transfer_id` (once); `on_done` gets the blob,
        or without it the blob is kept for `verified(job_id)`."""
        if transfer_id in self._tasks:
            return
        engine = await self._attached_engine(host_id)
        work = engine.receive_file(transfer_id, job_id, max_bytes=max_bytes)
        self._track(job_id, transfer_id, self._run(work, job_id, on_done))

    async def send(
        self,
        host_id: str,
        job_id: str,
        transfer_id: UUID,
        sha256: str,
        path: str,
        *,
        on_done: Callable[[TransferDone], Awaitable[None]] | None,
    ) -> None:
        """Send library blob `sha256` to the host as transfer `transfer_id` (once, and never
        again once the agent confirmed it: a job re-sent after a reconnect must not restart it)."""
        if transfer_id in self._tasks:
            return
        engine = await self._attached_engine(host_id)
        if isinstance(engine.send_outcome(transfer_id), TransferDone):
            return
        work = engine.send_blob(transfer_id, job_id, sha256, path=path)
        self._track(job_id, transfer_id, self._run(work, job_id, on_done))

    def _track(self, job_id: str, transfer_id: UUID, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"transfer {job_id}")
        self._tasks[transfer_id] = task
        self._by_job.setdefault(job_id, set()).add(transfer_id)
        self._job_of[transfer_id] = job_id

        def forget(_task: "asyncio.Task[None]") -> None:
            self._tasks.pop(transfer_id, None)
            self._job_of.pop(transfer_id, None)

        task.add_done_callback(forget)

    async def _run(self, work: Awaitable[Any], job_id: str, on_done: Finished | None) -> None:
        try:
            outcome = await work
        except (TransferFailed, BlobError) as exc:
            # The agent reports the job failed with its side of the story; this is the log's.
            log.info("The transfer of job %s ended without a file: %s", job_id, exc)
            return
        if on_done is not None:
            await on_done(outcome)
        elif isinstance(outcome, Blob):
            self._verified[job_id] = outcome

    async def job_finished(self, job: FinishedJob) -> None:
        """A job that moves files ended: give up whatever of its transfers is still open, and
        their partial files, even when the agent says it succeeded (it may not have sent a
        thing)."""
        if job.action in TRANSFER_ACTIONS:
            possible = {transfer_id_for(job.job_id)}
        elif job.action == SCRIPT_ACTION:
            possible = {transfer_id_for(job.job_id, seq) for seq in range(MAX_SCRIPT_TRANSFERS)}
        else:
            return
        tracked = self._by_job.pop(job.job_id, set())
        # A put's outcome was checked before its ending was recorded (Dispatcher.check_result).
        self._put_hosts.pop(job.job_id, None)
        engine = self._engines.get(job.host_id)
        if engine is not None:
            for transfer_id in possible | tracked:
                engine.forget_send(transfer_id)
        for transfer_id in tracked:
            task = self._tasks.pop(transfer_id, None)
            if task is None:
                continue
            if engine is not None:
                await engine.abort(transfer_id, job.error or f"The job ended {job.state}.")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Partials, including those of a run of the platform that never saw this host again.
        await asyncio.to_thread(self._discard_partials, possible | tracked)

    def _discard_partials(self, transfer_ids: set[UUID]) -> None:
        for transfer_id in transfer_ids:
            self.store.discard_partial(transfer_id)

    async def sweep_partials(self, engine: AsyncEngine) -> int:
        """At start: remove partial files no unfinished job can resume (a library upload cut
        off by a crash, a transfer whose job ended while this platform was down); how many."""
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(jobs.c.id, jobs.c.action).where(
                        jobs.c.action.in_([*TRANSFER_ACTIONS, SCRIPT_ACTION]),
                        jobs.c.state.in_(("queued", "delivered", "running")),
                    )
                )
            ).all()
        keep: set[UUID] = set()
        for row in rows:
            if row.action == SCRIPT_ACTION:
                keep.update(transfer_id_for(row.id, seq) for seq in range(MAX_SCRIPT_TRANSFERS))
            else:
                keep.add(transfer_id_for(row.id))
        return await asyncio.to_thread(self.store.discard_partials_except, keep)

    async def close(self) -> None:
        """Stop waiting for transfers (partials stay on disk for the next start to resume)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._progress is not None:
            await self._progress.close()
