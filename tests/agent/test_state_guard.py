"""The state directory: refused when another account made it or can write to it; files created
exclusively, never through a planted name; the journal and its WAL files 0600."""

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.agent.journal import Journal
from tether.agent.state import StateDir
from tether.agent.state_guard import UnsafeStateDir, secure_state_dir
from tether.protocol import EnrollmentToken, JobStatus

from ..local_user import LocalUser, other_user, shared_tmp

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX owners and modes")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def shared() -> Iterator[Path]:
    folder = shared_tmp()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_new_state_directory_is_made_owner_only(tmp_path: Path) -> None:
    root = secure_state_dir(tmp_path / "a" / "agent")
    assert root == tmp_path / "a" / "agent"
    assert mode_of(root) == 0o700
    assert os.lstat(root).st_uid == os.geteuid()


def test_a_group_writable_state_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "agent"
    root.mkdir()
    os.chmod(root, 0o770)
    with pytest.raises(UnsafeStateDir) as refused:
        StateDir(root).secure()
    assert str(refused.value) == (
        f"The state directory {root} can be written by other users (mode 0770), so the agent "
        "refuses it; remove it or choose another --state-dir."
    )
    assert mode_of(root) == 0o770  # not quietly "fixed": what is in it cannot be trusted


def test_a_parent_others_can_write_to_is_refused_unless_sticky(tmp_path: Path) -> None:
    parent = tmp_path / "drop"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(UnsafeStateDir) as refused:
        secure_state_dir(parent / "agent")
    assert str(refused.value) == (
        f"{parent}, a parent of the state directory {parent / 'agent'}, can be written by "
        "other users (mode 0777), so the agent refuses it; choose another --state-dir."
    )
    # Others could rename "agent" away and put their own in its place: refused even though the
    # directory itself was just made by the agent.
    assert (parent / "agent").is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="a sticky folder of root's needs root")
def test_a_sticky_parent_of_roots_is_accepted(shared: Path) -> None:
    root = secure_state_dir(shared / "agent")
    assert mode_of(root) == 0o700


def test_the_real_path_is_checked_and_kept(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "alias").symlink_to(real)
    state = StateDir(tmp_path / "alias").secure()
    assert state.root == real
    assert state.journal == real / "journal.db"


def test_a_planted_temporary_link_is_not_followed(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "agent").secure()
    readable = tmp_path / "theirs.txt"
    readable.write_text("a file the planter can read\n")
    dangling = tmp_path / "would-be-created.txt"
    (state.root / "agent.key.tmp").symlink_to(readable)
    (state.root / "agent.pem.tmp").symlink_to(dangling)

    state.write_private(state.key, b"-----PRIVATE KEY-----\n")
    state.write_private(state.cert, b"-----CERTIFICATE-----\n")

    assert readable.read_text() == "a file the planter can read\n"
    assert not dangling.exists()
    assert not dangling.is_symlink()
    assert state.key.read_bytes() == b"-----PRIVATE KEY-----\n"
    assert not state.key.is_symlink()
    assert mode_of(state.key) == 0o600
    assert sorted(p.name for p in state.root.iterdir()) == ["agent.key", "agent.pem"]


def test_the_journal_and_its_wal_files_are_0600(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "agent").secure()
    old_umask = os.umask(0o022)
    try:
        journal = Journal(state.journal)
        journal.receive("job-1", "files.list")
        journal.finish(JobStatus(job_id="job-1", state="succeeded", result={}))
        names = {p.name: mode_of(p) for p in state.root.iterdir()}
        journal.close()
    finally:
        os.umask(old_umask)
    assert {"journal.db", "journal.db-wal", "journal.db-shm"} <= set(names)
    assert names == dict.fromkeys(names, 0o600), names


def test_a_journal_an_older_agent_left_0644_is_tightened(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "agent").secure()
    Journal(state.journal).close()
    for name in ("journal.db", "journal.db-wal"):
        path = state.root / name
        path.touch()
        os.chmod(path, 0o644)
    journal = Journal(state.journal)
    try:
        journal.receive("job-2", "files.list")
        assert mode_of(state.root / "journal.db") == 0o600
        assert mode_of(state.root / "journal.db-wal") == 0o600
    finally:
        journal.close()


def test_a_journal_name_planted_as_a_link_is_not_followed(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "agent").secure()
    elsewhere = tmp_path / "elsewhere.db"
    state.journal.symlink_to(elsewhere)
    with pytest.raises(UnsafeStateDir) as refused:
        Journal(state.journal)
    assert str(refused.value) == (
        f"{state.journal} is not a regular file, so the agent will not use it as its journal; "
        "remove it."
    )
    assert not elsewhere.exists()


# The attacker is another local account. Real processes: the attacker's steps run as that user
# (runuser), the agent's enrollment as root through the `tether` command.


def _fake_token() -> str:
    # Never used to connect: the directory is refused before the platform is asked anything.
    return EnrollmentToken(
        server_url="https://127.0.0.1:9",
        agent_url="wss://127.0.0.1:9",
        secret="s" * 43,
        ca_sha256="0" * 64,
    ).encode()


def _enroll(state_dir: Path) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tether",
            "agent",
            "enroll",
            "--token",
            _fake_token(),
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_enrolling_into_a_directory_another_user_made_is_refused(shared: Path) -> None:
    mallory: LocalUser = other_user()
    state_dir = shared / "agent-state"
    stolen = shared / "stolen-key.pem"
    mallory.run("mkdir", "-m", "0700", str(state_dir))
    mallory.run("ln", "-s", str(stolen), str(state_dir / "agent.key.tmp"))

    result = _enroll(state_dir)

    assert result.returncode == 1, result
    assert result.stderr.strip().endswith(
        f"The state directory {state_dir} belongs to {mallory.name}, not root, so the agent "
        "refuses it; remove it or choose another --state-dir."
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert not stolen.exists()
    assert not os.path.lexists(state_dir / "agent.key")
    assert os.lstat(state_dir).st_uid == mallory.uid
    assert mode_of(state_dir) == 0o700  # not chmod-ed or taken over either


def test_a_directory_of_roots_that_the_other_user_can_write_is_refused(shared: Path) -> None:
    mallory = other_user()
    state_dir = shared / "agent-state"
    state_dir.mkdir()
    os.chown(state_dir, 0, mallory.gid)
    os.chmod(state_dir, 0o770)
    mallory.run("ln", "-s", str(shared / "stolen"), str(state_dir / "agent.key.tmp"))

    result = _enroll(state_dir)

    assert result.returncode == 1
    assert (
        f"The state directory {state_dir} can be written by other users (mode 0770), so the "
        "agent refuses it; remove it or choose another --state-dir."
    ) in result.stderr
    assert not os.path.lexists(shared / "stolen")


def test_the_agent_refuses_to_run_from_another_users_directory(shared: Path) -> None:
    mallory = other_user()
    state_dir = shared / "agent-state"
    mallory.run("mkdir", str(state_dir))
    result = subprocess.run(
        [sys.executable, "-m", "tether", "agent", "run", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # 78: the systemd unit does not restart it; a restart cannot fix this.
    assert result.returncode == 78, result
    assert result.stderr.strip() == (
        f"tether agent: The state directory {state_dir} belongs to {mallory.name}, not root, "
        "so the agent refuses it; remove it or choose another --state-dir."
    )
    assert os.listdir(state_dir) == []
