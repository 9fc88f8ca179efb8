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
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from uuid import UUID

from tether.agent.os_errors import windows_sentence
from tether.agent.path_walk import Folder, UnsafePath, open_folder
from tether.agent.transfer_requests import TransferRequests
from tether.protocol.errors import ProtocolError
from tether.protocol.transfer import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_WINDOW_BYTES,
    AnyTransferMessage,
    ChunkHeader,
    GiB,
    ReceiverFlow,
    ReceiveState,
    SenderFlow,
    SendState,
    TransferAbort,
    TransferAccept,
    TransferAck,
    TransferDone,
    TransferEnd,
    TransferFailed,
    TransferOpen,
    Transport,
    decode_chunk,
    encode_chunk,
)
from tether.workers import ThreadWork

log = logging.getLogger("tether.agent.transfer")

DEFAULT_MAX_PUT_BYTES = 4 * GiB
HASH_CHUNK_BYTES = 1024 * 1024
# O_BINARY: without it Windows opens a descriptor in text mode (CRLF collapsed, Ctrl-Z read as
# the end of the file), and almost every PE, EVTX or hive would arrive changed.
_BINARY = getattr(os, "O_BINARY", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _BINARY
_REMEMBERED = 256
_STASHED_OPENS = 16


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


async def _send(transport: Transport | None, text: str) -> None:
    if transport is None:
        return
    with contextlib.suppress(ConnectionError):
        await transport.send_text(text)


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


class _FileSender:
    """files.get: one endpoint file to the platform, hashed as it goes, a window at a time."""

    def __init__(self, flow: SenderFlow, path: Path, fd: int, info: os.stat_result) -> None:
        self.flow = flow
        self._path = path
        self._fd = fd
        self._identity = (info.st_size, info.st_mtime_ns)
        self._hasher = hashlib.sha256()
        self._hashed = 0
        # Hash states at chunk boundaries not yet acknowledged (plus the last one that is), so
        # a resume re-hashes at most a window of bytes instead of the whole file.
        self._checkpoints: deque[tuple[int, hashlib._Hash]] = deque()
        self._digest: str | None = None
        self._transport: Transport | None = None
        self._pump: asyncio.Task[None] | None = None
        self._credit = asyncio.Event()
        self._reads = ThreadWork()
        self.result: asyncio.Future[TransferDone] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls,
        transfer_id: UUID,
        job_id: str,
        path: Path,
        *,
        chunk_bytes: int,
        expect: FileIdentity | None = None,
    ) -> "_FileSender":
        fd, info = await asyncio.to_thread(cls._open_source, path)
        if expect is not None and (info.st_dev, info.st_ino) != expect:
            os.close(fd)
            raise TransferFailed(
                f"{path} changed while the agent opened it, so nothing was retrieved; try again."
            )
        flow = SenderFlow(
            transfer_id, job_id, "get", info.st_size, path=str(path), chunk_bytes=chunk_bytes
        )
        return cls(flow, path, fd, info)

    @staticmethod
    def _open_source(path: Path) -> tuple[int, os.stat_result]:
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as exc:
            raise TransferFailed(_open_refusal(path, exc)) from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise TransferFailed(f"{path} is {kind}; only regular files can be retrieved.")
        return fd, info

    async def start(self, transport: Transport) -> None:
        self._stop_pump()
        self._transport = transport
        await _send(transport, self.flow.open().model_dump_json())

    def on_accept(self, message: TransferAccept) -> None:
        offset = self.flow.accepted(message)
        self._stop_pump()
        self._pump = asyncio.create_task(self._send_chunks(offset))

    def on_ack(self, message: TransferAck) -> None:
        self.flow.acknowledged(message)
        while len(self._checkpoints) > 1 and self._checkpoints[1][0] <= message.offset:
            self._checkpoints.popleft()
        self._credit.set()

    async def on_done(self, message: TransferDone) -> None:
        if self._digest is None:
            # Done right after a re-open: the platform finished while the link was down.
            await self._position_hash(self.flow.size)
            self._digest = self._hasher.hexdigest()
        try:
            self.flow.done(message, self._digest)
        except TransferFailed as exc:
            self._finish(exc)
            return
        self._finish(None, message)

    def on_abort(self, message: TransferAbort) -> None:
        if self.flow.finished:
            return
        self.flow.aborted(message)
        self._finish(TransferFailed(f"The platform gave up the transfer: {message.reason}"))

    async def abort(self, reason: str) -> None:
        if self.flow.finished:
            return
        message = self.flow.fail(reason)
        await _send(self._transport, message.model_dump_json())
        self._finish(TransferFailed(reason))

    async def _position_hash(self, offset: int) -> None:
        """Make the running hash cover exactly the first `offset` bytes of the file."""
        if self._hashed == offset:
            return
        base_offset, base = 0, hashlib.sha256()
        if self._hashed < offset:
            base_offset, base = self._hashed, self._hasher
        for point, state in self._checkpoints:
            if base_offset < point <= offset:
                base_offset, base = point, state
        hasher = base.copy()
        await self._reads.idle()
        await self._reads.run(self._hash_range, hasher, base_offset, offset)
        self._hasher, self._hashed = hasher, offset
        self._checkpoints = deque(cp for cp in self._checkpoints if cp[0] <= offset)

    def _hash_range(self, hasher: "hashlib._Hash", start: int, end: int) -> None:
        position = start
        while position < end:
            block = _read_at(self._fd, min(HASH_CHUNK_BYTES, end - position), position)
            if not block:
                raise TransferFailed(self._changed())
            hasher.update(block)
            position += len(block)
        self._check_unchanged()

    def _changed(self) -> str:
        return (
            f"{self._path} changed on the endpoint while it was being sent (its size or "
            f"modification time moved); retrieve it again once it is stable."
        )

    def _check_unchanged(self) -> None:
        info = os.fstat(self._fd)
        if (info.st_size, info.st_mtime_ns) != self._identity:
            raise TransferFailed(self._changed())

    def _read_frame(
        self, hasher: "hashlib._Hash", offset: int, length: int
    ) -> tuple[bytes, "hashlib._Hash"]:
        # Hashes into a copy: if the pump is cancelled meanwhile, the running hash stays at the
        # last chunk actually sent, and each state kept as a checkpoint is never changed again.
        data = _read_at(self._fd, length, offset)
        if len(data) != length:
            raise TransferFailed(self._changed())
        self._check_unchanged()
        hasher = hasher.copy()
        hasher.update(data)
        return encode_chunk(self.flow.transfer_id, offset, data), hasher

    async def _send_chunks(self, offset: int) -> None:
        flow = self.flow
        transport = self._transport
        if transport is None:
            return
        try:
            await self._position_hash(offset)
            while not flow.all_sent:
                length = flow.credit()
                if length == 0:
                    self._credit.clear()
                    await self._credit.wait()
                    continue
                offset = flow.next_offset
                frame, hasher = await self._reads.run(
                    self._read_frame, self._hasher, offset, length
                )
                flow.sent(offset, length)
                self._hasher, self._hashed = hasher, flow.next_offset
                self._checkpoints.append((flow.next_offset, hasher))
                await transport.send_binary(frame)
            self._digest = self._hasher.hexdigest()
            await transport.send_text(flow.end(self._digest).model_dump_json())
        except ConnectionError:
            flow.pause()
        except TransferFailed as exc:
            await self.abort(str(exc))
        except OSError as exc:
            await self.abort(_os_sentence(exc, f"reading {self._path}"))

    def _stop_pump(self) -> None:
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        self._pump = None

    def pause(self) -> None:
        self._stop_pump()
        self.flow.pause()
        self._transport = None

    def _finish(self, exc: BaseException | None, done: TransferDone | None = None) -> None:
        self._stop_pump()
        if self.result.done():
            return
        if exc is not None:
            self.result.set_exception(exc)
        elif done is not None:
            self.result.set_result(done)

    async def close(self) -> None:
        self._stop_pump()
        await self._reads.idle()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _FileReceiver:
    """files.put: the platform's bytes into a temporary file, renamed into place once verified."""

    def __init__(
        self, flow: ReceiverFlow, destination: Path, sha256: str, mode: int | None = None
    ) -> None:
        self.flow = flow
        self.destination = destination
        self._mode = mode & _PUT_MODE_BITS if mode is not None else None
        self._installed_mode: int | None = None
        self.temp_path = destination.parent / f".tether-{flow.transfer_id}.part"
        # The destination's folder, reached without following links (tether.agent.path_walk);
        # held while the temporary file is open, everything in it is done relative to it.
        self._folder: Folder | None = None
        self._expected_sha256 = sha256
        self._on_disk_sha256 = ""
        self._fd = -1
        self._created = False  # whether this receiver made its temporary file
        self._hasher = hashlib.sha256()
        self._transport: Transport | None = None
        self._written = 0  # bytes written and hashed, updated by the writing thread
        self._sync_task: asyncio.Task[None] | None = None
        self._writes = ThreadWork()
        self._syncs = ThreadWork()
        self.result: asyncio.Future[ReceivedFile] = asyncio.get_running_loop().create_future()

    async def on_open(self, transport: Transport, message: TransferOpen) -> None:
        flow = self.flow
        if flow.state is ReceiveState.DONE and flow.result is not None:
            await _send(transport, flow.result.model_dump_json())
            return
        if flow.state is ReceiveState.FAILED:
            await _send(transport, flow.fail(flow.failure).model_dump_json())
            return
        try:
            size = flow.check_open(message)
            await self._writes.idle()
            held = await self._writes.run(self._open_temp, size)
            accept = flow.accept(size, held)
        except TransferFailed as exc:
            await self._fail(transport, str(exc))
            return
        self._transport = transport
        await _send(transport, accept.model_dump_json())

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

    async def on_chunk(self, header: ChunkHeader, payload: memoryview) -> None:
        if self.flow.state is ReceiveState.FAILED:
            return
        try:
            self.flow.chunk(header, len(payload))
        except TransferFailed as exc:
            await self._fail(self._transport, str(exc))
            return
        try:
            await self._writes.idle()
            await self._writes.run(self._write, header.offset, payload)
        except OSError as exc:
            await self._fail(self._transport, _os_sentence(exc, f"writing {self.destination}"))
            return
        if self.flow.sync_due() is not None:
            self._sync_task = asyncio.create_task(self._sync_and_ack())

    def _write(self, offset: int, data: memoryview) -> None:
        view = data
        while view:
            written = _write_at(self._fd, view, offset)
            view = view[written:]
            offset += written
        self._hasher.update(data)
        self._written = offset

    async def _sync_and_ack(self) -> None:
        await self._writes.idle()
        offset = self._written
        try:
            await self._syncs.run(os.fsync, self._fd)
        except OSError as exc:
            self.flow.synced(0)
            await self._fail(self._transport, _os_sentence(exc, f"writing {self.destination}"))
            return
        ack = self.flow.synced(offset)
        if ack is not None:
            await _send(self._transport, ack.model_dump_json())
            if self.flow.sync_due() is not None:
                self._sync_task = asyncio.create_task(self._sync_and_ack())

    async def _wait_for_sync(self) -> None:
        task = self._sync_task
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def on_end(self, message: TransferEnd) -> None:
        try:
            self.flow.end(message)
            await self._wait_for_sync()
            await self._writes.idle()
            await self._syncs.idle()
            await self._writes.run(self._install, message.sha256)
        except TransferFailed as exc:
            await self._fail(self._transport, str(exc))
            return
        except OSError as exc:
            await self._fail(self._transport, _os_sentence(exc, f"writing {self.destination}"))
            return
        # The platform counts the deploy only on this: the hash of the file read back from disk.
        done = self.flow.done(self._on_disk_sha256)
        await _send(self._transport, done.model_dump_json())
        if not self.result.done():
            self.result.set_result(
                ReceivedFile(self.destination, done.size, done.sha256, self._installed_mode)
            )

    def _install(self, announced_sha256: str) -> None:
        os.fsync(self._fd)
        actual = self._hasher.hexdigest()
        on_disk = _sha256_on_disk(self._open_folder(), self.temp_path.name, os.fstat(self._fd))
        if on_disk != actual:
            raise TransferFailed(
                f"The file as written to the endpoint's disk has SHA-256 {on_disk}, not the "
                f"{actual} that arrived, so it was not installed."
            )
        self._on_disk_sha256 = on_disk
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

    def on_abort(self, message: TransferAbort) -> None:
        if self.flow.finished:
            return
        self.flow.aborted(message)
        self._settle(TransferFailed(f"The platform gave up the transfer: {message.reason}"))

    async def abort(self, reason: str) -> None:
        if not self.flow.finished:
            await self._fail(self._transport, reason)

    async def _fail(self, transport: Transport | None, reason: str) -> None:
        abort = self.flow.fail(reason)
        log.warning("Transfer %s to %s failed: %s", self.flow.transfer_id, self.destination, reason)
        await self._remove_temp()
        await _send(transport, abort.model_dump_json())
        self._settle(TransferFailed(reason))

    async def _quiesce(self) -> None:
        await self._wait_for_sync()
        await self._writes.idle()
        await self._syncs.idle()

    async def _remove_temp(self) -> None:
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

    def _settle(self, exc: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(exc)

    def pause(self) -> None:
        self._transport = None

    def last_word(self) -> str | None:
        if self.flow.result is not None:
            return self.flow.result.model_dump_json()
        if self.flow.state is ReceiveState.FAILED:
            return TransferAbort(
                transfer_id=self.flow.transfer_id, reason=self.flow.failure or "Transfer failed."
            ).model_dump_json()
        return None

    async def close(self) -> None:
        """Stop using the file; a failed transfer's temporary file is gone, a paused one stays."""
        if self.flow.state is ReceiveState.FAILED:
            await self._remove_temp()
            return
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
        self._transport: Transport | None = None
        self._senders: dict[UUID, _FileSender] = {}
        self._receivers: dict[UUID, _FileReceiver] = {}
        self._finished: OrderedDict[UUID, str] = OrderedDict()
        # Opens that came before their job registered the transfer (the job and the open travel
        # in that order, but the job's handler runs in its own task). Bounded.
        self._stashed: OrderedDict[UUID, TransferOpen] = OrderedDict()
        # What running scripts asked to move (tether.script upload and download).
        self.requests = TransferRequests()

    def _check_new(self, transfer_id: UUID) -> None:
        if transfer_id in self._senders or transfer_id in self._receivers:
            raise ValueError(f"Transfer {transfer_id} is already registered.")

    async def send_file(
        self, transfer_id: UUID, job_id: str, path: Path, *, expect: FileIdentity | None = None
    ) -> TransferDone:
        """files.get: send `path` to the platform; the platform's verified done.

        With `expect`, the file opened must be that one (device, inode): what the caller
        described of it (a link's target) is then what is sent. Waits across disconnects.
        Raises TransferFailed with a sentence. Cancelling leaves the platform's partial for a
        later resume; `abort` gives the transfer up.
        """
        self._check_new(transfer_id)
        sender = await _FileSender.open(
            transfer_id, job_id, path, chunk_bytes=self._chunk_bytes, expect=expect
        )
        self._senders[transfer_id] = sender
        try:
            if self._transport is not None:
                await sender.start(self._transport)
            return await sender.result
        finally:
            await sender.close()
            self._senders.pop(transfer_id, None)
            self._remember(transfer_id, None)

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
        self._check_new(transfer_id)
        flow = ReceiverFlow(
            transfer_id,
            job_id,
            "put",
            max_size=self._max_put_bytes,
            limit_label="files sent to an endpoint",
            expected_size=size,
            window=self._window,
        )
        receiver = _FileReceiver(flow, destination, sha256, mode)
        if self._partials is not None:
            self._partials.add_partial(receiver.temp_path, job_id)
        self._receivers[transfer_id] = receiver
        try:
            stashed = self._stashed.pop(transfer_id, None)
            if stashed is not None and self._transport is not None:
                await receiver.on_open(self._transport, stashed)
            return await receiver.result
        finally:
            await receiver.close()
            self._receivers.pop(transfer_id, None)
            self._remember(transfer_id, receiver.last_word())
            # Finished, the file is renamed into place or removed: forgotten. Paused (the agent
            # is stopping), it stays, and the next start removes it.
            if self._partials is not None and receiver.flow.finished:
                self._partials.drop_partial(receiver.temp_path)

    async def abort(self, transfer_id: UUID, reason: str) -> None:
        """Give a transfer up (job cancelled): tell the platform, remove any temporary file."""
        if transfer_id in self._senders:
            await self._senders[transfer_id].abort(reason)
        if transfer_id in self._receivers:
            await self._receivers[transfer_id].abort(reason)

    async def attach(self, transport: Transport) -> None:
        """A new connection is up (after its welcome): resume what this agent was sending."""
        self.detach()
        self._transport = transport
        await self.requests.attach(transport)
        for sender in list(self._senders.values()):
            if not sender.flow.finished:
                await sender.start(transport)

    def detach(self) -> None:
        """The connection is lost: pause every transfer until the next `attach`."""
        self._transport = None
        self.requests.detach()
        self._stashed.clear()
        for sender in self._senders.values():
            sender.pause()
        for receiver in self._receivers.values():
            receiver.pause()

    async def on_message(self, message: AnyTransferMessage) -> None:
        """One transfer control message from the platform; ProtocolError when out of turn."""
        transport = self._transport
        if transport is None:
            raise ProtocolError("A transfer message arrived on a detached connection.")
        tid = message.transfer_id
        if tid in self._finished and tid not in self._senders and tid not in self._receivers:
            if isinstance(message, TransferOpen) and self._finished[tid]:
                await _send(transport, self._finished[tid])
            return
        if isinstance(message, TransferOpen):
            receiver = self._receivers.get(tid)
            if receiver is None:
                self._stash(message)
            else:
                await receiver.on_open(transport, message)
        elif isinstance(message, TransferEnd):
            await self._receiver(tid).on_end(message)
        elif isinstance(message, TransferAccept):
            self._sender(tid).on_accept(message)
        elif isinstance(message, TransferAck):
            self._sender(tid).on_ack(message)
        elif isinstance(message, TransferDone):
            await self._sender(tid).on_done(message)
        elif isinstance(message, TransferAbort):
            if tid in self._senders:
                self._senders[tid].on_abort(message)
            elif tid in self._receivers:
                self._receivers[tid].on_abort(message)
            else:
                self._stashed.pop(tid, None)

    async def on_chunk(self, frame: bytes) -> None:
        """One binary frame from the platform; ProtocolError when malformed or out of turn."""
        header, payload = decode_chunk(frame)
        tid = header.transfer_id
        if tid in self._finished and tid not in self._receivers:
            return
        await self._receiver(tid).on_chunk(header, payload)

    def _stash(self, message: TransferOpen) -> None:
        self._stashed[message.transfer_id] = message
        while len(self._stashed) > _STASHED_OPENS:
            self._stashed.popitem(last=False)

    def _remember(self, transfer_id: UUID, last_word: str | None) -> None:
        self._finished[transfer_id] = last_word or ""
        while len(self._finished) > _REMEMBERED:
            self._finished.popitem(last=False)

    def _receiver(self, transfer_id: UUID) -> _FileReceiver:
        receiver = self._receivers.get(transfer_id)
        if receiver is None:
            raise ProtocolError(f"The platform sent data for unknown transfer {transfer_id}.")
        return receiver

    def _sender(self, transfer_id: UUID) -> _FileSender:
        sender = self._senders.get(transfer_id)
        if sender is None or sender.flow.state is SendState.IDLE:
            raise ProtocolError(f"The platform answered transfer {transfer_id}, never opened.")
        return sender
