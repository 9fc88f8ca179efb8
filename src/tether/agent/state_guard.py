"""The state directory holds the agent's private key: who may change it, and how files go in.

The agent runs as root (SYSTEM on Windows) and trusts what it reads here, so a directory that
another account created, or can write to, or that sits below a folder another account can
write to, is refused before anything is read from or written to it (docs/adr/0033). Files are
created exclusively (`O_EXCL | O_NOFOLLOW`, mode 0600 at creation), so a name planted there
beforehand, a symbolic link to a file the planter can read, is never written through.

On Windows the agent creates the directory itself, owned by SYSTEM (or Administrators) with a
protected DACL for SYSTEM and Administrators only, and checks owner and DACL of it and of the
folders above it at every start (tether.agent.windows_acl, docs/adr/0041).
"""

import contextlib
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path, PurePath

from tether.agent import windows_acl
from tether.agent.errors import AgentError

if sys.platform != "win32":
    import pwd

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Windows opens a descriptor in text mode without it (CRLF collapsed, Ctrl-Z read as the end).
_BINARY = getattr(os, "O_BINARY", 0)


class UnsafeStateDir(AgentError):
    """The state directory could be read or changed by an account other than the agent's."""


def _account(uid: int) -> str:
    if sys.platform != "win32":
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            pass
    return f"user {uid}"


def _euid() -> int:
    """The account the agent runs as (POSIX; Windows checks owners by SID instead)."""
    if sys.platform != "win32":
        return os.geteuid()
    return -1


def _trusted_owner(uid: int) -> bool:
    """Root, or the account the agent runs as (a developer's own agent runs unprivileged)."""
    return uid in (0, _euid())


def _check_posix_folder(folder: Path, info: os.stat_result, root: Path) -> None:
    is_root = folder == root
    if not _trusted_owner(info.st_uid):
        mine = _account(_euid())
        if is_root:
            raise UnsafeStateDir(
                f"The state directory {root} belongs to {_account(info.st_uid)}, not {mine}, "
                "so the agent refuses it; remove it or choose another --state-dir."
            )
        raise UnsafeStateDir(
            f"{folder}, a parent of the state directory {root}, belongs to "
            f"{_account(info.st_uid)}, so the agent refuses it; choose another --state-dir."
        )
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    # A sticky folder of root's (/tmp) lets nobody else rename or remove what is in it.
    if writable_by_others and (is_root or not (info.st_mode & stat.S_ISVTX and info.st_uid == 0)):
        mode = f"{stat.S_IMODE(info.st_mode):04o}"
        if is_root:
            raise UnsafeStateDir(
                f"The state directory {root} can be written by other users (mode {mode}), "
                "so the agent refuses it; remove it or choose another --state-dir."
            )
        raise UnsafeStateDir(
            f"{folder}, a parent of the state directory {root}, can be written by other users "
            f"(mode {mode}), so the agent refuses it; choose another --state-dir."
        )


def _check_posix(root: Path) -> None:
    # The real path, checked from the top: once every folder on it is the agent's (or root's)
    # and nobody else can write to it, nobody else can swap any of them afterwards either.
    for folder in (*reversed(root.parents), root):
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            return  # checking before creating: what is missing is made by the agent itself
        _check_posix_folder(folder, info, root)


def _check_windows(root: Path, read_sddl: Callable[[PurePath], str | None]) -> None:
    """Refuse a link or junction, then owner and DACL of `root` and the folders above it
    (tether.agent.windows_acl)."""
    info = os.lstat(root)
    if getattr(info, "st_file_attributes", 0) & getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0):
        raise UnsafeStateDir(
            f"The state directory {root} is a link or junction, so the agent refuses it; "
            "give the real folder."
        )
    try:
        problem = windows_acl.check_tree(root, read_sddl)
    except OSError as exc:
        raise UnsafeStateDir(
            f"The agent could not read who may use the state directory {root} "
            f"({exc.strerror or exc}), so it refuses it."
        ) from exc
    if problem is not None:
        raise UnsafeStateDir(problem)


def _create_windows(real: Path) -> None:
    """Create every missing folder down to `real` with the private owner and DACL from the
    start, so no folder the agent makes ever has another ACL, even for a moment."""
    missing = []
    folder = real
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            windows_acl.create_private_dir(folder)
        except OSError as exc:
            raise UnsafeStateDir(
                f"The agent could not create {folder} with its own permissions "
                f"({exc.strerror or exc}); choose another --state-dir."
            ) from exc


def secure_state_dir(root: Path, *, create: bool = True) -> Path:
    """Refuse `root` if another account could touch it; create it (0700) if missing.

    With `create=False` a missing directory is not made, only the folders above it that exist
    are checked (enrollment checks first and writes only once it succeeded). Returns the real
    path (links resolved), which the caller uses from then on. Raises UnsafeStateDir with the
    sentence the operator reads.
    """
    real = Path(os.path.realpath(os.path.abspath(root)))
    if sys.platform == "win32":
        if create:
            _create_windows(real)
        if real.exists() and not real.is_dir():
            raise UnsafeStateDir(
                f"The state directory {real} is not a folder; choose another --state-dir."
            )
        if real.exists():
            _check_windows(real, windows_acl.read_sddl)
        else:
            # Enrollment checks before it creates: the folders above must already be safe.
            problem = windows_acl.check_tree(real, windows_acl.read_sddl)
            if problem is not None:
                raise UnsafeStateDir(problem)
        return real
    if create and not real.exists():
        # Parents first (0755 like any system folder), the directory itself owner-only.
        real.parent.mkdir(parents=True, exist_ok=True)
        # Another process may make it meanwhile: then it is checked below like any other.
        with contextlib.suppress(FileExistsError):
            real.mkdir(mode=0o700)
    if real.exists() and not real.is_dir():
        raise UnsafeStateDir(
            f"The state directory {real} is not a folder; choose another --state-dir."
        )
    _check_posix(real)
    if real.exists():
        # Its own and nobody else can write it: now also nobody else reads it.
        os.chmod(real, 0o700)
    return real


def create_exclusive(path: Path, data: bytes) -> None:
    """Write `data` to a new file `path` (0600 from creation); a name already there is removed
    first, without following it, and never written through."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def restrict_existing(path: Path) -> None:
    """Make an existing file owner-only (a journal an older agent made 0644), links left alone."""
    if sys.platform == "win32":
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != 0o600:
        os.chmod(path, 0o600)
