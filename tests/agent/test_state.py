import json
import stat
import sys
from pathlib import Path

import pytest

from tether.agent.errors import NotEnrolled
from tether.agent.state import Identity, StateDir, default_state_dir

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="mode bits are POSIX")


@posix_only
def test_private_files_are_owner_only(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "agent")
    state.write_private(state.key, b"secret key")
    assert state.key.read_bytes() == b"secret key"
    assert stat.S_IMODE(state.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    assert [p.name for p in state.root.iterdir()] == ["agent.key"]  # no temporary left


@posix_only
def test_rewriting_keeps_the_mode(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.cert.write_bytes(b"old")
    state.cert.chmod(0o644)
    state.write_private(state.cert, b"new")
    assert state.cert.read_bytes() == b"new"
    assert stat.S_IMODE(state.cert.stat().st_mode) == 0o600


def test_identity_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert not state.is_enrolled()
    identity = Identity(host_id="h-1", server_url="https://p:8443", agent_url="wss://p:8444")
    state.write_identity(identity)
    assert state.is_enrolled()
    assert state.identity() == identity


def test_missing_identity(tmp_path: Path) -> None:
    with pytest.raises(NotEnrolled, match="run 'tether agent enroll' first"):
        StateDir(tmp_path).identity()


@pytest.mark.parametrize("content", ["not json", "{}", json.dumps({"host_id": "h"})])
def test_damaged_identity(tmp_path: Path, content: str) -> None:
    state = StateDir(tmp_path)
    state.identity_file.write_text(content)
    with pytest.raises(NotEnrolled, match="is damaged; enroll this agent again"):
        state.identity()


def test_default_state_dir_per_os() -> None:
    expected = "agent" if sys.platform == "win32" else "tether-agent"
    assert default_state_dir().name == expected
