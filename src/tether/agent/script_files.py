"""`tether.script.upload` and `download`: the files a running script moves, through the agent.

Each call asks the platform first (tether.agent.transfer_requests): the platform checks that the
job is a running script of this host and, for a download, finds the library file; then the bytes
go through the same engine as `files.get` and `files.put`, with the same verification, resume
and temporary-file-then-rename rules.
"""

import asyncio
import os
import stat
from pathlib import Path
from typing import Any
from uuid import UUID

from tether.agent.actions.files import describe_os_error, require_absolute
from tether.agent.errors import ActionError
from tether.agent.transfer import AgentTransfers
from tether.protocol.text import safe_text
from tether.protocol.transfer import (
    MAX_SCRIPT_TRANSFERS,
    TransferFailed,
    TransferGrant,
    TransferRequest,
)


class ScriptFiles:
    """The file transfers of one script run (the ScriptServices of tether.agent.scripts)."""

    def __init__(self, job_id: str, transfers: AgentTransfers) -> None:
        self._job_id = job_id
        self._transfers = transfers
        self._seq = 0

    def _next_seq(self) -> int:
        if self._seq >= MAX_SCRIPT_TRANSFERS:
            raise ActionError(
                f"A script may move at most {MAX_SCRIPT_TRANSFERS} files; this one has."
            )
        seq = self._seq
        self._seq += 1
        return seq

    async def upload(self, path: str) -> dict[str, Any]:
        """Send endpoint file `path` to the platform's library; its size, SHA-256 and path."""
        require_absolute(path)
        try:
            info = await asyncio.to_thread(os.stat, path)
        except OSError as exc:
            raise describe_os_error(exc, path) from exc
        if not stat.S_ISREG(info.st_mode):
            raise ActionError(f"{safe_text(path, 300)} is not a regular file.")
        request = TransferRequest(
            job_id=self._job_id,
            seq=self._next_seq(),
            direction="get",
            path=safe_text(path, 4096),
            size=info.st_size,
        )
        async with self._transfers.requests.granted(request) as grant:
            transfer_id = _granted(grant)
            try:
                done = await self._transfers.send_file(transfer_id, self._job_id, Path(path))
            except TransferFailed as exc:
                raise ActionError(str(exc)) from exc
        return {"path": path, "size": done.size, "sha256": done.sha256}

    async def download(self, name: str, dest: str) -> dict[str, Any]:
        """Write library file `name` to endpoint path `dest`, which must not exist yet."""
        require_absolute(dest)
        destination = Path(dest)
        if await asyncio.to_thread(os.path.lexists, destination):
            raise ActionError(
                f"{safe_text(dest, 300)} already exists on the endpoint; a script's download "
                "never replaces a file, so remove it first or choose another path."
            )
        request = TransferRequest(
            job_id=self._job_id,
            seq=self._next_seq(),
            direction="put",
            path=safe_text(dest, 4096),
            name=safe_text(name, 255),
        )
        async with self._transfers.requests.granted(request) as grant:
            transfer_id = _granted(grant)
            if grant.sha256 is None:
                raise ActionError("The platform granted a download without saying what it holds.")
            try:
                received = await self._transfers.receive_file(
                    transfer_id, self._job_id, destination, size=grant.size, sha256=grant.sha256
                )
            except TransferFailed as exc:
                raise ActionError(str(exc)) from exc
        return {
            "name": name,
            "path": str(received.path),
            "size": received.size,
            "sha256": received.sha256,
        }


def _granted(grant: TransferGrant) -> UUID:
    if grant.error is not None:
        raise ActionError(grant.error)
    if grant.transfer_id is None:
        raise ActionError("The platform answered the transfer request without a transfer id.")
    return grant.transfer_id
