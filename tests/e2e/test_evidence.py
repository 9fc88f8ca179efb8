"""The record as evidence, end to end: outcomes in the chain, stored results bound to it, an
unwritable checkpoint refusing the action, and a dropped host said at once. A real platform, a
real agent and the real CLI; tampering is done the way an insider would, with SQL on the
platform's database."""

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import running_agent
from .harness import Agent, Children, Cli, Platform, wait_for

pytestmark = pytest.mark.e2e

SCRIPT = "print('alpha', flush=True)\nprint('beta', flush=True)\nraise SystemExit(3)\n"


@pytest.fixture(scope="module")
def own(responding: tuple[Platform, Cli, Children]) -> tuple[Platform, Cli, Children]:
    """The module's own platform (segment "ir" on): its last test kills and restarts it."""
    return responding


@pytest.fixture(scope="module")
def agent(endpoint: Agent) -> Agent:
    return endpoint


def _submit(api: httpx.Client, host_id: str, source: str) -> httpx.Response:
    return api.post(
        "/jobs", json={"action": "script.run", "args": {"source": source}, "hosts": [host_id]}
    )


def _ended(api: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(api.get(f"/jobs/{job_id}").json())
        return seen["state"] not in {"queued", "delivered", "running"}

    wait_for(done, timeout=timeout, interval=0.1, what=f"job {job_id} to end (saw {seen})")
    return seen


def _records(admin: Cli, *args: str) -> list[dict[str, Any]]:
    lines = admin.ok("audit", "export", *args).splitlines()
    return [json.loads(line) for line in lines if line]


def test_an_outcome_is_on_record_and_an_edited_output_is_caught(
    own: tuple[Platform, Cli, Children], agent: Agent
) -> None:
    platform, admin, _ = own
    with admin.api() as api:
        response = _submit(api, agent.host_id, SCRIPT)
        assert response.status_code == 201, response.text
        job_id = response.json()["jobs"][0]["id"]
        job = _ended(api, job_id)
    assert job["state"] == "failed"
    (outcome,) = [r for r in _records(admin, "--kind", "job") if r["target"] == f"job:{job_id}"]
    assert (outcome["action"], outcome["outcome"], outcome["actor"]) == (
        "job.outcome",
        "failure",
        "admin",
    )
    details = outcome["details"]
    assert (details["state"], details["reported_by"], details["host"]) == (
        "failed",
        "agent",
        agent.host_id,
    )
    assert details["error"] == job["error"]
    assert job["outcome_seq"] == outcome["seq"]
    shown = admin.run("job", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "WARNING" not in shown.stdout

    # An insider rewrites what the script printed.
    with sqlite3.connect(platform.db) as db:
        original = db.execute(
            "SELECT text FROM job_output WHERE job_id = ? AND text LIKE 'alpha%'", (job_id,)
        ).fetchone()[0]
        db.execute(
            "UPDATE job_output SET text = 'nothing here\n' WHERE job_id = ? AND text LIKE 'alpha%'",
            (job_id,),
        )
    sentence = (
        f"Job {job_id}'s stored output no longer matches its audit record {outcome['seq']}: "
        "output was changed or deleted after the job ended."
    )
    shown = admin.run("job", "show", job_id)
    assert shown.returncode == 1
    assert f"WARNING: {sentence} What follows is not evidence." in shown.stdout
    verified = admin.run("audit", "verify")
    assert verified.returncode == 1
    assert f"BROKEN: {sentence}" in " ".join(verified.stdout.split())

    # Put back, it verifies again: the check is of what is stored, nothing else.
    with sqlite3.connect(platform.db) as db:
        db.execute(
            "UPDATE job_output SET text = ? WHERE job_id = ? AND text = 'nothing here\n'",
            (original, job_id),
        )
    assert admin.run("audit", "verify").returncode == 0


def test_an_unwritable_checkpoint_refuses_the_action_and_records_nothing(
    own: tuple[Platform, Cli, Children], agent: Agent
) -> None:
    platform, admin, _ = own
    before = len(_records(admin, "--kind", "job"))
    blocker = platform.data / "audit-anchor.json.tmp"
    blocker.mkdir()
    try:
        with admin.api() as api:
            jobs_before = len(api.get("/jobs").json())
            response = _submit(api, agent.host_id, "print('never')\n")
            assert response.status_code == 503
            assert response.json()["detail"] == (
                "The audit log's checkpoint could not be written (Is a directory), so the action "
                "was not carried out; an operator must fix the platform's data directory."
            )
            assert len(api.get("/jobs").json()) == jobs_before
    finally:
        blocker.rmdir()
    assert len(_records(admin, "--kind", "job")) == before
    assert admin.run("audit", "verify").returncode == 0


def test_a_dropped_host_is_said_at_once_on_its_running_job(
    own: tuple[Platform, Cli, Children], tmp_path: Path, children: Children
) -> None:
    platform, admin, _ = own
    lonely = running_agent(platform, admin, children, tmp_path / "lonely", segment="ir")
    with admin.api() as api:
        response = _submit(
            api, lonely.host_id, "import time\nprint('up', flush=True)\ntime.sleep(60)\n"
        )
        job_id = response.json()["jobs"][0]["id"]
        wait_for(
            lambda: api.get(f"/jobs/{job_id}").json()["state"] == "running",
            timeout=20,
            interval=0.1,
            what="the job to run",
        )
        assert api.get(f"/jobs/{job_id}").json()["waiting"] is None
        assert lonely.proc is not None
        lonely.proc.popen.kill()
        started = time.monotonic()

        def said() -> str | None:
            waiting = api.get(f"/jobs/{job_id}").json()["waiting"]
            return waiting if isinstance(waiting, str) else None

        waiting = wait_for(said, timeout=15, interval=0.1, what="the job to say its host left")
        assert time.monotonic() - started < 15
        assert waiting.startswith("Host offline since ")
        assert waiting.endswith(" UTC; what became of the job will be known when it returns.")


def test_a_platform_killed_mid_job_records_the_ending_once_when_it_returns(
    own: tuple[Platform, Cli, Children], agent: Agent
) -> None:
    platform, admin, _ = own
    source = "import time\nprint('before', flush=True)\ntime.sleep(4)\nprint('after', flush=True)\n"
    with admin.api() as api:
        job_id = _submit(api, agent.host_id, source).json()["jobs"][0]["id"]
        wait_for(
            lambda: api.get(f"/jobs/{job_id}").json()["state"] == "running",
            timeout=20,
            interval=0.1,
            what="the job to run",
        )
    platform.stop(signal.SIGKILL)
    # The script ends while the platform is down: its agent keeps the output and the ending.
    time.sleep(5)
    platform.start()
    with admin.api() as api:
        job = _ended(api, job_id, timeout=60)
        texts = [p["text"] for p in api.get(f"/jobs/{job_id}/output").json()["output"]]
    assert job["state"] == "succeeded"
    assert "".join(t or "" for t in texts) == "before\nafter\n"
    outcomes = [
        r
        for r in _records(admin, "--kind", "job")
        if r["action"] == "job.outcome" and r["target"] == f"job:{job_id}"
    ]
    assert len(outcomes) == 1
    # Bound to everything stored, whichever side of the kill it arrived on.
    assert outcomes[0]["details"]["output"]["pieces"] == len(texts)
    assert admin.run("audit", "verify").returncode == 0
