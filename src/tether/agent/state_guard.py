"""The state directory holds the agent's private key: who may change it, and how files go in.

The agent runs as root (SYSTEM on Windows) and trusts what it reads here, so a directory that
another account created, or can write to, or that sits below a folder another account can
write to, is refused before anything is read from or written to it (docs/adr/0033). Files are
created exclusively (`O_EXCL | O_NOFOLLOW`, mode 0600 at creation), so a name planted there
beforehand, a symbolic link to a file the planter can read, is never written through.
"""

import contextlib
import os
import stat
import sys
from pathlib import Path

from tether.agent.errors import AgentError

if sys.platform != "win32":
    import pwd

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Windows opens a descriptor in text mode without it (CRLF collapsed, Ctrl-Z read as the end).
_BINARY = getattr(os, "O_BINARY", 0)


class UnsafeStateDir(AgentError):
    """The state directory could be read or changed by an account other than the agent's."""


def _account(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"user {uid}"


def _trusted_owner(uid: int) -> bool:
    """Root, or the account the agent runs as (a developer's own agent runs unprivileged)."""
    return uid in (0, os.geteuid())


def _check_posix_folder(folder: Path, info: os.stat_result, root: Path) -> None:
    is_root = folder == root
    if not _trusted_owner(info.st_uid):
        mine = _account(os.geteuid())
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


# Windows: owners the agent accepts for its state directory (SYSTEM, Administrators). The
# installer creates it with an ACL for those two only; a folder another account created is
# owned by that account. Written for the service install; not run by this repository's tests.
_WINDOWS_TRUSTED_SIDS = ("S-1-5-18", "S-1-5-32-544")


def _windows_owner_sid(folder: Path) -> str:
    import ctypes
    from ctypes import wintypes

    advapi = ctypes.WinDLL("advapi32")  # type: ignore[attr-defined,unused-ignore]
    kernel = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined,unused-ignore]
    se_file_object, owner_security_information = 1, 1
    owner = ctypes.c_void_p()
    descriptor = ctypes.c_void_p()
    status = advapi.GetNamedSecurityInfoW(
        wintypes.LPCWSTR(str(folder)),
        se_file_object,
        owner_security_information,
        ctypes.byref(owner),
        None,
        None,
        None,
        ctypes.byref(descriptor),
    )
    if status != 0:
        raise UnsafeStateDir(
            f"The agent could not read who owns the state directory {folder} "
            f"(error {status}), so it refuses it."
        )
    try:
        text = wintypes.LPWSTR()
        if not advapi.ConvertSidToStringSidW(owner, ctypes.byref(text)):
            raise UnsafeStateDir(
                f"The agent could not read who owns the state directory {folder}, so it refuses it."
            )
        sid = str(text.value)
        kernel.LocalFree(text)
        return sid
    finally:
        kernel.LocalFree(descriptor)


def _check_windows(root: Path) -> None:
    info = os.lstat(root)
    if getattr(info, "st_file_attributes", 0) & getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0):
        raise UnsafeStateDir(
            f"The state directory {root} is a link or junction, so the agent refuses it; "
            "give the real folder."
        )
    sid = _windows_owner_sid(root)
    if sid not in _WINDOWS_TRUSTED_SIDS:
        raise UnsafeStateDir(
            f"The state directory {root} is owned by {sid}, not SYSTEM or Administrators, "
            "so the agent refuses it; remove it or choose another --state-dir."
        )


def secure_state_dir(root: Path, *, create: bool = True) -> Path:
    """Refuse `root` if another account could touch it; create it (0700) if missing.

    With `create=False` a missing directory is not made, only the folders above it that exist
    are checked (enrollment checks first and writes only once it succeeded). Returns the real
    path (links resolved), which the caller uses from then on. Raises UnsafeStateDir with the
    sentence the operator reads.
    """
    real = Path(os.path.realpath(os.path.abspath(root)))
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
    if sys.platform == "win32":
        if real.exists():
            _check_windows(real)
        return real
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
