"""The example scripts shipped with the product, run for real against temp files and processes."""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.agent.script_recorder import Recorder
from tether.agent.scripts import ScriptOutcome

pytestmark = pytest.mark.skipif(os.name == "nt", reason="Linux run of the examples")

EXAMPLES = files("tether.script").joinpath("examples")
NAMES = ["process_control", "directory_access_control", "triage"]
# The examples whose parameters include action and path (the unknown-parameter test passes them).
ACTING = ["process_control", "directory_access_control"]


def source(name: str) -> str:
    return EXAMPLES.joinpath(f"{name}.py").read_text(encoding="utf-8")


def declaration(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(EXAMPLES.joinpath(f"{name}.json").read_text("utf-8"))
    return loaded


async def run(example: str, /, **params: Any) -> tuple[ScriptOutcome, Recorder]:
    recorder = Recorder()
    outcome = await recorder.run(source(example), params)
    return outcome, recorder


@pytest.mark.parametrize("name", NAMES)
def test_each_example_declares_its_parameters(name: str) -> None:
    declared = declaration(name)
    assert set(declared) == {"name", "description", "parameters"}
    assert declared["name"]
    assert declared["description"].endswith(".")
    schema = declared["parameters"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])
    for prop in schema["properties"].values():
        assert prop["type"] in {"string", "integer", "boolean"}
        assert prop["description"]
        if "enum" in prop:
            assert all(isinstance(choice, str) for choice in prop["enum"])


@pytest.mark.parametrize("name", ACTING)
async def test_each_example_refuses_an_unknown_parameter_with_a_sentence(name: str) -> None:
    outcome, recorder = await run(name, action="list", path="/tmp", colour="red")
    assert outcome.exit_code == 1
    assert recorder.text("stderr").startswith("Unknown parameter 'colour'")
    assert "Traceback" not in recorder.text("stderr")


# Process Control


@pytest.fixture
def sleeper_binary(tmp_path: Path) -> Path:
    """A copy of sleep under a name no other process on this machine has."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    unique = tmp_path / f"tt{os.getpid() % 100000}{os.urandom(3).hex()}"
    shutil.copy(sleep, unique)
    return unique


@pytest.fixture
def sleepers(sleeper_binary: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started = [subprocess.Popen([str(sleeper_binary), "300"]) for _ in range(2)]
    yield started
    for process in started:
        process.kill()
        process.wait()


async def test_process_control_kills_by_name(
    sleeper_binary: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    outcome, recorder = await run("process_control", action="kill", name=sleeper_binary.name)
    assert outcome.exit_code == 0, recorder.text("stderr")
    assert sorted(r["pid"] for r in recorder.rows) == sorted(p.pid for p in sleepers)
    assert all(r["outcome"] == f"killed {r['pid']}" for r in recorder.rows)
    for process in sleepers:
        assert process.wait(timeout=5) == -signal.SIGKILL


async def test_process_control_suspends_and_resumes(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    target = sleepers[0].pid
    outcome, recorder = await run("process_control", action="suspend", pid=target)
    assert outcome.exit_code == 0, recorder.text("stderr")
    assert [(r["pid"], r["outcome"]) for r in recorder.rows] == [(target, "suspended")]
    assert recorder.rows[0]["status"] == psutil.STATUS_STOPPED
    assert psutil.Process(target).status() == psutil.STATUS_STOPPED

    outcome, recorder = await run("process_control", action="resume", pid=target)
    assert outcome.exit_code == 0
    assert recorder.rows[0]["outcome"] == "resumed"
    assert psutil.Process(target).status() != psutil.STATUS_STOPPED
    assert psutil.Process(sleepers[1].pid).status() != psutil.STATUS_STOPPED


async def test_process_control_finds_by_executable_hash(
    sleeper_binary: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    digest = hashlib.sha256(sleeper_binary.read_bytes()).hexdigest()
    outcome, recorder = await run("process_control", action="list", sha256=digest.upper())
    assert outcome.exit_code == 0
    listed = {r["pid"] for r in recorder.rows}
    assert {p.pid for p in sleepers} <= listed
    assert all(r["outcome"] == "listed" for r in recorder.rows)
    assert recorder.logs[-1].startswith("list: ")


async def test_process_control_never_touches_the_agent() -> None:
    outcome, recorder = await run("process_control", action="list", pid=os.getpid())
    assert outcome.exit_code == 0
    assert recorder.rows == []


async def test_process_control_needs_a_selector_to_act() -> None:
    outcome, recorder = await run("process_control", action="kill")
    assert outcome.exit_code == 1
    assert recorder.text("stderr").strip() == (
        "To kill processes, give at least one of name, pid, user or sha256."
    )


async def test_process_control_checks_the_hash_format() -> None:
    outcome, recorder = await run("process_control", action="list", sha256="abc")
    assert outcome.exit_code == 1
    assert "64 hexadecimal characters" in recorder.text("stderr")


# Directory Access Control


@pytest.fixture
def evidence(tmp_path: Path) -> Path:
    folder = tmp_path / "evidence"
    (folder / "sub").mkdir(parents=True)
    for name, body, mode in [
        ("notes.txt", b"hello\n", 0o640),
        ("dropper.sh", b"#!/bin/sh\necho pwned\n", 0o751),
        ("sub/deep.txt", b"deep\n", 0o600),
    ]:
        (folder / name).write_bytes(body)
        (folder / name).chmod(mode)
    (folder / "link.txt").symlink_to(folder / "notes.txt")
    return folder


async def test_directory_list_and_recursion(evidence: Path) -> None:
    outcome, recorder = await run("directory_access_control", action="list", path=str(evidence))
    assert outcome.exit_code == 0
    assert [Path(r["path"]).name for r in recorder.rows] == ["dropper.sh", "notes.txt"]
    assert recorder.rows[0]["mode"] == "0o751"

    outcome, recorder = await run(
        "directory_access_control", action="list", path=str(evidence), recursive=True
    )
    assert len(recorder.rows) == 3


async def test_directory_hash(evidence: Path) -> None:
    outcome, recorder = await run(
        "directory_access_control", action="hash", path=str(evidence), pattern="*.txt"
    )
    assert outcome.exit_code == 0
    assert recorder.rows[0]["path"] == str(evidence / "notes.txt")
    assert recorder.rows[0]["sha256"] == hashlib.sha256(b"hello\n").hexdigest()
    assert len(recorder.rows) == 1


async def test_directory_retrieve_uploads_each_file(evidence: Path) -> None:
    outcome, recorder = await run("directory_access_control", action="retrieve", path=str(evidence))
    assert outcome.exit_code == 0
    assert recorder.services.calls == [
        ("upload", (str(evidence / "dropper.sh"),)),
        ("upload", (str(evidence / "notes.txt"),)),
    ]
    assert {r["outcome"] for r in recorder.rows} == {"retrieved"}


async def test_quarantine_then_restore_gives_back_content_and_mode(
    evidence: Path, tmp_path: Path
) -> None:
    quarantine = tmp_path / "quarantine"
    target = evidence / "dropper.sh"
    body = target.read_bytes()
    outcome, recorder = await run(
        "directory_access_control",
        action="quarantine",
        path=str(evidence),
        pattern="*.sh",
        quarantine_dir=str(quarantine),
    )
    assert outcome.exit_code == 0, recorder.text("stderr")
    assert recorder.rows[0]["outcome"] == "quarantined"
    assert not target.exists()
    (stored,) = quarantine.glob("*.quarantined")
    assert stat.S_IMODE(stored.stat().st_mode) == 0o400
    assert stat.S_IMODE(quarantine.stat().st_mode) == 0o700
    assert stored.read_bytes() == body
    assert (evidence / "notes.txt").exists()

    outcome, recorder = await run(
        "directory_access_control",
        action="restore",
        path=str(evidence),
        pattern="*.sh",
        quarantine_dir=str(quarantine),
    )
    assert outcome.exit_code == 0, recorder.text("stderr")
    assert recorder.rows == [
        {"path": str(target), "outcome": "restored", "sha256": hashlib.sha256(body).hexdigest()}
    ]
    assert target.read_bytes() == body
    assert stat.S_IMODE(target.stat().st_mode) == 0o751
    assert list(quarantine.iterdir()) == []


async def test_restore_does_not_overwrite_a_file_that_came_back(
    evidence: Path, tmp_path: Path
) -> None:
    quarantine = tmp_path / "quarantine"
    target = evidence / "notes.txt"
    await run(
        "directory_access_control",
        action="quarantine",
        path=str(target),
        quarantine_dir=str(quarantine),
    )
    target.write_bytes(b"new\n")
    outcome, recorder = await run(
        "directory_access_control",
        action="restore",
        path=str(target),
        quarantine_dir=str(quarantine),
    )
    assert outcome.exit_code == 0
    assert recorder.rows[0]["outcome"].startswith("failed: a file exists at the original path")
    assert target.read_bytes() == b"new\n"
    assert len(list(quarantine.glob("*.quarantined"))) == 1


async def test_directory_delete(evidence: Path) -> None:
    outcome, recorder = await run(
        "directory_access_control", action="delete", path=str(evidence), pattern="*.txt"
    )
    assert outcome.exit_code == 0
    assert not (evidence / "notes.txt").exists()
    # The symbolic link is skipped, never followed or removed; other files stay.
    assert (evidence / "link.txt").is_symlink()
    assert (evidence / "dropper.sh").exists()
    assert [r["outcome"] for r in recorder.rows] == ["deleted"]


async def test_directory_access_control_wants_an_absolute_path() -> None:
    outcome, recorder = await run("directory_access_control", action="list", path="relative/dir")
    assert outcome.exit_code == 1
    assert recorder.text("stderr").strip() == (
        "Parameter 'path' must be an absolute path to a file or directory."
    )


async def test_directory_access_control_refuses_deleting_from_the_root() -> None:
    outcome, recorder = await run(
        "directory_access_control", action="delete", path="/", recursive=True
    )
    assert outcome.exit_code == 1
    assert "Refusing to delete a whole filesystem" in recorder.text("stderr")


# Triage


async def test_triage_lists_recent_processes_then_recently_changed_files(tmp_path: Path) -> None:
    fresh = tmp_path / "dropped.sh"
    fresh.write_text("#!/bin/sh\n")
    old = tmp_path / "old.conf"
    old.write_text("x")
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        outcome, recorder = await run("triage", days=3, paths=str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert outcome.exit_code == 0, recorder.text("stderr")
    kinds = [r["kind"] for r in recorder.rows]
    assert kinds == sorted(kinds, key=lambda kind: kind != "process")  # processes first
    assert sleeper.pid in {r["pid"] for r in recorder.rows if r["kind"] == "process"}
    # Backdating the modification time (as an intruder's timestomping would) leaves the change
    # time at now, and triage counts either: old.conf is listed.
    assert "old.conf" in {r["name"] for r in recorder.rows if r["kind"] == "file"}
    (dropped,) = [r for r in recorder.rows if r["kind"] == "file" and r["name"] == "dropped.sh"]
    assert dropped["path"] == str(fresh)
    assert dropped["detail"].startswith("10 bytes, mode 0o")
    assert "file(s) changed in the last 3 day(s)" in recorder.text("stdout")


async def test_triage_bounds_its_rows_and_says_so(tmp_path: Path) -> None:
    for index in range(5):
        (tmp_path / f"f{index}").write_text("x")
    outcome, recorder = await run("triage", paths=str(tmp_path), limit=2)
    assert outcome.exit_code == 0, recorder.text("stderr")
    assert len(recorder.rows) == 2
    assert any(line.startswith("Showing 2 of ") for line in recorder.logs)


@pytest.mark.parametrize(
    ("params", "sentence"),
    [
        ({"colour": "red"}, "Unknown parameter 'colour'; expected days, paths, limit."),
        ({"days": 0}, "Parameter 'days' must be a whole number from 1 to 365."),
        ({"paths": "relative/dir"}, "Path 'relative/dir' must be absolute."),
    ],
)
async def test_triage_refuses_bad_parameters_in_one_sentence(
    params: dict[str, Any], sentence: str
) -> None:
    outcome, recorder = await run("triage", **params)
    assert outcome.exit_code == 1
    assert recorder.text("stderr").strip() == sentence
