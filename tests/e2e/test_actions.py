"""Response actions end to end on a real agent: scripts with parameters and rows, processes,
files (a script whose agent is killed mid-run: test_agent_crash)."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from .harness import Agent, Children, Cli, Platform, wait_for

pytestmark = pytest.mark.e2e

SCRIPT = """
import os
from tether import script

script.log("starting")
for name in script.params["names"]:
    script.row(name=name, length=len(name), pid=os.getpid())
print("greeting", script.params["greeting"], flush=True)
"""


def run(api: httpx.Client, host_id: str, action: str, args: dict[str, Any], **extra: Any) -> str:
    response = api.post("/jobs", json={"action": action, "args": args, "hosts": [host_id], **extra})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["jobs"][0]["id"]
    return job_id


def finished(api: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(api.get(f"/jobs/{job_id}").json())
        return seen["state"] not in {"queued", "delivered", "running"}

    wait_for(done, timeout=timeout, interval=0.1, what=f"job {job_id} to end (saw {seen})")
    return seen


def output(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    pieces: list[dict[str, Any]] = api.get(f"/jobs/{job_id}/output").json()["output"]
    return pieces


def test_a_script_with_parameters_streams_output_and_rows(
    responding: tuple[Platform, Cli, Children], endpoint: Agent
) -> None:
    _, admin, _ = responding
    with admin.api() as api:
        job_id = run(
            api,
            endpoint.host_id,
            "script.run",
            {"source": SCRIPT, "params": {"names": ["alpha", "beta"], "greeting": "hello"}},
        )
        job = finished(api, job_id)
        assert job["state"] == "succeeded", job
        assert job["result"]["exit_code"] == 0
        pieces = output(api, job_id)
        rows = [p["fields"] for p in pieces if p["stream"] == "row"]
        assert [(r["name"], r["length"]) for r in rows] == [("alpha", 5), ("beta", 4)]
        # The script ran in a child process, never inside the agent.
        assert endpoint.proc is not None
        assert rows[0]["pid"] != endpoint.proc.pid
        stdout = "".join(p["text"] for p in pieces if p["stream"] == "stdout")
        assert stdout == "greeting hello\n"
        assert [p["text"] for p in pieces if p["stream"] == "log"] == ["starting\n"]
        # The whole script text is in the audit log with the submission.
        records = api.get("/audit", params={"limit": 1000}).json()
        submitted = [r for r in records if r["action"] == "job.submit"]
        assert any(r["details"]["args"]["source"] == SCRIPT for r in submitted)


def test_a_failing_script_and_a_syntax_error_fail_the_job_with_a_reason(
    responding: tuple[Platform, Cli, Children], endpoint: Agent
) -> None:
    _, admin, _ = responding
    with admin.api() as api:
        bad = finished(api, run(api, endpoint.host_id, "script.run", {"source": "def (:\n"}))
        assert bad["state"] == "failed"
        assert bad["error"].startswith("The script has a syntax error on line 1")
        raising = run(api, endpoint.host_id, "script.run", {"source": "raise SystemExit(3)\n"})
        failed = finished(api, raising)
        assert failed["state"] == "failed"
        assert "3" in failed["error"]


def test_processes_listed_and_one_killed(
    responding: tuple[Platform, Cli, Children], endpoint: Agent
) -> None:
    _, admin, _ = responding
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        with admin.api() as api:
            listing = finished(
                api, run(api, endpoint.host_id, "processes.list", {"pid": victim.pid})
            )
            assert listing["state"] == "succeeded", listing
            (found,) = listing["result"]["processes"]
            assert found["pid"] == victim.pid
            assert "time.sleep(300)" in found["command_line"]
            killed = finished(
                api, run(api, endpoint.host_id, "processes.kill", {"pid": victim.pid})
            )
            assert killed["state"] == "succeeded", killed
            assert victim.wait(10) is not None
            gone = finished(api, run(api, endpoint.host_id, "processes.kill", {"pid": victim.pid}))
            assert gone["state"] == "failed"
            assert f"No process has the pid {victim.pid}" in gone["error"]
    finally:
        victim.kill()


def test_files_listed_and_hashed(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    _, admin, _ = responding
    (tmp_path / "evidence.bin").write_bytes(b"x" * 5000)
    with admin.api() as api:
        listing = finished(api, run(api, endpoint.host_id, "files.list", {"path": str(tmp_path)}))
        assert listing["state"] == "succeeded", listing
        names = {e["name"]: e for e in listing["result"]["entries"]}
        assert names["evidence.bin"]["size"] == 5000
        hashed = finished(
            api,
            run(api, endpoint.host_id, "files.hash", {"path": str(tmp_path / "evidence.bin")}),
        )
        assert hashed["result"]["sha256"] == hashlib.sha256(b"x" * 5000).hexdigest()
        missing = finished(
            api, run(api, endpoint.host_id, "files.list", {"path": str(tmp_path / "nope")})
        )
        assert missing["state"] == "failed"
        assert missing["error"].endswith(".")
        assert "Traceback" not in missing["error"]


def test_the_shipped_process_control_script_kills_by_name_through_the_cli(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    _, admin, _ = responding
    assert "Process Control" in [s["name"] for s in admin.json("script", "list")]
    # A copy of sleep under a name of its own, so only this process can match.
    marker = "tthr-victim"
    binary = tmp_path / marker
    shutil.copy("/bin/sleep", binary)
    victim = subprocess.Popen([str(binary), "300"])
    try:
        out = admin.run(
            "run",
            endpoint.host_id,
            "--script",
            "Process Control",
            "--param",
            "action=kill",
            "--param",
            f"name={marker}",
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert str(victim.pid) in out.stdout
        assert victim.wait(10) is not None
        refused = admin.run(
            "run", endpoint.host_id, "--script", "Process Control", "--param", "action=explode"
        )
        assert refused.returncode == 1
        assert "action" in refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
    finally:
        victim.kill()


MOVER = """
from tether import script

sent = script.upload(script.params["evidence"])
script.row(way="up", sha256=sent["sha256"], size=sent["size"])
got = script.download(script.params["tool"], script.params["dest"])
script.row(way="down", sha256=got["sha256"], size=got["size"])
for name, dest in (("no-such-tool", script.params["dest"] + ".x"), (script.params["tool"], script.params["dest"])):
    try:
        script.download(name, dest)
    except script.ScriptError as exc:
        print("refused:", exc, flush=True)
"""


def test_a_script_uploads_and_downloads_files_through_the_library(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    _, admin, _ = responding
    evidence = tmp_path / "evidence.bin"
    evidence.write_bytes(b"\x00stolen\xff" * 200_000)
    tool = b"#!/bin/sh\necho remediated\n"
    dest = tmp_path / "deployed" / "remediate.sh"
    dest.parent.mkdir()
    with admin.api() as api:
        uploaded = api.post("/files", params={"name": "remediate-e2e.sh"}, content=tool)
        assert uploaded.status_code == 201, uploaded.text
        job_id = run(
            api,
            endpoint.host_id,
            "script.run",
            {
                "source": MOVER,
                "params": {
                    "evidence": str(evidence),
                    "tool": "remediate-e2e.sh",
                    "dest": str(dest),
                },
            },
        )
        job = finished(api, job_id, timeout=60)
        assert job["state"] == "succeeded", job
        pieces = output(api, job_id)
        rows = {p["fields"]["way"]: p["fields"] for p in pieces if p["stream"] == "row"}
        evidence_sha = hashlib.sha256(evidence.read_bytes()).hexdigest()
        assert (rows["up"]["sha256"], rows["up"]["size"]) == (evidence_sha, evidence.stat().st_size)
        assert rows["down"]["sha256"] == hashlib.sha256(tool).hexdigest()
        # Written through a temporary file and renamed: the tool alone, whole.
        assert dest.read_bytes() == tool
        assert [p.name for p in dest.parent.iterdir()] == ["remediate.sh"]
        stdout = "".join(p["text"] for p in pieces if p["stream"] == "stdout")
        assert "refused: The file library holds no file named 'no-such-tool'." in stdout
        assert "already exists on the endpoint; a script's download never replaces a file" in stdout

        # The upload is in the library with its chain of custody, credited to the submitter.
        kept = api.get("/files", params={"job": job_id}).json()
        assert [(f["kind"], f["sha256"], f["source_path"], f["host_id"]) for f in kept] == [
            ("retrieved", evidence_sha, str(evidence), endpoint.host_id)
        ]
        content = api.get(f"/files/{kept[0]['id']}/content")
        assert hashlib.sha256(content.content).hexdigest() == evidence_sha

        records = api.get("/audit", params={"limit": 1000}).json()
        by_job = [
            r
            for r in records
            if r["details"].get("job") == job_id and r["action"].startswith("file.")
        ]
        assert {(r["action"], r["details"]["via"], r["details"]["sha256"]) for r in by_job} == {
            ("file.retrieve", "script", evidence_sha),
            ("file.deploy", "script", hashlib.sha256(tool).hexdigest()),
        }


def test_the_shipped_directory_access_control_script_retrieves_a_directory(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    _, admin, _ = responding
    folder = tmp_path / "case"
    folder.mkdir()
    for index in range(3):
        (folder / f"dropped-{index}.dll").write_bytes(f"payload {index}".encode() * 1000)
    out = admin.run(
        "run",
        endpoint.host_id,
        "--script",
        "Directory Access Control",
        "--param",
        "action=retrieve",
        "--param",
        f"path={folder}",
        "--json",
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    retrieved = {
        f["source_path"]: f["sha256"]
        for f in admin.json("files", "list", "--kind", "retrieved")
        if f["source_path"] and f["source_path"].startswith(str(folder))
    }
    assert retrieved == {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir()
    }
