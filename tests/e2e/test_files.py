"""Files end to end: retrieve and deploy through the CLI with a real agent, bad paths, a full
disk on the endpoint, a 1 GiB retrieval surviving a platform SIGKILL, and a retrieval's bytes
and rate shown live on the job page and the Host page in a real browser."""

import hashlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from .browser import browser_page, log_in
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


def test_the_job_and_host_pages_show_a_retrieval_moving(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    platform, admin, _ = responding
    assert endpoint.proc is not None
    size = 512 * 1024 * 1024
    big = tmp_path / "moving.bin"
    with big.open("wb") as handle:
        block = os.urandom(1024 * 1024)
        for n in range(size // len(block)):
            handle.write(block[n:] + block[:n])
    partials = platform.data / "files" / "partial"
    with admin.api() as api:
        submitted = api.post(
            "/jobs",
            json={"action": "files.get", "args": {"path": str(big)}, "hosts": [endpoint.host_id]},
        ).json()
        job_id = submitted["jobs"][0]["id"]

        def under_way() -> bool:
            sizes = [p.stat().st_size for p in partials.glob("*")] if partials.is_dir() else []
            return any(s > 16 * 1024 * 1024 for s in sizes)

        wait_for(under_way, timeout=60, interval=0.02, what="the retrieval to be under way")
        # The agent frozen mid-transfer: the pages must show the bytes moved so far, not 0 or
        # the end, whatever the speed of this machine.
        os.kill(endpoint.proc.pid, signal.SIGSTOP)
        try:
            seen: dict[str, Any] = {}

            def reported() -> bool:
                seen.update(api.get(f"/jobs/{job_id}").json())
                return bool(seen.get("transfer_bytes"))

            wait_for(reported, timeout=10, interval=0.2, what="the job to report its progress")
            assert seen["transfer_size"] == size
            assert 0 < seen["transfer_bytes"] < size
            with browser_page() as page:
                log_in(page, platform.url, platform.admin_password, platform.admin_code())
                page.goto(f"{platform.url}/hosts/{endpoint.host_id}")
                row = page.locator(f'tr[data-job="{job_id}"]')
                expect(row.locator(".transfer-progress")).to_contain_text(" of 512.0 MiB (")
                page.goto(f"{platform.url}/jobs/{job_id}")
                moving = page.locator("#job-detail .transfer-progress")
                expect(moving).to_contain_text("Moving ")
                expect(moving).to_contain_text(" of 512.0 MiB (")
                shown = int(moving.get_attribute("data-bytes") or "0")
                assert 0 < shown < size
                # Thawed, the same page follows the transfer to its end without a reload.
                os.kill(endpoint.proc.pid, signal.SIGCONT)
                expect(page.locator("#job-detail")).to_have_attribute(
                    "data-state", "succeeded", timeout=120_000
                )
                expect(moving).to_contain_text("Moved 512.0 MiB of 512.0 MiB (100%)")
                assert page.locator("#job-detail progress").get_attribute("value") == str(size)
        finally:
            os.kill(endpoint.proc.pid, signal.SIGCONT)
