"""The agent's side of a signed upgrade: the signature and archive checks, the swap, and the
trial supervisor with real processes (stand-in bundles are shell scripts; the supervisor is the
real one, and its rollback really replaces its process with the previous version's `run`)."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.agent import upgrade as upgrade_module
from tether.agent.errors import ActionError
from tether.agent.journal import Journal
from tether.agent.upgrade import Upgrader, load_key, unpack, verify_signature
from tether.agent.upgrade_files import TRIAL_ENV, Trial, UpgradeFiles
from tether.protocol import JobStatus
from tether.protocol.upgrade import UpgradeArgs, outcome_of, signed_statement

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="self-upgrade runs on Linux")


def _archive(members: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _bundle(version: str, script: bytes = b"#!/bin/sh\nexit 0\n") -> bytes:
    return _archive(
        {
            "tether-agent/tether-agent": (script, 0o755),
            "tether-agent/VERSION": (version.encode() + b"\n", 0o644),
            "tether-agent/_internal/lib.so": (b"\x7fELF", 0o644),
        }
    )


def _signed(key: Ed25519PrivateKey, version: str, data: bytes) -> UpgradeArgs:
    sha256 = hashlib.sha256(data).hexdigest()
    signature = key.sign(signed_statement(version, sha256, len(data))).hex()
    return UpgradeArgs(version=version, sha256=sha256, size=len(data), signature=signature)


def _public_hex(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )


def test_a_signature_by_the_pinned_key_verifies_and_anything_else_is_refused(
    tmp_path: Path,
) -> None:
    platform_key, other_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    (tmp_path / "upgrade-key.pub").write_text(_public_hex(platform_key) + "\n")
    pinned = load_key(tmp_path / "upgrade-key.pub")
    assert pinned is not None
    args = _signed(platform_key, "2.0", b"bundle")
    verify_signature(pinned, args)
    # Another key's signature, and a statement changed after signing (version, size, hash).
    forged = [
        _signed(other_key, "2.0", b"bundle"),
        args.model_copy(update={"version": "2.1"}),
        args.model_copy(update={"size": args.size + 1}),
        args.model_copy(update={"sha256": hashlib.sha256(b"evil").hexdigest()}),
    ]
    for bad in forged:
        with pytest.raises(ActionError, match=r"^Refused: the bundle's signature does not verify"):
            verify_signature(pinned, bad)


def test_a_damaged_key_file_counts_as_no_key(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("zz")
    assert load_key(tmp_path / "k") is None
    assert load_key(tmp_path / "missing") is None


def test_the_archive_is_checked_unpacked_and_put_in_place_under_its_version(
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    data = _bundle("2.0")
    archive = tmp_path / "in.tar.gz"
    archive.write_bytes(data)
    files = UpgradeFiles(tmp_path)
    files.ensure()
    target = unpack(archive, _signed(key, "2.0", data), files, tmp_path / "scratch")
    assert target == tmp_path / "upgrades" / "2.0"
    assert (target / "VERSION").read_text() == "2.0\n"
    assert os.access(target / "tether-agent", os.X_OK)
    files.point_current_at("2.0")
    assert files.current_executable() == (target / "tether-agent").resolve()
    assert files.current_version() == "2.0"
    files.point_current_at(None)
    assert files.current_executable() is None


@pytest.mark.parametrize(
    ("members", "refusal"),
    [
        # Tampered on the way: the bytes are not the signed ones.
        (None, "not the signed"),
        (
            {"tether-agent/tether-agent": (b"x", 0o755), "etc/cron.d/evil": (b"x", 0o644)},
            "outside tether-agent/",
        ),
        ({"tether-agent/VERSION": (b"2.0", 0o644)}, "no executable"),
        (
            {"tether-agent/tether-agent": (b"x", 0o755), "tether-agent/VERSION": (b"9.9", 0o644)},
            "says version '9.9'",
        ),
        (
            {
                "tether-agent/tether-agent": (b"x", 0o755),
                "tether-agent/../../escape": (b"x", 0o644),
            },
            "cannot be unpacked",
        ),
    ],
    ids=["tampered", "outside", "no-executable", "other-version", "path-escape"],
)
def test_an_archive_that_is_not_what_was_signed_is_refused_and_nothing_is_installed(
    tmp_path: Path, members: dict[str, tuple[bytes, int]] | None, refusal: str
) -> None:
    key = Ed25519PrivateKey.generate()
    data = _bundle("2.0") if members is None else _archive(members)
    args = _signed(key, "2.0", data)
    if members is None:
        data = _bundle("2.0", b"#!/bin/sh\necho owned\n")
    archive = tmp_path / "in.tar.gz"
    archive.write_bytes(data)
    files = UpgradeFiles(tmp_path)
    files.ensure()
    with pytest.raises(ActionError, match=refusal) as caught:
        unpack(archive, args, files, tmp_path / "scratch")
    assert str(caught.value).startswith("Refused: ")
    assert outcome_of("failed", str(caught.value)) == "refused"
    assert not (tmp_path / "upgrades" / "2.0").exists()
    assert not (tmp_path / "escape").exists()
    assert files.current_executable() is None


async def test_an_agent_outside_a_bundle_refuses_an_upgrade_before_looking_at_it(
    tmp_path: Path,
) -> None:
    args = _signed(Ed25519PrivateKey.generate(), "2.0", b"x")
    with pytest.raises(ActionError, match="runs from a Python environment"):
        await Upgrader(tmp_path).run(args)


async def test_a_bad_signature_is_refused_before_anything_is_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform_key, attacker_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    monkeypatch.setattr(upgrade_module, "bundle_dir", lambda: tmp_path / "bundle")
    upgrader = Upgrader(tmp_path)
    with pytest.raises(ActionError, match="has no upgrade key"):
        await upgrader.run(_signed(attacker_key, "2.0", b"x"))
    (tmp_path / "upgrade-key.pub").write_text(_public_hex(platform_key))
    # No job context here: a refusal that came after fetching would fail differently.
    with pytest.raises(ActionError, match="signature does not verify"):
        await upgrader.run(_signed(attacker_key, "2.0", b"x"))
    assert not (tmp_path / "upgrades").exists()


SUPERVISE = "import sys; from tether.agent.upgrade_trial import main; main(sys.argv[1:])"


def _trial(tmp_path: Path, script: str, window: float) -> tuple[UpgradeFiles, Path]:
    """A state directory with version 2.0 (a shell script) on trial; the previous version's
    `run` is this Python with `-c`, which records that it ran."""
    files = UpgradeFiles(tmp_path / "state")
    (tmp_path / "state").mkdir(mode=0o700)
    files.ensure()
    new = files.version_dir("2.0")
    new.mkdir()
    (new / "tether-agent").write_text(textwrap.dedent(script))
    (new / "tether-agent").chmod(0o755)
    marker = tmp_path / "previous-ran"
    files.write_trial(
        Trial(
            job_id="job-1",
            version="2.0",
            previous="1.0",
            previous_executable=str(tmp_path / "package" / "tether-agent"),
            run_args=["-c", f"open({str(marker)!r}, 'w').write('ran')"],
            window_seconds=window,
        )
    )
    files.point_current_at("2.0")
    return files, marker


def _supervise(files: UpgradeFiles, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != TRIAL_ENV}
    return subprocess.run(
        [sys.executable, "-c", SUPERVISE, str(files.root.parent)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_a_new_version_that_exits_at_once_is_rolled_back_and_the_previous_one_runs(
    tmp_path: Path,
) -> None:
    files, marker = _trial(tmp_path, "#!/bin/sh\nexit 3\n", window=30)
    started = time.monotonic()
    done = _supervise(files)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10
    assert marker.read_text() == "ran"
    ended = files.rolled_back()
    assert ended is not None
    assert ended.reason == "exited with status 3 before it connected"
    assert files.trial() is None
    # The previous version was the package's own: no upgrade is current any more.
    assert files.current_executable() is None


def test_a_new_version_that_never_connects_is_killed_and_rolled_back_after_the_window(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "new.pid"
    files, marker = _trial(
        tmp_path, f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n", window=1.5
    )
    started = time.monotonic()
    done = _supervise(files)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert 1.5 <= took < 15
    ended = files.rolled_back()
    assert ended is not None
    assert ended.reason == "did not connect to the platform within 1.5 s"
    assert marker.read_text() == "ran"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_new_version_that_connects_keeps_its_place_and_the_supervisor_stays_its_parent(
    tmp_path: Path,
) -> None:
    # What the new agent does on welcome: claim the trial (and it sees it is on trial).
    files, marker = _trial(
        tmp_path,
        '#!/bin/sh\n[ "$TETHER_AGENT_TRIAL" = job-1 ] || exit 9\n'
        'cd "$(dirname "$0")/.." && mv trial.json upgraded.json\nsleep 0.5\nexit 7\n',
        window=30,
    )
    done = _supervise(files)
    assert done.returncode == 7, done.stderr
    assert not marker.exists()
    assert files.upgraded() is not None
    assert files.rolled_back() is None
    assert files.current_version() == "2.0"


def test_the_next_start_ends_the_upgrade_job_as_the_trial_ended(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    journal = Journal(state / "journal.db")
    files = UpgradeFiles(state)
    files.ensure()
    for job_id in ("rolled", "took"):
        assert journal.receive(job_id, "agent.upgrade")
        assert journal.set_running(job_id)
    trial = Trial("rolled", "2.0", "1.0", "/opt/tether-agent/tether-agent", ["run"], 60.0)
    files.write_trial(trial)
    files.claim_rolled_back("exited with status 1 before it connected")
    kept = Upgrader(state).settle(journal)
    assert kept == frozenset()
    ended = journal.get("rolled")
    assert ended is not None
    assert ended.status is not None
    assert ended.status.state == "failed"
    assert ended.status.error == (
        "Rolled back to 1.0: version 2.0 exited with status 1 before it connected."
    )
    assert outcome_of(ended.status.state, ended.status.error) == "rolled back"
    assert files.rolled_back() is None

    files.write_trial(Trial("took", "2.0", "1.0", "/x/tether-agent", ["run"], 60.0))
    assert files.claim_upgraded()
    Upgrader(state).settle(journal)
    took = journal.get("took")
    assert took is not None
    assert took.status == JobStatus(
        job_id="took", state="succeeded", result={"version": "2.0", "previous": "1.0"}
    )
    journal.close()


def test_a_trial_claimed_by_one_side_cannot_be_claimed_by_the_other(tmp_path: Path) -> None:
    files = UpgradeFiles(tmp_path)
    files.ensure()
    files.write_trial(Trial("j", "2.0", "1.0", "/x", ["run"], 60.0))
    assert files.claim_upgraded()
    assert files.claim_rolled_back("late") is None
    files.write_trial(Trial("k", "2.0", "1.0", "/x", ["run"], 60.0))
    assert files.claim_rolled_back("first") is not None
    assert not files.claim_upgraded()
    assert json.loads(files.rolled_back_file.read_text())["reason"] == "first"
