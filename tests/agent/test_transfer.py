"""The agent's transfer engine: sending files it can trust to be stable, writing files so the
destination is either untouched or complete. The platform's engine plays the other end."""

import asyncio
import hashlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from tether.agent import transfer as transfer_module
from tether.agent.actions import HANDLERS
from tether.agent.gate import ResponseGate
from tether.agent.jobs import JobRunner
from tether.agent.journal import Journal
from tether.agent.transfer import AgentTransfers, ReceivedFile
from tether.protocol import ACTIONS, ProtocolError
from tether.protocol.filesystem import FilePutArgs
from tether.protocol.transfer import (
    TransferFailed,
    TransferOpen,
    encode_chunk,
    transfer_id_for,
)
from tether.server.services.transfers import HostTransfers
from tether.server.store.blobs import Blob, BlobStore

from ..transfer_link import Link, small_tmpfs, write_random_file

MiB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "platform")


async def store_blob(store: BlobStore, data: bytes) -> Blob:
    partial = await store.open_partial(uuid.uuid4())
    await partial.write(0, data)
    return await partial.commit(hashlib.sha256(data).hexdigest(), len(data))


async def put(
    store: BlobStore,
    data: bytes,
    destination: Path,
    job: str = "job-put",
    mode: int | None = None,
) -> ReceivedFile:
    """Send `data` from the platform's library to `destination` on the agent."""
    blob = await store_blob(store, data)
    agent, platform = AgentTransfers(), HostTransfers(store)
    link = await Link(agent, platform).start()
    tid = transfer_id_for(job)
    try:
        results = await asyncio.gather(
            platform.send_blob(tid, job, blob.sha256),
            agent.receive_file(
                tid, job, destination, size=len(data), sha256=blob.sha256, mode=mode
            ),
            return_exceptions=True,
        )
    finally:
        await link.close()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    received = results[1]
    assert isinstance(received, ReceivedFile)
    return received


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tether-"))


async def test_put_replaces_an_existing_file_whole(tmp_path: Path, store: BlobStore) -> None:
    destination = tmp_path / "hosts"
    destination.write_bytes(b"old content")
    data = os.urandom(3 * MiB)
    await put(store, data, destination)
    assert destination.read_bytes() == data
    assert leftovers(tmp_path) == []


async def test_put_keeps_the_private_default_mode_unless_asked(
    tmp_path: Path, store: BlobStore
) -> None:
    plain = await put(store, b"notes", tmp_path / "notes.txt")
    assert stat.S_IMODE((tmp_path / "notes.txt").stat().st_mode) == 0o600
    assert plain.mode == 0o600


async def test_put_installs_the_mode_asked_for_and_reports_it(
    tmp_path: Path, store: BlobStore
) -> None:
    destination = tmp_path / "fix.sh"
    destination.write_bytes(b"old")
    destination.chmod(0o600)
    received = await put(store, b"#!/bin/sh\necho fixed\n", destination, mode=0o755)
    assert stat.S_IMODE(destination.stat().st_mode) == 0o755
    assert received.mode == 0o755
    assert os.access(destination, os.X_OK)


async def test_put_never_sets_setuid_setgid_or_sticky_bits(
    tmp_path: Path, store: BlobStore
) -> None:
    # The protocol refuses such a mode; the agent masks it off all the same.
    received = await put(store, b"x", tmp_path / "tool", mode=0o7755)
    assert stat.S_IMODE((tmp_path / "tool").stat().st_mode) == 0o755
    assert received.mode == 0o755


@pytest.mark.parametrize("mode", ["4755", "2755", "1777", "0999", "75", "rwxr-xr-x"])
def test_the_protocol_refuses_a_mode_beyond_read_write_execute(mode: str) -> None:
    args = {"sha256": "a" * 64, "size": 1, "path": "/usr/local/bin/tool", "mode": mode}
    with pytest.raises(ValidationError):
        FilePutArgs.model_validate(args)


async def test_put_of_an_empty_file(tmp_path: Path, store: BlobStore) -> None:
    await put(store, b"", tmp_path / "empty")
    assert (tmp_path / "empty").read_bytes() == b""


async def test_put_into_a_missing_folder_fails_clearly(tmp_path: Path, store: BlobStore) -> None:
    with pytest.raises(
        TransferFailed, match=r"The folder .*/nowhere does not exist on the endpoint\."
    ):
        await put(store, b"data", tmp_path / "nowhere" / "file")
    assert not (tmp_path / "nowhere").exists()


async def test_put_onto_a_folder_fails_and_leaves_it(tmp_path: Path, store: BlobStore) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inside").write_text("keep")
    with pytest.raises(
        TransferFailed, match="is a folder on the endpoint; give the path of a file"
    ):
        await put(store, b"data", tmp_path / "dir")
    assert (tmp_path / "dir" / "inside").read_text() == "keep"
    assert leftovers(tmp_path) == []


async def test_put_under_a_file_used_as_a_folder_fails(tmp_path: Path, store: BlobStore) -> None:
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(TransferFailed, match="is not a folder on the endpoint"):
        await put(store, b"data", tmp_path / "plain" / "file")
    assert (tmp_path / "plain").read_text() == "not a folder"


async def test_put_where_even_root_may_not_write_fails(store: BlobStore) -> None:
    # /sys refuses new files to root too: the permission case a test running as root can meet.
    with pytest.raises(
        TransferFailed, match=r"The agent failed creating a file in /sys: Permission denied\."
    ):
        await put(store, b"data", Path("/sys/tether-test-file"))


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny") as directory:
        yield directory


async def test_put_on_a_full_disk_leaves_nothing(full_disk: Path, store: BlobStore) -> None:
    with pytest.raises(TransferFailed, match="The endpoint's disk is full"):
        await put(store, os.urandom(3 * MiB), full_disk / "big")
    assert os.listdir(full_disk) == []


async def test_put_of_corrupted_library_bytes_is_caught(tmp_path: Path, store: BlobStore) -> None:
    data = os.urandom(2 * MiB)
    blob = await store_blob(store, data)
    os.chmod(blob.path, 0o600)
    blob.path.write_bytes(b"\0" * len(data))  # bit rot in the library, same length
    destination = tmp_path / "tool"
    destination.write_bytes(b"previous")
    agent, platform = AgentTransfers(), HostTransfers(store)
    link = await Link(agent, platform).start()
    tid = transfer_id_for("job-rot")
    sending = platform.send_blob(tid, "job-rot", blob.sha256)
    receiving = agent.receive_file(tid, "job-rot", destination, size=len(data), sha256=blob.sha256)
    results = await asyncio.gather(sending, receiving, return_exceptions=True)
    await link.close()
    assert all(isinstance(r, TransferFailed) for r in results)
    assert "does not match" in str(results[1])
    assert destination.read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


async def test_get_of_a_missing_file_or_a_folder_fails_before_sending(tmp_path: Path) -> None:
    agent = AgentTransfers()
    with pytest.raises(TransferFailed, match="does not exist on the endpoint"):
        await agent.send_file(uuid.uuid4(), "j", tmp_path / "missing")
    with pytest.raises(TransferFailed, match="folder"):
        await agent.send_file(uuid.uuid4(), "j", tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TransferFailed, match="not a regular file"):
        await agent.send_file(uuid.uuid4(), "j", fifo)


async def test_get_of_a_file_changing_underneath_fails_clearly(
    tmp_path: Path, store: BlobStore
) -> None:
    source = tmp_path / "growing.log"
    write_random_file(source, 8 * MiB)
    agent, platform = AgentTransfers(), HostTransfers(store)
    tid = transfer_id_for("job-change")
    first = await Link(agent, platform, cut_after=3 * MiB).start()
    receiving = asyncio.create_task(platform.receive_file(tid, "job-change"))
    sending = asyncio.create_task(agent.send_file(tid, "job-change", source))
    await first.cut_event.wait()
    await first.close()
    with source.open("ab") as log:
        log.write(b"a new line\n")
    second = await Link(agent, platform).start()
    results = await asyncio.gather(receiving, sending, return_exceptions=True)
    await second.close()
    assert all(isinstance(r, TransferFailed) for r in results), results
    assert "changed on the endpoint while it was being sent" in str(results[1])
    assert list((store.root / "partial").iterdir()) == []


async def test_a_disconnect_pauses_the_agent_and_a_new_link_resumes(
    tmp_path: Path, store: BlobStore
) -> None:
    source = tmp_path / "f"
    sha = write_random_file(source, 10 * MiB)
    agent, platform = AgentTransfers(), HostTransfers(store)
    tid = transfer_id_for("job-pause")
    links = [await Link(agent, platform, cut_after=2 * MiB).start()]
    receiving = asyncio.create_task(platform.receive_file(tid, "job-pause"))
    sending = asyncio.create_task(agent.send_file(tid, "job-pause", source))
    for cut_after in (5 * MiB, 3 * MiB):  # two more cuts before it gets through
        await links[-1].cut_event.wait()
        await links[-1].close()
        links.append(await Link(agent, platform, cut_after=cut_after).start())
    await links[-1].cut_event.wait()
    await links[-1].close()
    last = await Link(agent, platform).start()
    blob, done = await asyncio.gather(receiving, sending)
    await last.close()
    assert blob.sha256 == done.sha256 == sha


async def test_the_platform_sending_out_of_turn_is_a_protocol_error() -> None:
    agent = AgentTransfers()

    class Silent:
        async def send_text(self, text: str) -> None:
            pass

        async def send_binary(self, frame: bytes | memoryview) -> None:
            pass

    await agent.attach(Silent())
    with pytest.raises(ProtocolError, match="unknown transfer"):
        await agent.on_chunk(encode_chunk(uuid.uuid4(), 0, b"x"))
    # An open before its job registered the transfer waits (bounded) instead of failing.
    await agent.on_message(
        TransferOpen(transfer_id=uuid.uuid4(), job_id="j", direction="put", size=1)
    )
    agent.detach()
    with pytest.raises(ProtocolError, match="detached"):
        await agent.on_message(
            TransferOpen(transfer_id=uuid.uuid4(), job_id="j", direction="put", size=1)
        )


async def test_a_restarted_agent_rehashes_what_the_platform_holds(
    tmp_path: Path, store: BlobStore
) -> None:
    source = tmp_path / "f"
    sha = write_random_file(source, 10 * MiB)
    platform = HostTransfers(store)
    tid = transfer_id_for("job-agent-restart")
    dead_agent = AgentTransfers()
    first = await Link(dead_agent, platform, cut_after=4 * MiB).start()
    receiving = asyncio.create_task(platform.receive_file(tid, "job-agent-restart"))
    dead_sending = asyncio.create_task(dead_agent.send_file(tid, "job-agent-restart", source))
    await first.cut_event.wait()
    await first.close()
    # A new agent process: no hash state, only the file; the platform says where to go on from.
    agent = AgentTransfers()
    second = await Link(agent, platform).start()
    done = await agent.send_file(tid, "job-agent-restart", source)
    blob = await receiving
    await second.close()
    dead_sending.cancel()
    assert blob.sha256 == done.sha256 == sha
    assert 0 < second.chunk_bytes < 10 * MiB


async def test_a_put_over_the_agents_cap_is_refused(tmp_path: Path, store: BlobStore) -> None:
    blob = await store_blob(store, os.urandom(2 * MiB))
    agent, platform = AgentTransfers(max_put_bytes=1 * MiB), HostTransfers(store)
    link = await Link(agent, platform).start()
    tid = transfer_id_for("job-cap")
    destination = tmp_path / "big"
    results = await asyncio.gather(
        platform.send_blob(tid, "job-cap", blob.sha256),
        agent.receive_file(tid, "job-cap", destination, size=2 * MiB, sha256=blob.sha256),
        return_exceptions=True,
    )
    await link.close()
    assert str(results[1]) == (
        "The file is 2.0 MiB, over the 1.0 MiB limit for files sent to an endpoint."
    )
    assert isinstance(results[0], TransferFailed)
    assert not destination.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="hard links and FIFOs as planted files are POSIX")
@pytest.mark.parametrize("planted", ["hard link", "fifo"])
async def test_a_temporary_file_planted_by_someone_else_is_never_written(
    tmp_path: Path, store: BlobStore, planted: str
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    temp = tmp_path / f".tether-{transfer_id_for('job-planted')}.part"
    if planted == "hard link":
        os.link(victim, temp)  # writing through it would overwrite the victim as root
    else:
        os.mkfifo(temp)
    with pytest.raises(TransferFailed, match="is not a file this agent created"):
        await put(store, b"payload", tmp_path / "tool", job="job-planted")
    assert victim.read_bytes() == b"keep me"
    assert not (tmp_path / "tool").exists()


async def test_a_temporary_file_swapped_before_the_rename_is_not_installed(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = tmp_path / "tool"
    real_fsync = os.fsync
    swapped: list[Path] = []

    def fsync_then_swap(fd: int) -> None:
        real_fsync(fd)
        temp = next(tmp_path.glob(".tether-*.part"), None)
        if temp is not None and not swapped:
            # Someone with write access to the folder replaces the verified file by name.
            temp.unlink()
            temp.write_bytes(b"evil")
            swapped.append(temp)

    monkeypatch.setattr(os, "fsync", fsync_then_swap)
    with pytest.raises(TransferFailed, match="was replaced while the file was received"):
        await put(store, b"payload", destination, job="job-swapped")
    assert not destination.exists()


async def test_a_file_changed_on_disk_before_the_rename_is_not_installed(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent confirms the hash of the file read back from its disk, not of what it meant
    to write: bytes changed in place after they were written fail the deploy."""
    destination = tmp_path / "tool"
    data = b"payload"
    real_fsync = os.fsync
    tampered: list[Path] = []

    def fsync_then_tamper(fd: int) -> None:
        real_fsync(fd)
        temp = next(tmp_path.glob(".tether-*.part"), None)
        if temp is not None and temp.stat().st_size == len(data) and not tampered:
            with temp.open("r+b") as same_file:
                same_file.write(b"P")
            tampered.append(temp)

    monkeypatch.setattr(os, "fsync", fsync_then_tamper)
    with pytest.raises(TransferFailed) as failed:
        await put(store, data, destination, job="job-tampered")
    assert tampered
    # As the platform hears it from the agent's abort.
    assert str(failed.value) == (
        "The endpoint refused the file: The file as written to the endpoint's disk has SHA-256 "
        f"{hashlib.sha256(b'Payload').hexdigest()}, not the {hashlib.sha256(data).hexdigest()} "
        "that arrived, so it was not installed."
    )
    assert not destination.exists()
    assert leftovers(tmp_path) == []


async def test_a_deploy_scrambled_by_a_translating_descriptor_is_refused(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Windows text-mode descriptor writes LF as CRLF and reads CRLF back as LF, so a hash
    read through the writing descriptor would match what arrived. The agent reads the file back
    through a descriptor of its own, which sees the disk."""
    translating: set[int] = set()
    real_write_at, real_read_at = transfer_module._write_at, transfer_module._read_at

    def write_as_text(fd: int, data: memoryview, offset: int) -> int:
        translating.add(fd)
        real_write_at(fd, memoryview(bytes(data).replace(b"\n", b"\r\n")), offset)
        return len(data)

    # Where each translated offset is in the file, as a text-mode descriptor's position is.
    raw_offsets: dict[tuple[int, int], int] = {}

    def read_as_text(fd: int, length: int, offset: int) -> bytes:
        if fd not in translating:
            return real_read_at(fd, length, offset)
        raw = raw_offsets.get((fd, offset), offset)
        block = real_read_at(fd, length, raw)
        text = block.replace(b"\r\n", b"\n")
        raw_offsets[(fd, offset + len(text))] = raw + len(block)
        return text

    monkeypatch.setattr(transfer_module, "_write_at", write_as_text)
    monkeypatch.setattr(transfer_module, "_read_at", read_as_text)
    destination = tmp_path / "tool.exe"
    with pytest.raises(TransferFailed, match="as written to the endpoint's disk has SHA-256"):
        await put(store, b"MZ\x90\x00\n\x1a\n", destination, job="job-text-mode")
    assert not destination.exists()
    assert leftovers(tmp_path) == []


async def test_a_put_cut_short_by_a_restart_leaves_no_temporary_file_behind(
    tmp_path: Path, store: BlobStore
) -> None:
    folder = tmp_path / "endpoint"
    folder.mkdir()
    data = os.urandom(6 * MiB)
    blob = await store_blob(store, data)
    journal = Journal(tmp_path / "journal.db")
    journal.receive("job-stop", "files.put")
    journal.set_running("job-stop")
    agent, platform = AgentTransfers(partials=journal), HostTransfers(store)
    tid = transfer_id_for("job-stop")
    link = await Link(agent, platform, cut_after=2 * MiB).start()
    sending = asyncio.create_task(platform.send_blob(tid, "job-stop", blob.sha256))
    receiving = asyncio.create_task(
        agent.receive_file(tid, "job-stop", folder / "tool", size=len(data), sha256=blob.sha256)
    )
    await link.cut_event.wait()
    await link.close()
    # The agent stops while the transfer waits for a new connection: its job task is cancelled.
    receiving.cancel()
    sending.cancel()
    await asyncio.gather(receiving, sending, return_exceptions=True)
    assert leftovers(folder) == [f".tether-{tid}.part"]
    # Someone else's file registered under a name (it cannot be, but a damaged journal could
    # say so) is never removed.
    foreign = folder / "victim"
    foreign.write_bytes(b"keep me")
    os.link(foreign, folder / ".tether-planted.part")
    journal.add_partial(folder / ".tether-planted.part", "job-stop")
    journal.close()

    # The next agent process: its temporary file goes, the job ends failed saying the
    # destination was not touched.
    restarted = Journal(tmp_path / "journal.db")
    stopped = restarted.last_alive()  # the job's start
    assert stopped is not None
    JobRunner(restarted, HANDLERS, ResponseGate(), ACTIONS)
    assert leftovers(folder) == [".tether-planted.part"]
    assert foreign.read_bytes() == b"keep me"
    assert not (folder / "tool").exists()
    assert restarted.partials() == []
    job = restarted.get("job-stop")
    assert job is not None
    assert job.status is not None
    assert (job.state, job.status.error) == (
        "failed",
        f"The agent stopped at about {stopped:%Y-%m-%d %H:%M:%S} UTC while receiving the file; "
        "the partly received copy was removed and the destination was left as it was.",
    )


async def test_a_finished_put_is_forgotten_by_the_journal(tmp_path: Path, store: BlobStore) -> None:
    data = b"payload"
    blob = await store_blob(store, data)
    journal = Journal(tmp_path / "journal.db")
    agent, platform = AgentTransfers(partials=journal), HostTransfers(store)
    link = await Link(agent, platform).start()
    tid = transfer_id_for("job-done")
    await asyncio.gather(
        platform.send_blob(tid, "job-done", blob.sha256),
        agent.receive_file(tid, "job-done", tmp_path / "tool", size=len(data), sha256=blob.sha256),
    )
    await link.close()
    assert (tmp_path / "tool").read_bytes() == data
    assert journal.partials() == []


@pytest.mark.skipif(os.name != "posix", reason="the openat walk is POSIX")
async def test_a_put_through_a_linked_folder_is_refused_and_writes_nothing(
    tmp_path: Path, store: BlobStore
) -> None:
    protected = tmp_path / "protected"
    protected.mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "drop").symlink_to(protected)
    with pytest.raises(TransferFailed) as refused:
        await put(store, b"payload", tmp_path / "x" / "drop" / "evil.conf", job="job-link")
    assert str(refused.value) == (
        f"The endpoint refused the file: Nothing was written: {tmp_path / 'x' / 'drop'} is a "
        f"symbolic link (to {protected}), and the agent does not follow links in a path it "
        "writes to."
    )
    assert list(protected.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="the openat walk is POSIX")
async def test_a_folder_re_linked_during_a_put_still_receives_in_the_folder_checked(
    tmp_path: Path, store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = tmp_path / "drop"
    checked.mkdir()
    protected = tmp_path / "protected"
    protected.mkdir()
    real_fsync = os.fsync
    swapped: list[bool] = []

    def fsync_then_relink(fd: int) -> None:
        real_fsync(fd)
        if not swapped and next(checked.glob(".tether-*.part"), None) is not None:
            # Someone who can write to tmp_path moves the folder and leaves a link in its place,
            # after the agent checked the path and before it renames the file into place.
            checked.rename(tmp_path / "moved")
            checked.symlink_to(protected)
            swapped.append(True)

    monkeypatch.setattr(os, "fsync", fsync_then_relink)
    await put(store, b"payload", checked / "tool", job="job-relink")
    assert swapped
    assert list(protected.iterdir()) == []
    assert (tmp_path / "moved" / "tool").read_bytes() == b"payload"


@pytest.mark.skipif(os.name != "posix", reason="symbolic links as files are POSIX here")
async def test_a_put_over_a_link_replaces_the_link_not_its_target(
    tmp_path: Path, store: BlobStore
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    destination = tmp_path / "tool"
    destination.symlink_to(victim)
    await put(store, b"payload", destination, job="job-over-link")
    assert victim.read_bytes() == b"keep me"
    assert not destination.is_symlink()
    assert destination.read_bytes() == b"payload"


async def test_a_link_re_pointed_before_the_open_sends_nothing(tmp_path: Path) -> None:
    """files.get describes the file it looked at; if the name now leads elsewhere, it refuses."""
    looked_at = tmp_path / "evidence"
    looked_at.write_bytes(b"what the analyst asked for")
    other = tmp_path / "other"
    other.write_bytes(b"swapped in")
    link = tmp_path / "link"
    link.symlink_to(looked_at)
    described = os.stat(link)
    link.unlink()
    link.symlink_to(other)
    with pytest.raises(TransferFailed) as refused:
        await AgentTransfers().send_file(
            uuid.uuid4(), "j", link, expect=(described.st_dev, described.st_ino)
        )
    assert str(refused.value) == (
        f"{link} changed while the agent opened it, so nothing was retrieved; try again."
    )
