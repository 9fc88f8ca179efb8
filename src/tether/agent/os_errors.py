"""What Windows means by an error the agent meets on a file, in the analyst's sentence.

Windows refuses a file for three reasons an analyst handles differently, all of which Python
raises as PermissionError or FileNotFoundError: the file is locked by another process (a
registry hive, a database, an EVTX the event log holds open: retry or collect it from a
volume shadow copy), access is denied (the ACL), or the path is longer than Windows allows
without long-path support (260 characters). The Windows error number tells them apart.
"""

import sys

# winerror.h
ERROR_ACCESS_DENIED = 5
ERROR_SHARING_VIOLATION = 32
ERROR_LOCK_VIOLATION = 33
ERROR_PATH_NOT_FOUND = 3
ERROR_FILENAME_EXCED_RANGE = 206
# MAX_PATH, counting the terminating NUL.
WINDOWS_MAX_PATH = 260


def windows_error(exc: OSError) -> int | None:
    """The Windows error number of `exc` (set on Windows only)."""
    code = getattr(exc, "winerror", None)
    return code if isinstance(code, int) else None


def windows_sentence(
    exc: OSError, where: str, path: str, windows: bool | None = None
) -> str | None:
    """The sentence for a Windows-specific refusal of `path` (quoted as `where`), or None.

    `windows` says whether the endpoint is Windows (default: this machine).
    """
    if windows is None:
        windows = sys.platform == "win32"
    if not windows:
        return None
    code = windows_error(exc)
    if code in (ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION):
        return (
            f"{where} is locked by another process on the endpoint, so the agent cannot read "
            "it now; try again later, or collect it from a volume shadow copy."
        )
    too_long = len(path) >= WINDOWS_MAX_PATH and not path.startswith("\\\\?\\")
    if code == ERROR_FILENAME_EXCED_RANGE or (
        too_long and code in (ERROR_PATH_NOT_FOUND, None) and isinstance(exc, FileNotFoundError)
    ):
        return (
            f"{where} is {len(path)} characters long, more than Windows allows without long "
            f"path support ({WINDOWS_MAX_PATH - 1}); enable LongPathsEnabled on the endpoint or "
            "give a shorter path."
        )
    if code == ERROR_ACCESS_DENIED:
        return f"Windows denied the agent access to {where} (its access control list)."
    return None
