"""The file-system actions: list a directory, hash a file.

The blocking work (scandir, stat, reading) runs in a worker thread so the agent's connection
keeps serving heartbeats and other jobs meanwhile. What the endpoint refuses becomes an
ActionError with one sentence naming the path.
"""

import os
import stat
import sys
import threading
from datetime import UTC, datetime

from tether.agent.action import ResultBudget, run_blocking
from tether.agent.errors import ActionError
from tether.agent.hashing import NotRegularFile, digest, open_regular_file
from tether.agent.os_errors import windows_sentence
from tether.protocol import (
    MAX_PATH,
    MAX_RESULT_BYTES,
    EntryType,
    FileEntry,
    FileHash,
    FileHashArgs,
    FileList,
    FileListArgs,
    HashAlgorithm,
    clip,
    escape_text,
    safe_text,
)

if sys.platform != "win32":
    import grp
    import pwd

# A path quoted in an error message is cut to this many characters, so the sentence stays
# readable and within the status's error limit.
_QUOTED_PATH_CHARS = 512
_NAME_CHARS = 1024


def quoted(path: str) -> str:
    """`path` as an error message shows it: escaped and cut short."""
    return safe_text(path, _QUOTED_PATH_CHARS)


def describe_os_error(exc: OSError, path: str) -> ActionError:
    """The one sentence an analyst reads when the endpoint refuses access to `path`."""
    where = quoted(path)
    windows = windows_sentence(exc, where, path)
    if windows is not None:
        return ActionError(windows)
    if isinstance(exc, FileNotFoundError):
        return ActionError(f"Nothing exists at {where} on this endpoint.")
    if isinstance(exc, PermissionError):
        return ActionError(f"The endpoint denied the agent access to {where}.")
    if isinstance(exc, NotADirectoryError):
        return ActionError(f"A part of the path {where} is not a directory.")
    if isinstance(exc, IsADirectoryError):
        return ActionError(f"{where} is a directory, not a file.")
    reason = safe_text(exc.strerror or type(exc).__name__, 200)
    return ActionError(f"The endpoint could not read {where}: {reason}.")


# Where Windows would leave this machine or its file system: a UNC share (\\server\share,
# //server/share), the device and verbatim namespaces (\\.\, \\?\) and the NT object
# namespace (\??\). Opening \\attacker\x makes the endpoint sign in there with its computer
# account (NTLM coercion); a device path reaches raw disks and pipes.
_REMOTE_OR_DEVICE_PREFIXES = ("\\\\", "//", "\\/", "/\\", "\\??\\", "\\??/")


def remote_or_device(path: str) -> bool:
    """Whether `path` is a UNC, device or NT-namespace path (refused on every system: on POSIX
    a leading `//` means nothing the analyst needs)."""
    return path.startswith(_REMOTE_OR_DEVICE_PREFIXES)


def require_absolute(path: str) -> None:
    """ActionError unless `path` is a full local path on this endpoint.

    The platform checks the form; whether it is absolute here depends on this endpoint's system
    (C:\\x is relative on Linux).
    """
    if remote_or_device(path):
        raise ActionError(
            f"The path {quoted(path)} is a network or device path, which the agent refuses "
            "(opening one makes the endpoint sign in to another computer or reach a raw "
            "device); give a local path."
        )
    if not os.path.isabs(path):
        raise ActionError(
            f"The path {quoted(path)} is not absolute on this endpoint; give the full path."
        )


def utc_time(timestamp: float) -> datetime | None:
    """A file time as UTC, or None when it is out of range (a timestomped file can be)."""
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


class Accounts:
    """User and group names by id, looked up once per listing."""

    def __init__(self) -> None:
        self._users: dict[int, str | None] = {}
        self._groups: dict[int, str | None] = {}

    def user(self, uid: int) -> str | None:
        if uid not in self._users:
            self._users[uid] = self._lookup_user(uid)
        return self._users[uid]

    def group(self, gid: int) -> str | None:
        if gid not in self._groups:
            self._groups[gid] = self._lookup_group(gid)
        return self._groups[gid]

    @staticmethod
    def _lookup_user(uid: int) -> str | None:
        if sys.platform != "win32":
            try:
                return safe_text(pwd.getpwuid(uid).pw_name, 256) or str(uid)
            except KeyError:
                return str(uid)
        # st_uid means nothing on Windows; owners there are SIDs, not read yet.
        return None

    @staticmethod
    def _lookup_group(gid: int) -> str | None:
        if sys.platform != "win32":
            try:
                return safe_text(grp.getgrgid(gid).gr_name, 256) or str(gid)
            except KeyError:
                return str(gid)
        return None


def _entry_type(mode: int) -> EntryType:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _guess_type(entry: os.DirEntry[str]) -> EntryType:
    """The entry's type from the directory alone, when its status cannot be read."""
    try:
        if entry.is_symlink():
            return "symlink"
        if entry.is_dir(follow_symlinks=False):
            return "dir"
        if entry.is_file(follow_symlinks=False):
            return "file"
    except OSError:
        pass
    return "other"


def _created(status: os.stat_result) -> datetime | None:
    """When the file was created, where the endpoint records it: `st_birthtime` (macOS, BSD,
    Windows from Python 3.12), else on Windows `st_ctime`, which is the creation time there."""
    birth = getattr(status, "st_birthtime", None)
    if isinstance(birth, int | float):
        return utc_time(birth)
    if sys.platform == "win32":
        return utc_time(status.st_ctime)
    return None


def _describe(entry: os.DirEntry[str], accounts: Accounts) -> FileEntry:
    name, name_escaped = escape_text(entry.name)
    try:
        status: os.stat_result | None = entry.stat(follow_symlinks=False)
    except OSError:
        # Vanished since the directory was read, or not searchable: listed with what is known.
        status = None
    kind = _entry_type(status.st_mode) if status is not None else _guess_type(entry)
    target: str | None = None
    target_escaped = False
    if kind == "symlink":
        try:
            target, target_escaped = escape_text(os.readlink(entry.path))
        except OSError:
            target = None
    return FileEntry(
        name=clip(name, _NAME_CHARS),
        type=kind,
        size=status.st_size if status is not None else None,
        mode=f"{stat.S_IMODE(status.st_mode):04o}" if status is not None else None,
        owner=accounts.user(status.st_uid) if status is not None else None,
        group=accounts.group(status.st_gid) if status is not None else None,
        mtime=utc_time(status.st_mtime) if status is not None else None,
        atime=utc_time(status.st_atime) if status is not None else None,
        ctime=utc_time(status.st_ctime) if status is not None else None,
        created=_created(status) if status is not None else None,
        target=clip(target, MAX_PATH) if target is not None else None,
        escaped=name_escaped or target_escaped,
    )


def list_directory(path: str, limit: int, budget_bytes: int = MAX_RESULT_BYTES) -> FileList:
    """The entries of directory `path` by name, at most `limit` and `budget_bytes` of them.

    Blocking. Raises ActionError when the path is relative, missing, refused or not a directory.
    """
    require_absolute(path)
    try:
        # Follows a link given as the path itself: listing /var/run means listing /run.
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise ActionError(f"{quoted(path)} is not a directory; files.list lists directories.")
        accounts = Accounts()
        found: list[FileEntry] = []
        truncated = False
        with os.scandir(path) as directory:
            for dir_entry in directory:
                if len(found) == limit:
                    truncated = True
                    break
                found.append(_describe(dir_entry, accounts))
    except OSError as exc:
        raise describe_os_error(exc, path) from exc
    found.sort(key=lambda entry: entry.name)
    budget = ResultBudget(budget_bytes)
    listed: list[FileEntry] = []
    for entry in found:
        if not budget.fits(entry):
            truncated = True
            break
        listed.append(entry)
    return FileList(path=safe_text(path, MAX_PATH), entries=listed, truncated=truncated)


def hash_path(
    path: str, algorithms: list[HashAlgorithm], stop: threading.Event | None = None
) -> FileHash:
    """Digests of the regular file at `path` (links followed), read in 1 MiB chunks. Blocking.

    Raises ActionError for a relative path, a directory, a FIFO or device, or a refused path,
    and Stopped once `stop` is set.
    """
    require_absolute(path)
    try:
        # Checked first for the message: opening a directory fails differently on each system.
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise ActionError(f"{quoted(path)} is a directory; files.hash hashes one file.")
        file, status = open_regular_file(path)
        with file:
            digests, size = digest(file, algorithms, stop)
    except NotRegularFile as exc:
        raise ActionError(
            f"{quoted(path)} is not a regular file (a FIFO, socket or device), so the agent does not read it."
        ) from exc
    except OSError as exc:
        raise describe_os_error(exc, path) from exc
    return FileHash(
        path=safe_text(path, MAX_PATH),
        size=size,
        mtime=utc_time(status.st_mtime),
        sha256=digests.get("sha256"),
        sha1=digests.get("sha1"),
        md5=digests.get("md5"),
    )


async def list_files(args: FileListArgs) -> FileList:
    """Handler of `files.list`."""
    return await run_blocking(lambda stop: list_directory(args.path, args.limit))


async def hash_file(args: FileHashArgs) -> FileHash:
    """Handler of `files.hash`."""
    algorithms = list(args.algorithms)
    return await run_blocking(lambda stop: hash_path(args.path, algorithms, stop))
