"""The agent's side of file transfers: sending a file (`files.get`), receiving one (`files.put`).

One `AgentTransfers` lives as long as the agent process and outlives its connections. The
connection drives it:

    await transfers.attach(transport)    after every welcome: re-opens what was being sent
    await transfers.on_message(message)  for each transfer.* text frame, in arrival order
    await transfers.on_chunk(frame)      for each binary frame, in arrival order
    transfers.detach()                   when the connection is lost

and the action handlers await `send_file` / `receive_file`. A disconnect pauses a transfer; the
next `attach` resumes it from what the platform holds durably.

Receiving writes to `.tether-<transfer id>.part` in the destination folder, verifies, fsyncs,
then renames into place, so the destination is either untouched or complete. On any failure
the temporary file is removed; it is kept only while a paused transfer may still resume.
"""

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from uuid import UUID

from tether.agent.os_errors import windows_sentence
from tether.agent.path_walk import Folder, UnsafePath, open_folder
from tether.agent.transfer_requests import TransferRequests
from tether.protocol.transfer import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_WINDOW_BYTES,
    AnyTransferMessage,
    GiB,
    ReceiverFlow,
    SenderFlow,
    TransferDone,
    TransferFailed,
    Transport,
)
from tether.protocol.transfer_engine import Receiver, Sender, TransferBook, Wording
from tether.workers import ThreadWork

log = logging.getLogger("tether.agent.transfer")

DEFAULT_MAX_PUT_BYTES = 4 * GiB
HASH_CHUNK_BYTES = 1024 * 1024
# O_BINARY: without it Windows opens a descriptor in text mode (CRLF collapsed, Ctrl-Z read as
# the end of the file), and almost every PE, EVTX or hive would arrive changed.
_BINARY = getattr(os, "O_BINARY", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _BINARY

_WORDING = Wording(
    peer_gave_up_receive="The platform gave up the transfer: {}",
    peer_gave_up_send="The platform gave up the transfer: {}",
    unknown_data="The platform sent data for unknown transfer {}.",
    never_opened="The platform answered transfer {}, never opened.",
)


# (st_dev, st_ino): one file, whatever names lead to it.
FileIdentity = tuple[int, int]


@dataclass(frozen=True)
class ReceivedFile:
    """A file written in place by `receive_file`."""

    path: Path
    size: int
    sha256: str
    # Its permission bits as installed; None where the endpoint has none (Windows).
    mode: int | None = None


# Modes a put may set: read, write and execute for owner, group and others. The protocol allows
# no more; this keeps a setuid bit out even if a message got past it.
_PUT_MODE_BITS = 0o777


def _read_at(fd: int, length: int, offset: int) -> bytes:
    """Up to `length` bytes at `offset` (fewer only at the end of the file)."""
    if sys.platform != "win32":
        return os.pread(fd, length, offset)
    # Windows: no pread. Each descriptor is used by one thread at a time (ThreadWork), so the
    # shared file position is safe to move.
    os.lseek(fd, offset, os.SEEK_SET)
    parts = []
    while length > 0:
        part = os.read(fd, length)
        if not part:
            break
        parts.append(part)
        length -= len(part)
    return b"".join(parts)


def _sha256_on_disk(folder: Folder, name: str, written: os.stat_result) -> str:
    """The SHA-256 of file `name` in `folder` as it is on disk, read through a descriptor of
    its own (binary, read-only), not the one that wrote it: a descriptor that translated what
    it wrote (a text-mode one on Windows) would translate it back on reading and hide it.
    `written` is the writing descriptor's status: the name must still lead to that file."""
    # O_NONBLOCK: a FIFO swapped in under the name must not hang the open (it fails the check).
    fd = folder.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (written.st_dev, written.st_ino):
            raise TransferFailed(
                f"{folder.path / name} was replaced while the file was received, so it was "
                "not installed."
            )
        hasher = hashlib.sha256()
        position = 0
        while block := _read_at(fd, HASH_CHUNK_BYTES, position):
            hasher.update(block)
            position += len(block)
        return hasher.hexdigest()
    finally:
        os.close(fd)


def _read_into(fd: int, buffer: memoryview, offset: int) -> int:
    """Fill `buffer` from `offset` (short only at the end of the file); the bytes read. Into the
    sender's own buffer: a new 512 KiB object per chunk cost a page fault per page."""
    if sys.platform == "win32":
        data = _read_at(fd, len(buffer), offset)
        buffer[: len(data)] = data
        return len(data)
    filled = 0
    while filled < len(buffer):
        count = os.preadv(fd, [buffer[filled:]], offset + filled)
        if count == 0:
            break
        filled += count
    return filled


def _write_at(fd: int, data: memoryview, offset: int) -> int:
    if sys.platform != "win32":
        return os.pwrite(fd, data, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.write(fd, data)


def _own_private_file(info: os.stat_result) -> bool:
    """A regular file with one name, owned by this process's user (on POSIX)."""
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        return False
    if sys.platform == "win32":
        # No owner id here; the first open is exclusive (O_EXCL), so the file is the agent's.
        return True
    return info.st_uid == os.geteuid()


class PartialRegistry(Protocol):
    """Where receiving records its temporary files (the agent's journal), so that the ones a
    crash or a restart leaves behind are found and removed at the next start."""

    def add_partial(self, path: Path, job_id: str) -> None: ...

    def drop_partial(self, path: Path) -> None: ...

    def partials(self) -> list[tuple[Path, str]]: ...


def remove_leftover_partials(registry: PartialRegistry) -> set[str]:
    """At agent start, before any job runs: remove the temporary files earlier processes left.

    Their jobs ended at this start (`tether.agent.recovery`), so no transfer can resume into
    them. Only a regular file this agent's user owns, named as receiving names them, goes;
    anything else at that path is left alone. Returns the jobs whose temporary file was removed.
    """
    removed: set[str] = set()
    for path, job_id in registry.partials():
        if path.name.startswith(".tether-") and path.name.endswith(".part"):
            try:
                # Reached as it was written: never through a link put on the way since.
                with open_folder(path.parent) as folder:
                    info = folder.lstat(path.name)
                    if info is not None and _own_private_file(info):
                        folder.unlink(path.name)
                        removed.add(job_id)
            except (OSError, UnsafePath) as exc:
                log.warning("The leftover temporary file %s could not be removed: %s", path, exc)
        registry.drop_partial(path)
    return removed


def _open_refusal(path: Path, exc: OSError) -> str:
    """Why the file to retrieve could not be opened, in one sentence."""
    # Locked, denied or too long on Windows: each has its own remedy.
    windows = windows_sentence(exc, str(path), str(path))
    if windows is not None:
        return windows
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist on the endpoint."
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder; give the path of a file."
    return _os_sentence(exc, f"opening {path}")


def _os_sentence(exc: OSError, doing: str) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"The endpoint's disk is full while {doing}; nothing was left behind."
    return f"The agent failed {doing}: {exc.strerror or exc}."


class _FileSource:
    """files.get: one endpoint file, read at offsets into the sender's buffer; refused the
    moment its size or modification time moves (it changed while being sent)."""

    def __init__(self, path: Path, fd: int, info: os.stat_result) -> None:
        self.path = path
        self.size = info.st_size
        self._fd = fd
        self._identity = (info.st_size, info.st_mtime_ns)

    @classmethod
    def open(cls, path: Path, expect: FileIdentity | None) -> "_FileSource":
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as exc:
            raise TransferFailed(_open_refusal(path, exc)) from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise TransferFailed(f"{path} is {kind}; only regular files can be retrieved.")
        if expect is not None and (info.st_dev, info.st_ino) != expect:
            os.close(fd)
            raise TransferFailed(
                f"{path} changed while the agent opened it, so nothing was retrieved; try again."
            )
        return cls(path, fd, info)

    def read_into(self, buffer: memoryview, offset: int) -> None:
        try:
            filled = _read_into(self._fd, buffer, offset)
            if filled != len(buffer):
                raise TransferFailed(self._changed())
            info = os.fstat(self._fd)
        except OSError as exc:
            raise TransferFailed(_os_sentence(exc, f"reading {self.path}")) from exc
        if (info.st_size, info.st_mtime_ns) != self._identity:
            raise TransferFailed(self._changed())

    def _changed(self) -> str:
        return (
            f"{self.path} changed on the endpoint while it was being sent (its size or "
            f"modification time moved); retrieve it again once it is stable."
        )

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _FileSink:
    """files.put: the platform's bytes into a temporary file, renamed into place once verified."""

    def __init__(
        self, transfer_id: UUID, destination: Path, sha256: str, mode: int | None = None
    ) -> None:
        self.destination = destination
        self._mode = mode & _PUT_MODE_BITS if mode is not None else None
        self._installed_mode: int | None = None
        self.temp_path = destination.parent / f".tether-{transfer_id}.part"
        # The destination's folder, reached without following links (tether.agent.path_walk);
        # held while the temporary file is open, everything in it is done relative to it.
        self._folder: Folder | None = None
        self._expected_sha256 = sha256
        self._fd = -1
        self._created = False  # whether this receiver made its temporary file
        self._hasher = hashlib.sha256()
        self._written = 0  # bytes written and hashed, updated by the writing thread
        self._writes = ThreadWork()
        self._syncs = ThreadWork()

    async def open(self, size: int) -> int:
        await self._writes.idle()
        return await self._writes.run(self._open_temp, size)

    def _open_folder(self) -> Folder:
        """The destination's folder, opened without following a link in any component."""
        if self._folder is None:
            parent = self.destination.parent
            try:
                self._folder = open_folder(parent)
            except UnsafePath as exc:
                raise TransferFailed(str(exc)) from exc
            except OSError as exc:
                raise TransferFailed(_os_sentence(exc, f"opening the folder {parent}")) from exc
        return self._folder

    def _close_folder(self) -> None:
        if self._folder is not None:
            self._folder.close()
            self._folder = None

    def _destination_is_folder(self, folder: Folder) -> bool:
        named = folder.lstat(self.destination.name)
        return named is not None and stat.S_ISDIR(named.st_mode)

    def _open_temp(self, size: int) -> int:
        """Open (or reopen) the temporary file; returns the bytes it durably holds."""
        try:
            return self._open_temp_raw(size)
        except OSError as exc:
            raise TransferFailed(_os_sentence(exc, f"writing {self.destination}")) from exc

    def _open_temp_raw(self, size: int) -> int:
        parent = self.destination.parent
        if self._fd < 0:
            folder = self._open_folder()
            if self._destination_is_folder(folder):
                raise TransferFailed(
                    f"{self.destination} is a folder on the endpoint; give the path of a file."
                )
            # Created exclusively the first time, so nothing planted under the name beforehand
            # is ever written through; reopened (after a pause) only once it is this agent's.
            flags = os.O_RDWR | os.O_CREAT | (0 if self._created else os.O_EXCL)
            try:
                self._fd = folder.open(self.temp_path.name, flags, 0o600)
            except FileExistsError as exc:
                raise TransferFailed(
                    f"{self.temp_path} is not a file this agent created, so nothing was written."
                ) from exc
            except OSError as exc:
                raise TransferFailed(_os_sentence(exc, f"creating a file in {parent}")) from exc
            self._created = True
            info = os.fstat(self._fd)
            if not _own_private_file(info):
                # Someone else put it there (a FIFO, a hard link to another file, a file of
                # another user in a shared folder): writing through it as root would harm.
                os.close(self._fd)
                self._fd = -1
                raise TransferFailed(
                    f"{self.temp_path} is not a file this agent created, so nothing was written."
                )
            held = info.st_size
            if held > size:
                os.ftruncate(self._fd, 0)
                held = 0
            self._hasher = hashlib.sha256()
            position = 0
            while position < held:
                block = _read_at(self._fd, min(HASH_CHUNK_BYTES, held - position), position)
                if not block:
                    break
                self._hasher.update(block)
                position += len(block)
        else:
            # Resuming in this process: keep what was written and hashed, drop any torn tail.
            position = self._written
            os.ftruncate(self._fd, position)
        self._written = position
        os.fsync(self._fd)
        return position

    async def write(self, offset: int, data: memoryview) -> None:
        await self._writes.idle()
        try:
            await self._writes.run(self._write, offset, data)
        except OSError as exc:
            raise TransferFailed(_os_sentence(exc, f"writing {self.destination}")) from exc

    def _write(self, offset: int, data: memoryview) -> None:
        view = data
        while view:
            written = _write_at(self._fd, view, offset)
            view = view[written:]
            offset += written
        self._hasher.update(data)
        self._written = offset

    async def sync(self) -> int:
        await self._writes.idle()
        offset = self._written
        try:
            await self._syncs.run(os.fsync, self._fd)
        except OSError as exc:
            raise TransferFailed(_os_sentence(exc, f"writing {self.destination}")) from exc
        return offset

    async def commit(self, size: int, sha256: str) -> tuple[str, ReceivedFile]:
        await self._writes.idle()
        await self._syncs.idle()
        try:
            on_disk = await self._writes.run(self._install, sha256)
        except OSError as exc:
            raise TransferFailed(_os_sentence(exc, f"writing {self.destination}")) from exc
        return on_disk, ReceivedFile(self.destination, size, on_disk, self._installed_mode)

    def _install(self, announced_sha256: str) -> str:
        os.fsync(self._fd)
        actual = self._hasher.hexdigest()
        on_disk = _sha256_on_disk(self._open_folder(), self.temp_path.name, os.fstat(self._fd))
        if on_disk != actual:
            raise TransferFailed(
                f"The file as written to the endpoint's disk has SHA-256 {on_disk}, not the "
                f"{actual} that arrived, so it was not installed."
            )
        if actual != announced_sha256:
            raise TransferFailed(
                f"The file's SHA-256 on arrival ({actual}) does not match the one the platform "
                f"computed ({announced_sha256})."
            )
        if actual != self._expected_sha256:
            raise TransferFailed(
                f"The platform sent a file with SHA-256 {actual}, not the {self._expected_sha256} "
                f"the job asked for."
            )
        if hasattr(os, "fchmod"):
            # On the file descriptor, before the rename: the mode is set on the very file
            # verified, and the file appears at its path with its final mode, never wider.
            if self._mode is not None:
                os.fchmod(self._fd, self._mode)
            self._installed_mode = stat.S_IMODE(os.fstat(self._fd).st_mode)
        self._rename_into_place()
        return on_disk

    def _rename_into_place(self) -> None:
        """Rename the verified temporary file over the destination, within the folder reached
        without links; the rename is made durable before returning."""
        folder = self._open_folder()
        if self._destination_is_folder(folder):
            raise TransferFailed(
                f"{self.destination} is a folder on the endpoint; give the path of a file."
            )
        # The rename goes by name: check the name still holds the file written and verified,
        # not one swapped in by someone who can write to that folder.
        written = os.fstat(self._fd)
        named = folder.lstat(self.temp_path.name)
        if named is None or (named.st_dev, named.st_ino) != (written.st_dev, written.st_ino):
            raise TransferFailed(
                f"{self.temp_path} was replaced while the file was received, so it was not "
                "installed."
            )
        os.close(self._fd)
        self._fd = -1
        folder.replace(self.temp_path.name, self.destination.name)
        folder.fsync()
        self._close_folder()

    async def _quiesce(self) -> None:
        await self._writes.idle()
        await self._syncs.idle()

    async def discard(self) -> None:
        await self._quiesce()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._unlink_temp)
        self._close_folder()

    def _unlink_temp(self) -> None:
        # In the folder reached without links (again, after a pause closed it), never by path.
        try:
            folder = self._open_folder()
        except TransferFailed:
            return  # no such folder is reachable safely: nothing was created in it
        if folder.lstat(self.temp_path.name) is not None:
            folder.unlink(self.temp_path.name)

    async def close(self) -> None:
        """Stop using the file; a paused transfer's temporary file stays for the resume."""
        await self._quiesce()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._close_folder()


class AgentTransfers:
    """Every transfer of this agent, across its connections to the platform."""

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW_BYTES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_put_bytes: int = DEFAULT_MAX_PUT_BYTES,
        partials: PartialRegistry | None = None,
    ) -> None:
        self._window = window
        self._partials = partials
        self._chunk_bytes = chunk_bytes
        self._max_put_bytes = max_put_bytes
        self._book = TransferBook(_WORDING)
        # What running scripts asked to move (tether.script upload and download).
        self.requests = TransferRequests()

    async def send_file(
        self, transfer_id: UUID, job_id: str, path: Path, *, expect: FileIdentity | None = None
    ) -> TransferDone:
        """files.get: send `path` to the platform; the platform's verified done.

        With `expect`, the file opened must be that one (device, inode): what the caller
        described of it (a link's target) is then what is sent. Waits across disconnects.
        Raises TransferFailed with a sentence. Cancelling leaves the platform's partial for a
        later resume; `abort` gives the transfer up.
        """
        self._book.check_new(transfer_id)
        source = await asyncio.to_thread(_FileSource.open, path, expect)
        flow = SenderFlow(
            transfer_id, job_id, "get", source.size, path=str(path), chunk_bytes=self._chunk_bytes
        )
        return await self._book.run_sender(Sender(flow, source, _WORDING))

    async def receive_file(
        self,
        transfer_id: UUID,
        job_id: str,
        destination: Path,
        *,
        size: int,
        sha256: str,
        mode: int | None = None,
    ) -> ReceivedFile:
        """files.put: receive the platform's file of `size` bytes and `sha256` at `destination`,
        with permission bits `mode` (owner-only read and write when None).

        The destination is replaced only by a complete, verified file. Raises TransferFailed.
        """
        self._book.check_new(transfer_id)
        flow = ReceiverFlow(
            transfer_id,
            job_id,
            "put",
            max_size=self._max_put_bytes,
            limit_label="files sent to an endpoint",
            expected_size=size,
            window=self._window,
        )
        sink = _FileSink(transfer_id, destination, sha256, mode)
        receiver = Receiver(flow, sink, _WORDING)
        partials = self._partials
        if partials is not None:
            partials.add_partial(sink.temp_path, job_id)

        async def forget_partial() -> None:
            # Finished, the file is renamed into place or removed: forgotten. Paused (the agent
            # is stopping), it stays, and the next start removes it.
            if partials is not None and flow.finished:
                partials.drop_partial(sink.temp_path)

        return await self._book.run_receiver(receiver, before_close=forget_partial)

    async def abort(self, transfer_id: UUID, reason: str) -> None:
        """Give a transfer up (job cancelled): tell the platform, remove any temporary file."""
        await self._book.abort(transfer_id, reason)

    async def attach(self, transport: Transport) -> None:
        """A new connection is up (after its welcome): resume what this agent was sending."""
        self.detach()
        await self.requests.attach(transport)
        await self._book.attach(transport)

    def detach(self) -> None:
        """The connection is lost: pause every transfer until the next `attach`."""
        self.requests.detach()
        self._book.detach()

    async def on_message(self, message: AnyTransferMessage) -> None:
        """One transfer control message from the platform; ProtocolError when out of turn."""
        await self._book.on_message(message)

    async def on_chunk(self, frame: bytes) -> None:
        """One binary frame from the platform; ProtocolError when malformed or out of turn."""
        await self._book.on_chunk(frame)
