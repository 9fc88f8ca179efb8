"""`files.get` and `files.put`: move one file between the endpoint and the platform.

The bytes go through the agent's transfer engine (tether.agent.transfer), which resumes across
reconnects; the transfer id is derived from the job id, so the platform knows it without asking.
"""

import asyncio
import os
import stat
from pathlib import Path

from tether.agent.actions.files import Accounts, describe_os_error, require_absolute, utc_time
from tether.agent.context import job_context
from tether.agent.errors import ActionError
from tether.agent.path_walk import UnsafePath, open_folder
from tether.agent.transfer import AgentTransfers
from tether.protocol import FileGetArgs, FileGetResult, FilePutArgs, FilePutResult
from tether.protocol.text import safe_text
from tether.protocol.transfer import TransferFailed, format_size, transfer_id_for


def _engine() -> tuple[str, AgentTransfers]:
    context = job_context()
    if context.transfers is None:
        raise ActionError("This agent has no file transfer channel to the platform.")
    return context.job_id, context.transfers


async def get_file(args: FileGetArgs) -> FileGetResult:
    """Send the file to the platform; the result describes it as it was when sent."""
    job_id, transfers = _engine()
    require_absolute(args.path)
    try:
        info = await asyncio.to_thread(os.stat, args.path)
    except OSError as exc:
        raise describe_os_error(exc, args.path) from exc
    if stat.S_ISDIR(info.st_mode):
        raise ActionError(f"{safe_text(args.path, 300)} is a directory; give the path of a file.")
    if info.st_size > args.max_bytes:
        raise ActionError(
            f"The file is {format_size(info.st_size)}, over the {format_size(args.max_bytes)} "
            "limit for this retrieval."
        )
    try:
        done = await transfers.send_file(transfer_id_for(job_id), job_id, Path(args.path))
    except TransferFailed as exc:
        raise ActionError(str(exc)) from exc
    return FileGetResult(
        path=safe_text(args.path, 4096),
        size=done.size,
        sha256=done.sha256,
        mtime=utc_time(info.st_mtime),
        owner=Accounts().user(info.st_uid),
        mode=f"{stat.S_IMODE(info.st_mode):04o}",
    )


def _destination_now(destination: Path) -> tuple[bool, bool]:
    """Whether `destination` is a folder, and whether anything is there (a link counts, and is
    not followed). Its folder is reached without links, as the write will be; a link on the way
    is refused here, in the sentence the analyst reads. Blocking."""
    try:
        with open_folder(destination.parent) as folder:
            named = folder.lstat(destination.name)
    except UnsafePath as exc:
        raise ActionError(str(exc)) from exc
    except OSError as exc:
        raise describe_os_error(exc, str(destination.parent)) from exc
    return named is not None and stat.S_ISDIR(named.st_mode), named is not None


async def put_file(args: FilePutArgs) -> FilePutResult:
    """Receive the library file into a temporary file beside `path`, verify, rename into place."""
    job_id, transfers = _engine()
    require_absolute(args.path)
    destination = Path(args.path)
    is_dir, exists = await asyncio.to_thread(_destination_now, destination)
    if is_dir:
        raise ActionError(f"{safe_text(args.path, 300)} is a directory; give the path of a file.")
    if exists and not args.overwrite:
        raise ActionError(
            f"{safe_text(args.path, 300)} already exists on the endpoint; "
            "ask for overwrite to replace it."
        )
    try:
        received = await transfers.receive_file(
            transfer_id_for(job_id), job_id, destination, size=args.size, sha256=args.sha256
        )
    except TransferFailed as exc:
        raise ActionError(str(exc)) from exc
    return FilePutResult(
        path=safe_text(str(received.path), 4096), size=received.size, sha256=received.sha256
    )
