"""The content-addressed file store: every file the platform holds, named by its SHA-256.

Layout under the root:

    sha256/ab/cdef...   complete blobs, read-only once renamed into place
    partial/<uuid>      uploads in progress, keyed by transfer id so they outlive a restart

All blocking file work runs in a worker thread (`asyncio.to_thread`), in bounded pieces, so a
multi-GiB file never holds the event loop or more than one chunk of memory.
"""

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from tether.protocol.transfer import GiB, format_size
from tether.server.errors import PlatformError
from tether.workers import ThreadWork

DEFAULT_MAX_BLOB_BYTES = 4 * GiB
HASH_CHUNK_BYTES = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
STORE_ID_FILE = "store-id"


class BlobError(PlatformError):
    """The blob store refused or could not complete an operation."""


class BlobNotFound(BlobError):
    status_code = 404


class BlobTooLarge(BlobError):
    status_code = 413


class BlobMismatch(BlobError):
    """The bytes received are not the ones announced; the partial is already removed."""

    status_code = 422

    def __init__(self, message: str, *, actual_sha256: str, actual_size: int) -> None:
        super().__init__(message)
        self.actual_sha256 = actual_sha256
        self.actual_size = actual_size


class StorageFull(BlobError):
    status_code = 507


@dataclass(frozen=True)
class Blob:
    """A complete, verified file in the store."""

    sha256: str
    size: int
    path: Path


def _check_sha256(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise BlobError(f"{sha256!r} is not a SHA-256 in lowercase hex.")
    return sha256


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Content-addressed files under `root`, with resumable partial uploads."""

    def __init__(
        self, root: Path, *, max_bytes: int = DEFAULT_MAX_BLOB_BYTES, several_nodes: bool = False
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # Another node may have written a file this one lacks: say so rather than "no file".
        self._several_nodes = several_nodes
        self._blobs = root / "sha256"
        self._partials = root / "partial"

    def identity(self) -> str:
        """The store's id, made at first use (`store-id` under the root): nodes that report the
        same id see the same files, a shared directory (docs/adr/0050)."""
        marker = self.root / STORE_ID_FILE
        try:
            return marker.read_text().strip()
        except FileNotFoundError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        made = str(uuid.uuid4())
        try:
            # Exclusive: two nodes starting at once on one shared directory agree on one id.
            with open(marker, "x") as out:
                out.write(made + "\n")
        except FileExistsError:
            return marker.read_text().strip()
        return made

    def path_of(self, sha256: str) -> Path:
        """Where the blob named `sha256` lives (whether or not it exists yet)."""
        digest = _check_sha256(sha256)
        return self._blobs / digest[:2] / digest[2:]

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.path_of(sha256).is_file)

    async def open_read(self, sha256: str) -> "BlobReader":
        """A reader over a complete blob; BlobNotFound when the store does not hold it."""
        path = self.path_of(sha256)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError as exc:
            if self._several_nodes:
                raise BlobNotFound(
                    f"This node's file store ({self.root}) holds no file with SHA-256 {sha256}; "
                    "if another node stored it, set file_store_dir on every node to one shared "
                    "directory."
                ) from exc
            raise BlobNotFound(f"The file store holds no file with SHA-256 {sha256}.") from exc
        return BlobReader(sha256, fd, os.fstat(fd).st_size)

    def too_large(self, size: int) -> BlobTooLarge:
        return BlobTooLarge(
            f"The file is {format_size(size)}, over the {format_size(self.max_bytes)} limit "
            f"for retrieved files."
        )

    async def open_partial(
        self, transfer_id: UUID, *, declared_size: int | None = None
    ) -> "PartialBlob":
        """The partial upload of `transfer_id`, created empty or resumed from what is on disk.

        Bytes already on disk are read back and hashed (a hash state cannot be saved), so the
        final check covers every byte, including those written before a restart.
        """
        if declared_size is not None and declared_size > self.max_bytes:
            raise self.too_large(declared_size)
        return await asyncio.to_thread(self._open_partial, transfer_id)

    def discard_partial(self, transfer_id: UUID) -> None:
        """Remove the partial upload of `transfer_id` if one is on disk (blocking)."""
        (self._partials / str(transfer_id)).unlink(missing_ok=True)

    def discard_partials_except(self, keep: set[UUID]) -> int:
        """Remove every partial upload not named in `keep` (blocking); returns how many."""
        if not self._partials.is_dir():
            return 0
        removed = 0
        for path in self._partials.iterdir():
            try:
                wanted = UUID(path.name) in keep
            except ValueError:
                wanted = False  # not a name this store writes
            if not wanted and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _open_partial(self, transfer_id: UUID) -> "PartialBlob":
        self._partials.mkdir(parents=True, exist_ok=True)
        path = self._partials / str(transfer_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BlobError(f"The partial upload {path} is not a regular file.")
            hasher = hashlib.sha256()
            offset = 0
            while offset < info.st_size:
                block = os.pread(fd, min(HASH_CHUNK_BYTES, info.st_size - offset), offset)
                if not block:
                    break
                hasher.update(block)
                offset += len(block)
            if offset:
                os.fsync(fd)  # what we report as held must be durable
        except BaseException:
            os.close(fd)
            raise
        return PartialBlob(self, transfer_id, path, fd, offset, hasher)

    async def commit_path(self, source: Path, sha256: str) -> Path:
        """Move a verified file to its content address (keeping an existing one); its path."""
        return await asyncio.to_thread(self._install, source, sha256)

    def _install(self, source: Path, sha256: str) -> Path:
        target = self.path_of(sha256)
        if target.is_file():
            # Same name, same content: the earlier copy stays, this one goes.
            source.unlink(missing_ok=True)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(source, 0o440)
        os.replace(source, target)
        _fsync_directory(target.parent)
        return target


class BlobReader:
    """Reads a complete blob at offsets; close it when done."""

    def __init__(self, sha256: str, fd: int, size: int) -> None:
        self.sha256 = sha256
        self.size = size
        self._fd = fd

    async def read_at(self, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(os.pread, self._fd, length, offset)

    def read_at_blocking(self, offset: int, length: int) -> bytes:
        """For callers already in a worker thread."""
        return os.pread(self._fd, length, offset)

    def read_into_blocking(self, buffer: memoryview, offset: int) -> int:
        """Fill `buffer` from `offset` (short only at the end of the blob); the bytes read.

        Into the caller's buffer, so a sender reuses one buffer instead of a new one per chunk.
        """
        filled = 0
        while filled < len(buffer):
            count = os.preadv(self._fd, [buffer[filled:]], offset + filled)
            if count == 0:
                break
            filled += count
        return filled

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PartialBlob:
    """An upload in progress: contiguous writes, fsync on demand, verified commit.

    One write at a time (each continues the last); an fsync may run beside a write. A caller
    cancelled mid-write does not stop the write: the next operation waits for it first.
    """

    def __init__(
        self,
        store: BlobStore,
        transfer_id: UUID,
        path: Path,
        fd: int,
        size: int,
        hasher: "hashlib._Hash",
    ) -> None:
        self.transfer_id = transfer_id
        self.path = path
        self._store = store
        self._fd = fd
        self._size = size
        self._durable = size
        self._hasher = hasher
        self._writes = ThreadWork()
        self._syncs = ThreadWork()

    @property
    def size(self) -> int:
        """Bytes written so far (not all of them necessarily on disk yet)."""
        return self._size

    @property
    def durable_size(self) -> int:
        """Bytes known to be on disk: as of the last `sync`."""
        return self._durable

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        """Append `data`, which must start at the current size; refuses gaps and overlaps.

        Over the store's cap, or on a full disk, the partial is removed and the error says so.
        """
        await self._writes.idle()
        if self._fd < 0:
            raise BlobError("The partial upload is closed.")
        if offset != self._size:
            raise BlobError(
                f"A write at offset {offset} does not continue the {self._size} bytes held."
            )
        if self._size + len(data) > self._store.max_bytes:
            await self.discard()
            raise self._store.too_large(self._size + len(data))
        try:
            await self._writes.run(self._write, offset, data)
        except OSError as exc:
            await self.discard()
            raise self._os_error(exc) from exc

    def _write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        position = offset
        while view:
            written = os.pwrite(self._fd, view, position)
            view = view[written:]
            position += written
        self._hasher.update(data)
        self._size = position

    def _os_error(self, exc: OSError) -> BlobError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFull(
                "The platform's file store is out of disk space; free space under "
                f"{self._store.root} and retrieve the file again."
            )
        return BlobError(f"The platform could not write to its file store: {exc.strerror}.")

    async def sync(self) -> int:
        """fsync what is written; returns the durable size."""
        await self._writes.idle()
        size = self._size
        if self._fd < 0:
            return self._durable
        try:
            await self._syncs.run(os.fsync, self._fd)
        except OSError as exc:
            raise self._os_error(exc) from exc
        self._durable = max(self._durable, size)
        return self._durable

    def sha256_so_far(self) -> str:
        return self._hasher.hexdigest()

    async def commit(self, expected_sha256: str, expected_size: int) -> Blob:
        """Verify and move into the content address; BlobMismatch (partial removed) otherwise.

        Committing a blob the store already holds keeps the existing file and drops this one.
        """
        _check_sha256(expected_sha256)
        try:
            await self.sync()
        except BlobError:
            await self.discard()
            raise
        actual = self._hasher.hexdigest()
        size = self._size
        if actual != expected_sha256 or size != expected_size:
            await self.discard()
            raise BlobMismatch(
                f"The file's SHA-256 on arrival ({actual}, {size} bytes) does not match the "
                f"expected one ({expected_sha256}, {expected_size} bytes).",
                actual_sha256=actual,
                actual_size=size,
            )
        await self.close()
        try:
            path = await self._store.commit_path(self.path, actual)
        except OSError as exc:
            await asyncio.to_thread(self.path.unlink, True)
            raise self._os_error(exc) from exc
        return Blob(actual, size, path)

    async def discard(self) -> None:
        """Remove the partial upload and everything it wrote."""
        await self.close()
        await asyncio.to_thread(self.path.unlink, True)

    async def close(self) -> None:
        """Close the file but keep it on disk for a later resume."""
        await self._writes.idle()
        await self._syncs.idle()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
