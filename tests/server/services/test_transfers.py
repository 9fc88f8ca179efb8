"""The platform's transfer engine, against the agent's through an in-memory link, and against a
scripted agent that breaks every rule it can."""

import asyncio
import hashlib
import os
import tracemalloc
import uuid
from pathlib import Path

import pytest

from tether.agent.transfer import AgentTransfers
from tether.protocol import ProtocolError
from tether.protocol.transfer import (
    DEFAULT_WINDOW_BYTES,
    MIN_WINDOW_BYTES,
    TransferAbort,
    TransferAccept,
    TransferAck,
    TransferDone,
    TransferEnd,
    TransferFailed,
    TransferOpen,
    encode_chunk,
    parse_transfer_message,
    transfer_id_for,
)
from tether.protocol.transfer_engine import Progress
from tether.server.services.transfers import HostTransfers
from tether.server.store.blobs import Blob, BlobStore

from ...transfer_link import Link, sha256_of, write_random_file

MiB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def partials(store: BlobStore) -> list[Path]:
    directory = store.root / "partial"
    return sorted(directory.iterdir()) if directory.exists() else []


async def store_blob(store: BlobStore, data: bytes) -> Blob:
    partial = await store.open_partial(uuid.uuid4())
    await partial.write(0, data)
    return await partial.commit(hashlib.sha256(data).hexdigest(), len(data))


async def test_get_brings_a_file_into_the_store_within_the_window(
    tmp_path: Path, store: BlobStore
) -> None:
    source = tmp_path / "evidence.bin"
    sha = write_random_file(source, 12 * MiB + 123)
    agent, platform = AgentTransfers(), HostTransfers(store)
    link = await Link(agent, platform).start()
    tid = transfer_id_for("job-get")
    blob, done = await asyncio.gather(
        platform.receive_file(tid, "job-get"), agent.send_file(tid, "job-get", source)
    )
    await link.close()
    assert blob.sha256 == done.sha256 == sha
    assert sha256_of(store.path_of(sha)) == sha
    assert partials(store) == []
    stats = link.stats[tid]
    assert 0 < stats.max_in_flight <= DEFAULT_WINDOW_BYTES
    assert link.errors == []


async def test_both_directions_report_their_progress_to_the_end(
    tmp_path: Path, store: BlobStore
) -> None:
    seen: list[tuple[uuid.UUID, str, int, int]] = []

    def watch(progress: Progress) -> None:
        seen.append((progress.transfer_id, progress.direction, progress.done, progress.size))

    source = tmp_path / "evidence.bin"
    write_random_file(source, 6 * MiB + 7)
    data = os.urandom(3 * MiB + 5)
    blob = await store_blob(store, data)
    agent, platform = AgentTransfers(), HostTransfers(store, progress=watch)
    link = await Link(agent, platform).start()
    get_id, put_id = transfer_id_for("job-get-progress"), transfer_id_for("job-put-progress")
    destination = tmp_path / "tool"
    await asyncio.gather(
        platform.receive_file(get_id, "job-get-progress"),
        agent.send_file(get_id, "job-get-progress", source),
        platform.send_blob(put_id, "job-put-progress", blob.sha256),
        agent.receive_file(
            put_id, "job-put-progress", destination, size=len(data), sha256=blob.sha256
        ),
    )
    await link.close()
    for tid, direction, size in ((get_id, "get", 6 * MiB + 7), (put_id, "put", 3 * MiB + 5)):
        moved = [(d, n, s) for t, d, n, s in seen if t == tid]
        # Acknowledged bytes as they grow (never backwards, never past the size), then the end.
        assert len(moved) >= 3, moved
        assert all(d == direction and s == size for d, _, s in moved)
        counts = [n for _, n, _ in moved]
        assert counts == sorted(counts)
        assert 0 < counts[0] < size
        assert counts[-1] == size


async def test_put_sends_a_library_blob_to_an_endpoint_path(
    tmp_path: Path, store: BlobStore
) -> None:
    data = os.urandom(5 * MiB + 1)
    blob = await store_blob(store, data)
    destination = tmp_path / "endpoint" / "tool.exe"
    destination.parent.mkdir()
    agent, platform = AgentTransfers(), HostTransfers(store)
    link = await Link(agent, platform).start()
    tid = transfer_id_for("job-put")
    done, received = await asyncio.gather(
        platform.send_blob(tid, "job-put", blob.sha256),
        agent.receive_file(tid, "job-put", destination, size=len(data), sha256=blob.sha256),
    )
    await link.close()
    assert done.sha256 == received.sha256 == blob.sha256
    assert destination.read_bytes() == data
    assert os.listdir(destination.parent) == ["tool.exe"]
    assert link.stats[tid].max_in_flight <= DEFAULT_WINDOW_BYTES


async def test_flow_control_holds_with_the_smallest_window(
    tmp_path: Path, store: BlobStore
) -> None:
    source = tmp_path / "f"
    sha = write_random_file(source, 9 * MiB)
    agent = AgentTransfers(chunk_bytes=256 * 1024)
    platform = HostTransfers(store, window=MIN_WINDOW_BYTES)
    link = await Link(agent, platform).start()
    tid = transfer_id_for("job-w")
    blob, _ = await asyncio.gather(
        platform.receive_file(tid, "job-w"), agent.send_file(tid, "job-w", source)
    )
    await link.close()
    assert blob.sha256 == sha
    # Never exceeded; and used: the sender is not held far below its credit (how close it gets
    # depends on when acknowledgements arrive while the next chunk is read ahead).
    assert MIN_WINDOW_BYTES // 2 < link.stats[tid].max_in_flight <= MIN_WINDOW_BYTES


async def test_get_resumes_after_the_link_is_cut(tmp_path: Path, store: BlobStore) -> None:
    source = tmp_path / "f"
    size = 16 * MiB
    sha = write_random_file(source, size)
    agent, platform = AgentTransfers(), HostTransfers(store)
    tid = transfer_id_for("job-cut")
    first = await Link(agent, platform, cut_after=6 * MiB).start()
    receiving = asyncio.create_task(platform.receive_file(tid, "job-cut"))
    sending = asyncio.create_task(agent.send_file(tid, "job-cut", source))
    await first.cut_event.wait()
    await first.close()
    await asyncio.sleep(0.05)
    assert not receiving.done()
    assert not sending.done()
    second = await Link(agent, platform).start()
    blob, done = await asyncio.gather(receiving, sending)
    await second.close()
    assert blob.sha256 == done.sha256 == sha
    # Resumed, not restarted: at most a window was sent twice.
    assert first.chunk_bytes + second.chunk_bytes <= size + DEFAULT_WINDOW_BYTES
    assert second.chunk_bytes < size


@pytest.mark.parametrize("successor", ["restarted", "another node"])
async def test_get_finishes_on_a_restarted_platform_from_the_partial_on_disk(
    tmp_path: Path, store: BlobStore, successor: str
) -> None:
    # "another node": the node holding the agent was killed and the agent came back to another
    # node sharing the file store directory (docs/adr/0050): the same partial, resumed.
    source = tmp_path / "f"
    size = 20 * MiB
    sha = write_random_file(source, size)
    agent = AgentTransfers()
    tid = transfer_id_for("job-restart")
    dead_platform = HostTransfers(store)
    first = await Link(agent, dead_platform, cut_after=10 * MiB).start()
    dead_receiving = asyncio.create_task(dead_platform.receive_file(tid, "job-restart"))
    sending = asyncio.create_task(agent.send_file(tid, "job-restart", source))
    await first.cut_event.wait()
    await first.close()
    # The platform process is gone: nothing of it runs again, only its disk remains.
    assert [p.name for p in partials(store)] == [str(tid)]
    held = partials(store)[0].stat().st_size
    assert held > 0
    restarted = HostTransfers(BlobStore(store.root, several_nodes=successor == "another node"))
    # The agent reconnects first and re-opens at once; the job is registered again after.
    second = await Link(agent, restarted).start()
    await asyncio.sleep(0.05)
    blob = await restarted.receive_file(tid, "job-restart")
    done = await sending
    await second.close()
    dead_receiving.cancel()
    assert blob.sha256 == done.sha256 == sha == sha256_of(blob.path)
    assert second.chunk_bytes <= size - held
    assert partials(store) == []


async def test_put_resumes_after_the_link_is_cut(tmp_path: Path, store: BlobStore) -> None:
    data = os.urandom(12 * MiB)
    blob = await store_blob(store, data)
    destination = tmp_path / "out.bin"
    agent, platform = AgentTransfers(), HostTransfers(store)
    tid = transfer_id_for("job-put-cut")
    first = await Link(agent, platform, cut_after=5 * MiB).start()
    sending = asyncio.create_task(platform.send_blob(tid, "job-put-cut", blob.sha256))
    receiving = asyncio.create_task(
        agent.receive_file(tid, "job-put-cut", destination, size=len(data), sha256=blob.sha256)
    )
    await first.cut_event.wait()
    await first.close()
    await asyncio.sleep(0.05)
    temp = tmp_path / f".tether-{tid}.part"
    assert temp.exists()  # kept for the resume
    assert not destination.exists()
    second = await Link(agent, platform).start()
    await asyncio.gather(sending, receiving)
    await second.close()
    assert destination.read_bytes() == data
    assert not temp.exists()
    assert second.chunk_bytes < len(data)


async def test_a_put_resumed_by_a_restarted_platform_is_not_counted_as_verified(
    tmp_path: Path, store: BlobStore
) -> None:
    """The restarted platform sent only the rest of the file: it cannot vouch for the first
    half it never streamed, so the agent's done is not believed (docs/adr: endpoint claims)."""
    data = os.urandom(12 * MiB)
    blob = await store_blob(store, data)
    destination = tmp_path / "out.bin"
    agent = AgentTransfers()
    tid = transfer_id_for("job-put-restart")
    dead_platform = HostTransfers(store)
    first = await Link(agent, dead_platform, cut_after=6 * MiB).start()
    dead_sending = asyncio.create_task(dead_platform.send_blob(tid, "job-put-restart", blob.sha256))
    receiving = asyncio.create_task(
        agent.receive_file(tid, "job-put-restart", destination, size=len(data), sha256=blob.sha256)
    )
    await first.cut_event.wait()
    await first.close()
    restarted = HostTransfers(BlobStore(store.root))
    second = await Link(agent, restarted).start()
    with pytest.raises(TransferFailed) as failed:
        await restarted.send_blob(tid, "job-put-restart", blob.sha256)
    received = await receiving
    await second.close()
    dead_sending.cancel()
    assert received.sha256 == blob.sha256
    assert destination.read_bytes() == data
    assert second.chunk_bytes < len(data)  # the restarted platform sent only the rest
    sentence = (
        f"The endpoint confirmed the file when the platform had sent it only 0 of its "
        f"{len(data)} bytes, so the deploy is not counted (the file may still be on the endpoint)."
    )
    assert str(failed.value) == sentence
    assert restarted.send_outcome(tid) == sentence


async def test_a_put_the_agent_confirms_without_the_bytes_is_not_believed(
    store: BlobStore,
) -> None:
    """A lying agent claims to hold the whole file already, and confirms its (public) hash."""
    data = os.urandom(3 * MiB)
    blob = await store_blob(store, data)
    platform = HostTransfers(store)
    wire = Recorder()
    await platform.attach(wire)
    task = asyncio.create_task(platform.send_blob(TID, "job-x", blob.sha256))
    await asyncio.sleep(0.01)
    assert platform.send_outcome(TID) is None
    await platform.on_message(
        TransferAccept(transfer_id=TID, offset=len(data), window=MIN_WINDOW_BYTES)
    )
    await asyncio.sleep(0.01)
    assert isinstance(wire.messages()[-1], TransferEnd)
    await platform.on_message(TransferDone(transfer_id=TID, size=len(data), sha256=blob.sha256))
    sentence = (
        f"The endpoint confirmed the file when the platform had sent it only 0 of its "
        f"{len(data)} bytes, so the deploy is not counted (the file may still be on the endpoint)."
    )
    # Known at once, before the job's status (next on the same connection) is recorded.
    assert platform.send_outcome(TID) == sentence
    with pytest.raises(TransferFailed, match="only 0 of its"):
        await task
    assert not [m for m in wire.sent if isinstance(m, bytes)]


async def test_a_put_streamed_in_full_and_confirmed_is_verified(
    tmp_path: Path, store: BlobStore
) -> None:
    data = os.urandom(3 * MiB + 5)
    blob = await store_blob(store, data)
    agent, platform = AgentTransfers(), HostTransfers(store)
    tid = transfer_id_for("job-put-ok")
    link = await Link(agent, platform).start()
    sending = asyncio.create_task(platform.send_blob(tid, "job-put-ok", blob.sha256))
    await agent.receive_file(
        tid, "job-put-ok", tmp_path / "out.bin", size=len(data), sha256=blob.sha256
    )
    done = await sending
    await link.close()
    assert platform.send_outcome(tid) == done
    assert (done.size, done.sha256) == (len(data), blob.sha256)
    # The job is sent again after a reconnect: the agent repeats its done to a fresh open,
    # which proves nothing new, and the verified outcome stands.
    again = await Link(agent, platform).start()
    with pytest.raises(TransferFailed, match="only 0 of its"):
        await platform.send_blob(tid, "job-put-ok", blob.sha256)
    await again.close()
    assert platform.send_outcome(tid) == done
    platform.forget_send(tid)
    assert platform.send_outcome(tid) is None


async def test_a_sender_that_missed_the_done_hears_it_again(store: BlobStore) -> None:
    platform, _, task = await opened(store, 3)
    await platform.on_chunk(encode_chunk(TID, 0, b"abc"))
    sha = hashlib.sha256(b"abc").hexdigest()
    await platform.on_message(TransferEnd(transfer_id=TID, size=3, sha256=sha))
    blob = await task
    assert blob.sha256 == sha
    # The link fell before the done arrived; the agent re-opens on its next connection.
    platform.detach()
    again = Recorder()
    await platform.attach(again)
    await platform.on_message(
        TransferOpen(transfer_id=TID, job_id="job-x", direction="get", size=3)
    )
    assert again.messages() == [TransferDone(transfer_id=TID, size=3, sha256=sha)]


async def test_memory_stays_flat_for_200_mib(tmp_path: Path, store: BlobStore) -> None:
    source = tmp_path / "big.bin"
    size = 200 * MiB
    with source.open("wb") as out:
        out.truncate(size)  # sparse: the disk is not what this test measures
    agent, platform = AgentTransfers(), HostTransfers(store, window=MIN_WINDOW_BYTES)
    link = await Link(agent, platform).start()
    tid = transfer_id_for("job-big")
    tracemalloc.start()
    try:
        blob, _ = await asyncio.gather(
            platform.receive_file(tid, "job-big"), agent.send_file(tid, "job-big", source)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await link.close()
    assert blob.size == size
    print(f"tracemalloc peak over 200 MiB: {peak / MiB:.2f} MiB")
    assert peak < 6 * MiB, f"peak {peak / MiB:.1f} MiB"


# ---- a scripted agent that breaks the rules -------------------------------------------------------


class Recorder:
    """A transport that keeps what the platform sends."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def send_binary(self, frame: bytes | memoryview) -> None:
        self.sent.append(bytes(frame))

    def messages(self) -> list[object]:
        return [parse_transfer_message(m) for m in self.sent if isinstance(m, str)]


TID = transfer_id_for("job-x")


async def opened(
    store: BlobStore, size: int, *, max_bytes: int | None = None
) -> tuple[HostTransfers, Recorder, "asyncio.Task[Blob]"]:
    platform = HostTransfers(store)
    wire = Recorder()
    await platform.attach(wire)
    task = asyncio.create_task(platform.receive_file(TID, "job-x", max_bytes=max_bytes))
    await asyncio.sleep(0)
    await platform.on_message(
        TransferOpen(transfer_id=TID, job_id="job-x", direction="get", size=size)
    )
    return platform, wire, task


async def test_a_chunk_for_an_unknown_transfer_is_a_protocol_error(store: BlobStore) -> None:
    platform = HostTransfers(store)
    await platform.attach(Recorder())
    with pytest.raises(ProtocolError, match="not asked for"):
        await platform.on_chunk(encode_chunk(uuid.uuid4(), 0, b"x"))
    with pytest.raises(ProtocolError, match="shorter than"):
        await platform.on_chunk(b"\x01\x01")


async def test_an_open_nobody_asked_for_grants_nothing(store: BlobStore) -> None:
    platform = HostTransfers(store)
    wire = Recorder()
    await platform.attach(wire)
    for n in range(100):
        await platform.on_message(
            TransferOpen(transfer_id=uuid.uuid4(), job_id=f"j{n}", direction="get", size=1)
        )
    assert wire.sent == []
    assert partials(store) == []


async def test_a_chunk_before_the_accept_is_a_protocol_error(store: BlobStore) -> None:
    platform = HostTransfers(store)
    await platform.attach(Recorder())
    task = asyncio.create_task(platform.receive_file(TID, "job-x"))
    await asyncio.sleep(0)
    with pytest.raises(ProtocolError, match="chunk is not valid while expecting"):
        await platform.on_chunk(encode_chunk(TID, 0, b"x"))
    task.cancel()


async def test_an_offset_gap_is_a_protocol_error(store: BlobStore) -> None:
    platform, wire, task = await opened(store, 100)
    assert isinstance(wire.messages()[0], TransferAccept)
    await platform.on_chunk(encode_chunk(TID, 0, b"x" * 10))
    with pytest.raises(ProtocolError, match="offset 50, expected 10"):
        await platform.on_chunk(encode_chunk(TID, 50, b"x"))
    with pytest.raises(ProtocolError, match="offset 0, expected 10"):
        await platform.on_chunk(encode_chunk(TID, 0, b"x"))
    task.cancel()


async def test_more_than_declared_aborts_and_removes_the_partial(store: BlobStore) -> None:
    platform, wire, task = await opened(store, 100)
    await platform.on_chunk(encode_chunk(TID, 0, b"x" * 60))
    await platform.on_chunk(encode_chunk(TID, 60, b"x" * 60))
    with pytest.raises(TransferFailed, match="more than the 100 bytes it declared"):
        await task
    abort = wire.messages()[-1]
    assert isinstance(abort, TransferAbort)
    assert "100 bytes" in abort.reason
    assert partials(store) == []
    # What the agent still had in flight is dropped quietly, not a violation.
    await platform.on_chunk(encode_chunk(TID, 120, b"x"))


async def test_a_file_over_the_cap_is_refused_before_any_byte(store: BlobStore) -> None:
    _, wire, task = await opened(store, 5 * 1024**3)
    with pytest.raises(TransferFailed) as caught:
        await task
    assert str(caught.value) == "The file is 5.0 GiB, over the 4.0 GiB limit for retrieved files."
    assert isinstance(wire.messages()[-1], TransferAbort)
    assert partials(store) == []


async def test_a_per_job_cap_below_the_store_cap(store: BlobStore) -> None:
    _, _, task = await opened(store, 3 * MiB, max_bytes=2 * MiB)
    with pytest.raises(TransferFailed, match=r"3\.0 MiB, over the 2\.0 MiB limit"):
        await task


async def test_a_hash_mismatch_fails_with_both_hashes(store: BlobStore) -> None:
    platform, wire, task = await opened(store, 10)
    await platform.on_chunk(encode_chunk(TID, 0, b"0123456789"))
    actual = hashlib.sha256(b"0123456789").hexdigest()
    claimed = "f" * 64
    await platform.on_message(TransferEnd(transfer_id=TID, size=10, sha256=claimed))
    expected = (
        f"The file's SHA-256 on arrival ({actual}) does not match the one the endpoint "
        f"computed ({claimed})."
    )
    with pytest.raises(TransferFailed) as caught:
        await task
    assert str(caught.value) == expected
    last = wire.messages()[-1]
    assert isinstance(last, TransferAbort)
    assert last.reason == expected
    assert partials(store) == []
    assert not await store.exists(actual)


async def test_an_early_end_fails(store: BlobStore) -> None:
    platform, _, task = await opened(store, 10)
    await platform.on_chunk(encode_chunk(TID, 0, b"01234"))
    await platform.on_message(TransferEnd(transfer_id=TID, size=5, sha256="f" * 64))
    with pytest.raises(TransferFailed, match="after 5 bytes of a declared 10"):
        await task


async def test_the_agent_cannot_answer_for_transfers_it_was_not_sent(store: BlobStore) -> None:
    platform = HostTransfers(store)
    await platform.attach(Recorder())
    for message in (
        TransferAccept(transfer_id=TID, offset=0, window=MIN_WINDOW_BYTES),
        TransferAck(transfer_id=TID, offset=0),
        TransferDone(transfer_id=TID, size=0, sha256="0" * 64),
    ):
        with pytest.raises(ProtocolError, match="never opened"):
            await platform.on_message(message)


async def test_a_put_ack_beyond_what_was_sent_is_a_protocol_error(store: BlobStore) -> None:
    blob = await store_blob(store, os.urandom(3 * MiB))
    platform = HostTransfers(store)
    wire = Recorder()
    await platform.attach(wire)
    task = asyncio.create_task(platform.send_blob(TID, "job-x", blob.sha256))
    await asyncio.sleep(0.01)
    assert isinstance(wire.messages()[0], TransferOpen)
    await platform.on_message(TransferAccept(transfer_id=TID, offset=0, window=MIN_WINDOW_BYTES))
    with pytest.raises(ProtocolError, match="outside"):
        await platform.on_message(TransferAck(transfer_id=TID, offset=3 * MiB))
    await platform.abort(TID, "Cancelled by the analyst.")
    with pytest.raises(TransferFailed, match="Cancelled"):
        await task


async def test_open_for_the_wrong_job_is_a_protocol_error(store: BlobStore) -> None:
    platform = HostTransfers(store)
    await platform.attach(Recorder())
    task = asyncio.create_task(platform.receive_file(TID, "job-x"))
    await asyncio.sleep(0)
    with pytest.raises(ProtocolError, match="belongs to job job-x"):
        await platform.on_message(
            TransferOpen(transfer_id=TID, job_id="job-y", direction="get", size=1)
        )
    task.cancel()
