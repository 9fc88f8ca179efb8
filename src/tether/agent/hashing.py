"""Hashing files on the endpoint in fixed-size chunks, so memory does not grow with file size.

Blocking: callers run these in a worker thread (`tether.agent.action.run_blocking`), whose stop
event ends the reading early when the job is cancelled or times out.
"""

import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterable

CHUNK_BYTES = 1024 * 1024

# Opening a FIFO for reading would wait for a writer, and a device may never end: only regular
# files are opened, and on POSIX without blocking so the check happens before any wait.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class NotRegularFile(Exception):
    """The path names a FIFO, socket, device or other non-regular file."""


class Stopped(Exception):
    """The job that asked for the work was cancelled or timed out; nobody waits for it now."""


def open_regular_file(path: str) -> tuple[io.FileIO, os.stat_result]:
    """Open `path` for reading, with the status of what was opened (symbolic links followed).

    Raises IsADirectoryError for a directory, NotRegularFile for anything else that is not a
    regular file, and OSError as the system reports it otherwise.
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(status.st_mode):
            raise NotRegularFile(path)
        return io.FileIO(fd, "rb", closefd=True), status
    except BaseException:
        os.close(fd)
        raise


def digest(
    file: io.FileIO, algorithms: Iterable[str], stop: threading.Event | None = None
) -> tuple[dict[str, str], int]:
    """Hex digests of the rest of `file` for each of `algorithms`, read once in CHUNK_BYTES,
    and how many bytes they cover (a file still being written may have grown since its stat).

    Raises Stopped at the next chunk once `stop` is set: a thread cannot be cancelled, so a
    cancelled job would otherwise keep reading a 3 GB file to the end.
    """
    # Not for security: these identify files, as DFIR tools and threat feeds name them.
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    total = 0
    while count := file.readinto(buffer):
        if stop is not None and stop.is_set():
            raise Stopped
        total += count
        for hasher in hashers.values():
            hasher.update(view[:count])
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}, total
