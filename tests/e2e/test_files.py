"""Files end to end: retrieve and deploy through the CLI with a real agent, bad paths, a full
disk on the endpoint, and a 1 GiB retrieval surviving a platform SIGKILL."""

import hashlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .harness import Agent, Children, Cli, Platform, wait_for, wait_online

pytestmark = pytest.mark.e2e


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_get_and_put_through_the_cli_with_hash_checks(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    _, admin, _ = responding
    evidence = tmp_path / "suspicious.bin"
    evidence.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    out = tmp_path / "out"
    # A directory named with a trailing slash is created, never taken as a file name.
    got = admin.json("get", endpoint.host_id, str(evidence), "-o", f"{out}/")
    saved = Path(got["saved"])
    assert saved == out / "suspicious.bin"
    assert sha256_of(saved) == sha256_of(evidence) == got["file"]["sha256"]
    # Chain of custody: host, path, size, hash, owner, who asked.
    entry = got["file"]
    assert (entry["kind"], entry["host_id"], entry["source_path"]) == (
        "retrieved",
        endpoint.host_id,
        str(evidence),
    )
    assert (entry["size"], entry["created_by"], entry["file_owner"]) == (
        evidence.stat().st_size,
        "admin",
        "root",
    )
    listed = admin.json("files", "list", "--kind", "retrieved")
    assert entry["id"] in [e["id"] for e in listed]

    tool = tmp_path / "remediate.sh"
    tool.write_text("#!/bin/sh\necho fixed\n")
    tool.chmod(0o775)
    destination = tmp_path / "deployed" / "remediate.sh"
    destination.parent.mkdir()
    put = admin.json("put", endpoint.host_id, str(tool), str(destination))
    assert put["job"]["state"] == "succeeded"
    assert destination.read_bytes() == tool.read_bytes()
    # The source's mode, without write for group and others: executable, as deployed tools are.
    assert (destination.stat().st_mode & 0o7777, put["job"]["result"]["mode"]) == (0o755, "0755")
    assert [p.name for p in destination.parent.iterdir()] == ["remediate.sh"]
    # Not replaced without asking.
    again = admin.run("put", endpoint.host_id, str(tool), str(destination))
    assert again.returncode == 1
    assert "already exists on the endpoint; ask for overwrite to replace it." in again.stderr

    with admin.api() as api:
        records = api.get("/audit", params={"limit": 1000}).json()
    actions = {r["action"]: r for r in records}
    assert actions["file.retrieve"]["details"]["sha256"] == entry["sha256"]
    assert actions["file.upload"]["details"]["sha256"] == put["file"]["sha256"]
    assert actions["file.deploy"]["details"]["path"] == str(destination)
    assert actions["file.deploy"]["details"]["mode"] == "0755"
    assert actions["file.deploy"]["details"]["mode_reported"] == "0755"


def test_bad_paths_and_names_are_one_sentence(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    _, admin, _ = responding
    cases: list[tuple[tuple[str, ...], str]] = [
        (("get", endpoint.host_id, str(tmp_path / "nope")), "Nothing exists at"),
        (("get", endpoint.host_id, str(tmp_path)), "is a directory; give the path of a file."),
        (("get", endpoint.host_id, "relative/path"), "the path must be absolute"),
    ]
    tool = tmp_path / "tool.bin"
    tool.write_bytes(b"tool")
    cases += [
        (("put", endpoint.host_id, str(tool), str(tmp_path)), "is a directory; give the path"),
        (
            ("put", endpoint.host_id, str(tool), str(tmp_path / "missing-dir" / "tool.bin")),
            "does not exist on the endpoint",
        ),
        (("files", "upload", str(tool), "--name", "../evil"), "is not a valid library name"),
        (("files", "upload", str(tool), "--name", "a\\b"), "is not a valid library name"),
    ]
    for args, message in cases:
        result = admin.run(*args)
        assert result.returncode == 1, (args, result.stdout)
        assert message in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_on_the_endpoint_leaves_nothing_half_written(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    _, admin, _ = responding
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(3 * 1024 * 1024))
        result = admin.run("put", endpoint.host_id, str(big), str(small / "big.bin"))
        assert result.returncode == 1
        assert "The endpoint's disk is full while writing" in result.stderr, result.stderr
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_1_gib_retrieval_survives_a_platform_sigkill(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    platform, admin, _ = responding
    big = tmp_path / "memory.dmp"
    with big.open("wb") as handle:
        block = os.urandom(1024 * 1024)
        for n in range(1024):
            handle.write(block[n:] + block[:n])
    expected = sha256_of(big)
    with admin.api() as api:
        submitted = api.post(
            "/jobs",
            json={"action": "files.get", "args": {"path": str(big)}, "hosts": [endpoint.host_id]},
        ).json()
        job_id = submitted["jobs"][0]["id"]
        partials = platform.data / "files" / "partial"

        def halfway() -> bool:
            sizes = [p.stat().st_size for p in partials.glob("*")] if partials.is_dir() else []
            return any(s > 64 * 1024 * 1024 for s in sizes)

        wait_for(halfway, timeout=60, interval=0.05, what="the transfer to be well under way")
    platform.stop(signal.SIGKILL)
    sizes = [p.stat().st_size for p in partials.glob("*")]
    assert sizes
    assert all(0 < s < big.stat().st_size for s in sizes)
    platform.start()
    with admin.api() as api:
        wait_online(api, endpoint.host_id, timeout=60)
        job: dict[str, Any] = {}

        def done() -> bool:
            job.update(api.get(f"/jobs/{job_id}").json())
            return job["state"] not in {"queued", "delivered", "running"}

        wait_for(done, timeout=180, interval=0.2, what=f"the retrieval to finish (saw {job})")
        assert job["state"] == "succeeded", job
        assert job["result"]["sha256"] == expected
        (entry,) = api.get("/files", params={"job": job_id}).json()
    assert entry["sha256"] == expected
    stored = platform.data / "files" / "sha256" / expected[:2] / expected[2:]
    assert sha256_of(stored) == expected
    assert list(partials.glob("*")) == []
