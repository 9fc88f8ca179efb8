"""`files.get` and `files.put`: move one file between the endpoint and the platform.

The bytes go through the agent's transfer engine (tether.agent.transfer), which resumes across
reconnects; the transfer id is derived from the job id, so the platform knows it without asking.
"""

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from tether.agent.actions.files import Accounts, describe_os_error, require_absolute, utc_time
from tether.agent.context import job_context
from tether.agent.errors import ActionError
from tether.agent.path_walk import UnsafePath, open_folder
from tether.agent.transfer import AgentTransfers
from tether.protocol import FileGetArgs, FileGetResult, FilePutArgs, FilePutResult
from tether.protocol.filesystem import MAX_PATH, LinkFollowed
from tether.protocol.text import clip, escape_text, safe_text
from tether.protocol.transfer import TransferFailed, format_size, transfer_id_for


def _engine() -> tuple[str, AgentTransfers]:
    context = job_context()
    if context.transfers is None:
        raise ActionError("This agent has no file transfer channel to the platform.")
    return context.job_id, context.transfers


@dataclass(frozen=True)
class _Source:
    """What the path to retrieve named: the file that will be read and, for a link, the link."""

    info: os.stat_result
    link: tuple[str, str, os.stat_result] | None  # (link text, resolved path, the link's lstat)


def _inspect_source(path: str) -> _Source:
    """Look at `path` itself first: a link is described as a link, then followed. Blocking."""
    named = os.lstat(path)
    if not stat.S_ISLNK(named.st_mode):
        return _Source(named, None)
    text = os.readlink(path)
    info = os.stat(path)
    return _Source(info, (text, os.path.realpath(path), named))


def _link_followed(source: _Source, accounts: Accounts) -> LinkFollowed | None:
    if source.link is None:
        return None
    text, resolved, link_info = source.link
    target, target_escaped = escape_text(text)
    resolved_text, resolved_escaped = escape_text(resolved)
    info = source.info
    return LinkFollowed(
        target=clip(target, MAX_PATH),
        resolved=clip(resolved_text, MAX_PATH),
        link_owner=accounts.user(link_info.st_uid),
        owner=accounts.user(info.st_uid),
        mode=f"{stat.S_IMODE(info.st_mode):04o}",
        mtime=utc_time(info.st_mtime),
        escaped=target_escaped or resolved_escaped,
    )


async def get_file(args: FileGetArgs) -> FileGetResult:
    """Send the file to the platform; the result describes it as it was when sent.

    A symbolic link is followed and recorded as one (docs/adr/0033): where it pointed, the file
    read, and that file's owner and mode under `link`, never as the link's own.
    """
    job_id, transfers = _engine()
    require_absolute(args.path)
    try:
        source = await asyncio.to_thread(_inspect_source, args.path)
    except OSError as exc:
        raise describe_os_error(exc, args.path) from exc
    info = source.info
    if stat.S_ISDIR(info.st_mode):
        raise ActionError(f"{safe_text(args.path, 300)} is a directory; give the path of a file.")
    if info.st_size > args.max_bytes:
        raise ActionError(
            f"The file is {format_size(info.st_size)}, over the {format_size(args.max_bytes)} "
            "limit for this retrieval."
        )
    try:
        done = await transfers.send_file(
            transfer_id_for(job_id),
            job_id,
            Path(args.path),
            expect=(info.st_dev, info.st_ino),
        )
    except TransferFailed as exc:
        raise ActionError(str(exc)) from exc
    accounts = Accounts()
    link = _link_followed(source, accounts)
    return FileGetResult(
        path=safe_text(args.path, 4096),
        size=done.size,
        sha256=done.sha256,
        mtime=utc_time(info.st_mtime) if link is None else None,
        owner=accounts.user(info.st_uid) if link is None else None,
        mode=f"{stat.S_IMODE(info.st_mode):04o}" if link is None else None,
        link=link,
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
            transfer_id_for(job_id),
            job_id,
            destination,
            size=args.size,
            sha256=args.sha256,
            mode=int(args.mode, 8) if args.mode is not None else None,
        )
    except TransferFailed as exc:
        raise ActionError(str(exc)) from exc
    return FilePutResult(
        path=safe_text(str(received.path), 4096),
        size=received.size,
        sha256=received.sha256,
        mode=f"{received.mode:04o}" if received.mode is not None else None,
    )
