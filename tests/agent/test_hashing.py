import hashlib
import os
import threading
from pathlib import Path

import pytest

from tether.agent.hashing import CHUNK_BYTES, NotRegularFile, Stopped, digest, open_regular_file


def test_digests_match_hashlib_over_several_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK_BYTES + 12345)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    file, status = open_regular_file(str(path))
    with file:
        digests, size = digest(file, ["sha256", "sha1", "md5"])
    assert status.st_size == size == len(data)
    assert digests == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
    }


def test_empty_file_has_the_empty_digest(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.touch()
    file, _ = open_regular_file(str(path))
    with file:
        assert digest(file, ["sha256"]) == ({"sha256": hashlib.sha256(b"").hexdigest()}, 0)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        open_regular_file(str(tmp_path))


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            open_regular_file(str(fifo))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "opening a FIFO blocked"
    assert len(outcome) == 1
    assert isinstance(outcome[0], NotRegularFile)


def test_device_is_refused() -> None:
    with pytest.raises(NotRegularFile):
        open_regular_file("/dev/zero")


def test_missing_file_raises_the_system_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_regular_file(str(tmp_path / "nope"))


def test_reading_ends_at_the_next_chunk_once_stopped(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"\0" * (4 * CHUNK_BYTES))
    stop = threading.Event()
    stop.set()
    file, _ = open_regular_file(str(path))
    with file, pytest.raises(Stopped):
        digest(file, ["sha256"], stop)
    assert file.closed
    reread, _ = open_regular_file(str(path))
    with reread:
        reread.read(1)
        stop_later = threading.Event()
        assert digest(reread, ["md5"], stop_later)[1] == 4 * CHUNK_BYTES - 1
