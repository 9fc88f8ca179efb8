"""Reach the folder of a file the agent writes without following a link on the way.

The agent writes as root. A path like `/home/mallory/drop/evil.conf`, where mallory made
`drop` a link to `/opt/protected`, would otherwise put the file where mallory could not: so
the folder is opened one component at a time from `/`, each with `O_DIRECTORY | O_NOFOLLOW`
relative to the one before (an openat walk), and everything after that (create, check,
rename, remove, fsync) goes relative to the folder's descriptor. A link anywhere on the way
is refused in one sentence naming it and where it points (docs/adr/0033). Once the folder is
open, renaming or re-linking anything above it changes nothing: the descriptor stays on the
folder that was checked.

Windows has no `openat`: there each component is checked with `lstat` for a link or junction
(a reparse point) and the paths are then used by name. That leaves the window between check
and use; the state of the art there is a handle walk with `FILE_FLAG_OPEN_REPARSE_POINT`,
not done yet.
"""

import errno
import os
import stat
import sys
from pathlib import Path, PurePath

from tether.agent.errors import AgentError
from tether.protocol.text import safe_text

_QUOTED = 512
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Windows opens a descriptor in text mode without it: CRLF collapsed on reading, LF expanded on
# writing, Ctrl-Z read as the end of the file. Every file the agent moves is bytes.
_BINARY = getattr(os, "O_BINARY", 0)


class UnsafePath(AgentError):
    """The path cannot be written safely (a link on the way, a missing or non-folder part)."""


def _quoted(path: PurePath | str) -> str:
    return safe_text(str(path), _QUOTED)


def _link_refusal(link: PurePath, target: str | None) -> UnsafePath:
    where = f" (to {_quoted(target)})" if target is not None else ""
    # "Nothing was written" first: the CLI shows a job's error cut to one line.
    return UnsafePath(
        f"Nothing was written: {_quoted(link)} is a symbolic link{where}, and the agent does "
        "not follow links in a path it writes to."
    )


def _is_reparse_point(info: os.stat_result) -> bool:
    flag = getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0x400)
    return stat.S_ISLNK(info.st_mode) or bool(getattr(info, "st_file_attributes", 0) & flag)


class Folder:
    """An open folder reached without links; names inside it are used relative to it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        # None on Windows, where names are joined to the checked path instead.
        self._fd = fd
        self._closed = False

    def _at(self, name: str) -> str:
        if self._closed:
            # Never fall back to the path by name: that is what the walk is there to avoid.
            raise ValueError(f"The folder {self.path} was closed.")
        return name if self._fd is not None else str(self.path / name)

    def lstat(self, name: str) -> os.stat_result | None:
        """The status of `name` itself (a link is not followed); None when nothing is there."""
        try:
            return os.lstat(self._at(name), dir_fd=self._fd)
        except FileNotFoundError:
            return None

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """Open `name` in this folder, never through a link."""
        flags |= _NOFOLLOW | _CLOEXEC | _BINARY
        return os.open(self._at(name), flags, mode, dir_fd=self._fd)

    def replace(self, source: str, destination: str) -> None:
        """Rename within this folder (a link at `destination` is replaced, not followed)."""
        os.replace(
            self._at(source), self._at(destination), src_dir_fd=self._fd, dst_dir_fd=self._fd
        )

    def unlink(self, name: str) -> None:
        os.unlink(self._at(name), dir_fd=self._fd)

    def fsync(self) -> None:
        """Make a rename in this folder survive a crash (POSIX; Windows has no folder fsync)."""
        if self._fd is not None and not self._closed:
            os.fsync(self._fd)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)

    def __enter__(self) -> "Folder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_posix(folder: Path) -> Folder:
    parts = folder.parts
    fd = os.open(parts[0], os.O_RDONLY | _DIRECTORY | _CLOEXEC | _BINARY)
    reached = Path(parts[0])
    try:
        for part in parts[1:]:
            here = reached / part
            try:
                flags = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC | _BINARY
                next_fd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError as exc:
                raise UnsafePath(
                    f"The folder {_quoted(here)} does not exist on the endpoint."
                ) from exc
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                info = os.lstat(part, dir_fd=fd)
                if stat.S_ISLNK(info.st_mode):
                    try:
                        target: str | None = os.readlink(part, dir_fd=fd)
                    except OSError:
                        target = None
                    raise _link_refusal(here, target) from exc
                raise UnsafePath(f"{_quoted(here)} is not a folder on the endpoint.") from exc
            os.close(fd)
            fd = next_fd
            reached = here
    except BaseException:
        os.close(fd)
        raise
    return Folder(folder, fd)


def _open_windows(folder: Path) -> Folder:
    reached = Path(folder.parts[0])
    for part in folder.parts[1:]:
        reached = reached / part
        try:
            info = os.lstat(reached)
        except FileNotFoundError as exc:
            raise UnsafePath(
                f"The folder {_quoted(reached)} does not exist on the endpoint."
            ) from exc
        if _is_reparse_point(info):
            try:
                target: str | None = os.readlink(reached)
            except OSError:
                target = None
            raise _link_refusal(reached, target)
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafePath(f"{_quoted(reached)} is not a folder on the endpoint.")
    return Folder(folder, None)


def open_folder(folder: Path) -> Folder:
    """Open absolute `folder` without following a link in any of its components.

    Blocking. Raises UnsafePath (one sentence) for a link, a missing part or a part that is
    not a folder, and OSError for anything else the system refuses.
    """
    if not folder.is_absolute():
        raise UnsafePath(f"The path {_quoted(folder)} is not absolute on this endpoint.")
    if sys.platform == "win32":
        return _open_windows(folder)
    return _open_posix(folder)
