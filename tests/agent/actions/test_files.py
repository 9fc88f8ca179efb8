import hashlib
import os
import pwd
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.agent.action import run_action
from tether.agent.actions import HANDLERS, files
from tether.agent.actions.files import describe_os_error, hash_path, list_directory
from tether.agent.errors import ActionError
from tether.agent.gate import ResponseGate
from tether.protocol import (
    MAX_FRAME_BYTES,
    FileEntry,
    FileHash,
    FileHashArgs,
    FileList,
    JobRequest,
    Policy,
)

XSS = "<img src=x onerror=alert(1)>"
FIXED = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


def gate() -> ResponseGate:
    allowing = ResponseGate()
    allowing.apply(Policy(segment="lab", active_response=True))
    return allowing


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A directory holding one of each kind of entry, and names a terminal or browser would act on."""
    (tmp_path / "notes.txt").write_bytes(b"twelve bytes")
    (tmp_path / "notes.txt").chmod(0o4640)
    os.utime(tmp_path / "notes.txt", (FIXED.timestamp(), FIXED.timestamp()))
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to("sub")
    (tmp_path / "dangling").symlink_to("/nowhere/at\nall")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / XSS).write_text("x")
    (tmp_path / "two\nlines").write_text("x")
    (tmp_path / "bell\x07\x1b[2J").write_text("x")
    # A POSIX name that is not UTF-8.
    with open(os.path.join(os.fsencode(tmp_path), b"latin\xe9"), "wb") as raw:
        raw.write(b"x")
    return tmp_path


def by_name(listing: FileList) -> dict[str, FileEntry]:
    return {entry.name: entry for entry in listing.entries}


def test_lists_each_kind_of_entry_without_following_links(sample: Path) -> None:
    listing = list_directory(str(sample), 100)
    entries = by_name(listing)
    assert listing.path == str(sample)
    assert listing.truncated is False
    assert [entry.name for entry in listing.entries] == sorted(entries)
    notes = entries["notes.txt"]
    assert (notes.type, notes.size, notes.mode, notes.owner, notes.group) == (
        "file",
        12,
        "4640",
        pwd.getpwuid(os.getuid()).pw_name,
        notes.group,
    )
    assert notes.mtime == FIXED
    assert notes.atime == FIXED
    assert notes.ctime is not None
    assert notes.ctime.tzinfo is not None
    assert entries["sub"].type == "dir"
    link = entries["link"]
    assert (link.type, link.target, link.size) == ("symlink", "sub", len("sub"))
    assert entries["pipe"].type == "other"
    assert entries["notes.txt"].target is None


def test_names_a_terminal_would_act_on_are_escaped_and_flagged(sample: Path) -> None:
    entries = by_name(list_directory(str(sample), 100))
    # Printable text is sent as it is: the web UI escapes HTML where it shows it.
    assert entries[XSS].escaped is False
    assert entries["two\\x0alines"].escaped is True
    assert entries["bell\\x07\\x1b[2J"].escaped is True
    assert entries["latin\\xe9"].escaped is True
    dangling = entries["dangling"]
    assert (dangling.target, dangling.escaped) == ("/nowhere/at\\x0aall", True)
    for entry in entries.values():
        assert not any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in entry.name)


def test_a_link_given_as_the_path_is_listed_as_its_directory(sample: Path) -> None:
    (sample / "sub" / "inner").touch()
    listing = list_directory(str(sample / "link"), 10)
    assert [entry.name for entry in listing.entries] == ["inner"]


def test_limit_truncates(tmp_path: Path) -> None:
    for number in range(5):
        (tmp_path / f"f{number}").touch()
    listing = list_directory(str(tmp_path), 3)
    assert len(listing.entries) == 3
    assert listing.truncated is True
    assert list_directory(str(tmp_path), 5).truncated is False


def test_byte_budget_truncates(tmp_path: Path) -> None:
    for number in range(20):
        (tmp_path / f"{number:02d}-{'n' * 100}").touch()
    listing = list_directory(str(tmp_path), 100, budget_bytes=2000)
    assert listing.truncated is True
    assert 1 <= len(listing.entries) < 20
    assert sum(len(entry.model_dump_json().encode()) + 1 for entry in listing.entries) <= 2000


async def test_a_huge_directory_stays_under_the_frame_limit(tmp_path: Path) -> None:
    # 2000 entries with names near the 255-byte maximum are about 1 MB of JSON: over the budget.
    for number in range(2000):
        os.close(os.open(tmp_path / f"{number:04d}-{'x' * 240}", os.O_CREAT | os.O_WRONLY, 0o644))
    status = await run_action(
        JobRequest(job_id="j", action="files.list", args={"path": str(tmp_path)}), HANDLERS, gate()
    )
    assert status.state == "succeeded", status.error
    assert status.result is not None
    assert status.result["truncated"] is True
    assert 1000 < len(status.result["entries"]) < 2000
    assert len(status.model_dump_json().encode()) < MAX_FRAME_BYTES
    FileList.model_validate(status.result)


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("missing", "Nothing exists at {path} on this endpoint."),
        ("notes.txt", "{path} is not a directory; files.list lists directories."),
        ("notes.txt/below", "A part of the path {path} is not a directory."),
    ],
)
def test_listing_errors_are_one_sentence(sample: Path, relative: str, message: str) -> None:
    path = str(sample / relative)
    with pytest.raises(ActionError) as caught:
        list_directory(path, 10)
    assert str(caught.value) == message.format(path=path)


def test_relative_path_is_refused() -> None:
    for call in (lambda: list_directory("etc", 10), lambda: hash_path("C:\\x", ["sha256"])):
        with pytest.raises(ActionError, match="is not absolute on this endpoint"):
            call()


def test_os_errors_map_to_sentences_with_escaped_paths() -> None:
    path = "/srv/evil\x1b[2J"
    shown = "/srv/evil\\x1b[2J"
    cases = {
        FileNotFoundError(2, "No such file"): f"Nothing exists at {shown} on this endpoint.",
        PermissionError(
            13, "Permission denied"
        ): f"The endpoint denied the agent access to {shown}.",
        NotADirectoryError(
            20, "Not a directory"
        ): f"A part of the path {shown} is not a directory.",
        IsADirectoryError(21, "Is a directory"): f"{shown} is a directory, not a file.",
        OSError(
            5, "Input/output error"
        ): f"The endpoint could not read {shown}: Input/output error.",
    }
    for exc, message in cases.items():
        error = describe_os_error(exc, path)
        assert isinstance(error, ActionError)
        assert str(error) == message
    long = describe_os_error(PermissionError(13, "denied"), "/" + "a" * 5000)
    assert len(str(long)) < 600


@pytest.fixture
def locked_as_nobody() -> Iterator[tuple[Path, int, int]]:
    """A readable directory holding a 000 directory and a 000 file, and nobody's ids."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a check as another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this system has no user nobody")
    base = Path(tempfile.mkdtemp(prefix="tether-locked-"))
    base.chmod(0o755)
    (base / "locked").mkdir(mode=0o000)
    (base / "secret").write_bytes(b"x")
    (base / "secret").chmod(0o000)
    try:
        yield base, nobody.pw_uid, nobody.pw_gid
    finally:
        shutil.rmtree(base)


def _refusals_as(uid: int, gid: int, directory: str, file: str) -> list[str]:
    """The ActionError messages of listing `directory` and hashing `file`, run as `uid`.

    A forked child drops to the user and reports through a pipe: the interpreter itself may sit
    where that user cannot reach (under /root), so a fresh process could not start.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            lines = []
            for call in (
                lambda: list_directory(directory, 10),
                lambda: hash_path(file, ["sha256"]),
            ):
                try:
                    call()
                    lines.append("allowed")
                except ActionError as exc:
                    lines.append(str(exc))
            os.write(write_end, "\n".join(lines).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        output = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return output.splitlines()


def test_permission_denied_for_a_user_the_endpoint_refuses(
    locked_as_nobody: tuple[Path, int, int],
) -> None:
    # Root is never refused, so the agent code runs as nobody.
    base, uid, gid = locked_as_nobody
    locked, secret = str(base / "locked"), str(base / "secret")
    assert _refusals_as(uid, gid, locked, secret) == [
        f"The endpoint denied the agent access to {locked}.",
        f"The endpoint denied the agent access to {secret}.",
    ]


def test_hash_matches_hashlib_over_a_multi_mebibyte_file(tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 777)
    path = tmp_path / "sample.bin"
    path.write_bytes(data)
    os.utime(path, (FIXED.timestamp(), FIXED.timestamp()))
    result = hash_path(str(path), ["sha256", "sha1", "md5"])
    assert result == FileHash(
        path=str(path),
        size=len(data),
        mtime=FIXED,
        sha256=hashlib.sha256(data).hexdigest(),
        sha1=hashlib.sha1(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
    )


def test_hash_computes_only_what_was_asked_and_follows_links(sample: Path) -> None:
    result = hash_path(str(sample / "link" / ".." / "notes.txt"), ["md5"])
    assert (result.sha256, result.sha1) == (None, None)
    assert result.md5 == hashlib.md5(b"twelve bytes").hexdigest()
    (sample / "to-notes").symlink_to("notes.txt")
    assert hash_path(str(sample / "to-notes"), ["sha256"]).sha256 == (
        hashlib.sha256(b"twelve bytes").hexdigest()
    )


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("sub", "{path} is a directory; files.hash hashes one file."),
        (
            "pipe",
            "{path} is not a regular file (a FIFO, socket or device), so the agent does not read it.",
        ),
        ("missing", "Nothing exists at {path} on this endpoint."),
    ],
)
def test_hash_refusals_are_one_sentence(sample: Path, relative: str, message: str) -> None:
    path = str(sample / relative)
    with pytest.raises(ActionError) as caught:
        hash_path(path, ["sha256"])
    assert str(caught.value) == message.format(path=path)


async def test_handlers_run_off_the_event_loop_thread(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    original = files.hash_path

    def recording(path: str, algorithms: list[str], stop: threading.Event) -> FileHash:
        threads.append(threading.current_thread())
        return original(path, algorithms, stop)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "hash_path", recording)
    result = await files.hash_file(FileHashArgs(path=str(sample / "notes.txt")))
    assert result.size == 12
    assert threads
    assert threads[0] is not threading.main_thread()


async def test_run_action_reports_an_action_error_verbatim(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone")
    status = await run_action(
        JobRequest(job_id="j", action="files.hash", args={"path": missing}), HANDLERS, gate()
    )
    assert (status.state, status.error) == (
        "failed",
        f"Nothing exists at {missing} on this endpoint.",
    )


@pytest.mark.parametrize(
    "path",
    [
        r"\\attacker\share\x.exe",  # UNC: the endpoint would sign in there (NTLM coercion)
        "//attacker/share/x.exe",
        r"\\?\C:\Windows\System32\config\SAM",  # verbatim: skips Windows' own path checks
        r"\\?\UNC\attacker\share",
        r"\\.\PhysicalDrive0",  # a raw device
        r"\\.\pipe\lsass",
        r"\??\UNC\attacker\share",  # the NT object namespace
        r"\/attacker/share",
    ],
)
def test_network_and_device_paths_are_refused(path: str) -> None:
    sentence = (
        f"The path {path} is a network or device path, which the agent refuses (opening one "
        "makes the endpoint sign in to another computer or reach a raw device); give a local "
        "path."
    )
    for action in (
        lambda: files.list_directory(path, limit=10),
        lambda: files.hash_path(path, ["sha256"]),
    ):
        with pytest.raises(ActionError) as caught:
            action()
        assert str(caught.value) == sentence.replace(path, files.quoted(path))


def test_local_paths_pass_the_network_check() -> None:
    for path in ("/etc/hosts", "/", r"C:\Windows\System32\drivers\etc\hosts", "C:/x", "/srv//x"):
        assert files.remote_or_device(path) is False


def test_a_listing_carries_the_creation_time_where_the_system_keeps_one(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    entry = files.list_directory(str(tmp_path), limit=10).entries[0]
    birth = getattr(os.stat(tmp_path / "f"), "st_birthtime", None)
    if birth is None:
        # Linux: Python exposes no birth time, and st_ctime is the inode change time.
        assert entry.created is None
    else:
        assert entry.created == datetime.fromtimestamp(birth, UTC)
