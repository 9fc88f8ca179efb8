"""The content-addressed file store: partial uploads, resume, verification, caps, full disks."""

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.server.store.blobs import (
    DEFAULT_MAX_BLOB_BYTES,
    BlobError,
    BlobMismatch,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    StorageFull,
)

from ...transfer_link import small_tmpfs

TID = uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100")
DATA = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def partials(store: BlobStore) -> list[Path]:
    directory = store.root / "partial"
    return sorted(directory.iterdir()) if directory.exists() else []


async def write_all(store: BlobStore, data: bytes, transfer_id: uuid.UUID = TID) -> None:
    partial = await store.open_partial(transfer_id, declared_size=len(data))
    for offset in range(partial.size, len(data), 1024 * 1024):
        await partial.write(offset, data[offset : offset + 1024 * 1024])
    await partial.close()


async def test_commit_stores_the_bytes_under_their_sha256(store: BlobStore) -> None:
    partial = await store.open_partial(TID, declared_size=len(DATA))
    await partial.write(0, DATA[:1000])
    await partial.write(1000, memoryview(DATA)[1000:])
    assert await partial.sync() == len(DATA) == partial.durable_size
    blob = await partial.commit(SHA, len(DATA))
    assert blob.path == store.root / "sha256" / SHA[:2] / SHA[2:] == store.path_of(SHA)
    assert blob.path.read_bytes() == DATA
    assert await store.exists(SHA)
    assert partials(store) == []
    reader = await store.open_read(SHA)
    try:
        assert reader.size == len(DATA)
        assert await reader.read_at(5, 10) == DATA[5:15]
    finally:
        reader.close()


async def test_committing_a_blob_held_already_keeps_one_copy(store: BlobStore) -> None:
    for transfer_id in (TID, uuid.uuid4()):
        partial = await store.open_partial(transfer_id)
        await partial.write(0, DATA)
        blob = await partial.commit(SHA, len(DATA))
    assert blob.path.read_bytes() == DATA
    assert partials(store) == []


async def test_resume_rehashes_what_is_on_disk(store: BlobStore) -> None:
    await write_all(store, DATA[: 2 * 1024 * 1024])
    # A new store object, as after a platform restart.
    resumed = await BlobStore(store.root).open_partial(TID, declared_size=len(DATA))
    assert resumed.size == resumed.durable_size == 2 * 1024 * 1024
    await resumed.write(resumed.size, DATA[resumed.size :])
    blob = await resumed.commit(SHA, len(DATA))
    assert blob.sha256 == SHA


async def test_gaps_and_overlaps_are_refused(store: BlobStore) -> None:
    partial = await store.open_partial(TID)
    await partial.write(0, b"abc")
    with pytest.raises(BlobError, match="offset 5 does not continue the 3 bytes"):
        await partial.write(5, b"x")
    with pytest.raises(BlobError, match="offset 1 does not continue"):
        await partial.write(1, b"x")
    await partial.discard()


async def test_a_mismatch_removes_the_partial_and_says_both_hashes(store: BlobStore) -> None:
    partial = await store.open_partial(TID)
    await partial.write(0, DATA)
    with pytest.raises(BlobMismatch, match=f"on arrival \\({SHA}") as caught:
        await partial.commit("0" * 64, len(DATA))
    assert caught.value.actual_sha256 == SHA
    assert partials(store) == []
    assert not await store.exists("0" * 64)


async def test_a_wrong_size_is_a_mismatch_too(store: BlobStore) -> None:
    partial = await store.open_partial(TID)
    await partial.write(0, DATA)
    with pytest.raises(BlobMismatch):
        await partial.commit(SHA, len(DATA) + 1)
    assert partials(store) == []


async def test_the_cap_refuses_a_declared_size_with_a_sentence(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    assert store.max_bytes == DEFAULT_MAX_BLOB_BYTES == 4 * 1024**3
    with pytest.raises(
        BlobTooLarge, match=r"^The file is 5\.0 GiB, over the 4\.0 GiB limit for retrieved files\.$"
    ):
        await store.open_partial(TID, declared_size=5 * 1024**3)
    assert partials(store) == []


async def test_the_cap_refuses_bytes_written_beyond_it(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=1024 * 1024)
    partial = await store.open_partial(TID)
    await partial.write(0, bytes(1024 * 1024))
    with pytest.raises(BlobTooLarge, match=r"over the 1\.0 MiB limit"):
        await partial.write(1024 * 1024, b"x")
    assert partials(store) == []


async def test_discard_removes_everything(store: BlobStore) -> None:
    partial = await store.open_partial(TID)
    await partial.write(0, DATA)
    await partial.discard()
    assert partials(store) == []


async def test_unknown_and_malformed_names(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound, match="no file with SHA-256"):
        await store.open_read("1" * 64)
    for bad in ("../../etc/passwd", "A" * 64, "1" * 63):
        with pytest.raises(BlobError, match="not a SHA-256"):
            store.path_of(bad)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny") as directory:
        yield directory


async def test_a_full_disk_is_one_sentence_and_leaves_no_partial(full_disk: Path) -> None:
    store = BlobStore(full_disk)
    partial = await store.open_partial(TID)

    async def fill() -> None:
        for offset in range(0, len(DATA), 256 * 1024):
            await partial.write(offset, DATA[offset : offset + 256 * 1024])

    with pytest.raises(StorageFull, match="out of disk space"):
        await fill()
    assert partials(store) == []


async def test_a_node_of_several_says_which_store_lacks_a_file_and_stores_share_an_id(
    tmp_path: Path,
) -> None:
    # docs/adr/0050: a file another node stored is not assumed to be on this node's disk.
    missing = "ab" * 32
    with pytest.raises(BlobNotFound, match="The file store holds no file"):
        await BlobStore(tmp_path / "one").open_read(missing)
    node = BlobStore(tmp_path / "own", several_nodes=True)
    with pytest.raises(BlobNotFound, match=r"^This node's file store \(.*own\) holds no file .*"):
        await node.open_read(missing)
    # Two nodes on one shared directory report one store id; another directory, another id.
    shared = tmp_path / "shared"
    assert BlobStore(shared).identity() == BlobStore(shared).identity()
    assert BlobStore(shared).identity() != node.identity()
