"""The endpoint side of a hostile neighbour (issue 21 item 5), with a real platform and agent.

Another local account (tether-mallory, run with runuser) plants links where the root agent
will write or read: a deploy through a linked folder is refused and writes nothing, a retrieval
of a link says it was one and where it led, and never files the target's owner and mode as the
link's; the running agent's journal is owner-only.
"""

import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..local_user import other_user, shared_tmp
from .harness import Agent, Children, Cli, Platform, wait_for
from .test_actions import finished, run

pytestmark = pytest.mark.e2e


@pytest.fixture
def shared() -> Iterator[Path]:
    folder = shared_tmp()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_deploy_through_a_linked_folder_is_refused_and_writes_nothing(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, shared: Path, tmp_path: Path
) -> None:
    _, admin, _ = responding
    mallory = other_user()
    # /opt/protected in the issue: a folder only root writes to.
    protected = shared / "opt-protected"
    protected.mkdir(mode=0o755)
    (protected / "service.conf").write_text("trusted\n")
    mallory.run("mkdir", str(shared / "x"))
    mallory.run("ln", "-s", str(protected), str(shared / "x" / "drop"))
    tool = tmp_path / "evil.conf"
    tool.write_text("mallory's config\n")

    sentence = (
        f"Nothing was written: {shared / 'x' / 'drop'} is a symbolic link (to {protected}), "
        "and the agent does not follow links in a path it writes to."
    )
    for name in ("evil.conf", "service.conf"):
        result = admin.run("put", endpoint.host_id, str(tool), str(shared / "x" / "drop" / name))
        assert result.returncode == 1, result.stdout
        assert result.stderr == f"tether: The deployment failed: {sentence}\n"
    jobs = admin.json("jobs", "--host", endpoint.host_id, "--state", "failed")
    # The job's error is the whole sentence, as the chain's outcome record holds it.
    refused = [j for j in jobs if j["action"] == "files.put" and j["error"] == sentence]
    assert len(refused) == 2, jobs

    assert sorted(p.name for p in protected.iterdir()) == ["service.conf"]
    assert (protected / "service.conf").read_text() == "trusted\n"
    with admin.api() as api:
        records = api.get("/audit", params={"limit": 1000}).json()
    deploys = [r for r in records if r["action"] == "file.deploy"]
    assert all(str(shared) not in str(r["details"].get("path")) for r in deploys), deploys

    # The same folder reached by its real path is deployed to: the refusal is about the link.
    put = admin.json("put", endpoint.host_id, str(tool), str(protected / "evil.conf"))
    assert put["job"]["state"] == "succeeded"
    assert (protected / "evil.conf").read_text() == "mallory's config\n"


def retrieve(api: httpx.Client, host_id: str, path: Path) -> tuple[dict[str, Any], Any]:
    """files.get through the API: the finished job and its library entry.

    The library entry is written by a listener just after the job's ending is committed, so it
    is waited for (`tether get` asks once, and under load can ask too early: see the report of
    this branch).
    """
    job_id = run(api, host_id, "files.get", {"path": str(path)})
    job = finished(api, job_id)
    assert job["state"] == "succeeded", job

    def entry() -> Any:
        found = api.get("/files", params={"job": job_id, "kind": "retrieved"}).json()
        return found[0] if found else None

    return job, wait_for(entry, timeout=20, what=f"the library entry of job {job_id}")


def test_a_retrieved_link_is_recorded_as_one_with_where_it_led(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, shared: Path
) -> None:
    _, admin, _ = responding
    mallory = other_user()
    secret = shared / "root-only.bin"
    secret.write_bytes(b"root's evidence\n")
    os.chmod(secret, 0o640)
    drop = shared / "mallory"
    mallory.run("mkdir", str(drop))
    mallory.run("ln", "-s", str(secret), str(drop / "innocent.txt"))

    with admin.api() as api:
        job, entry = retrieve(api, endpoint.host_id, drop / "innocent.txt")
        plain_job, plain = retrieve(api, endpoint.host_id, secret)

    assert entry["sha256"] == hashlib.sha256(b"root's evidence\n").hexdigest()
    assert entry["source_path"] == str(drop / "innocent.txt")
    # The link has no owner and mode of its own content: none filed, rather than root's 0640.
    assert (entry["file_owner"], entry["file_mode"]) == (None, None)
    link = job["result"]["link"]
    assert link == {
        "target": str(secret),
        "resolved": str(secret),
        "link_owner": mallory.name,
        "owner": "root",
        "mode": "0640",
        "mtime": link["mtime"],
        "escaped": False,
    }
    assert link["mtime"] is not None
    assert (job["result"]["owner"], job["result"]["mode"]) == (None, None)
    # The file itself, asked for by its own path: its owner and mode, and no link.
    assert (plain["file_owner"], plain["file_mode"]) == ("root", "0640")
    assert plain_job["result"]["link"] is None


def test_the_running_agents_journal_is_owner_only(endpoint: Agent) -> None:
    # The running agent holds the journal open in WAL mode: all three files exist now.
    journal = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in endpoint.state_dir.iterdir()
        if p.name.startswith("journal.db")
    }
    assert {"journal.db", "journal.db-wal", "journal.db-shm"} <= set(journal), journal
    assert set(journal.values()) == {0o600}, journal
    assert stat.S_IMODE(endpoint.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(endpoint.key.stat().st_mode) == 0o600


def test_enrolling_into_a_folder_another_user_made_is_refused_by_the_real_agent(
    responding: tuple[Platform, Cli, Children], shared: Path
) -> None:
    platform, admin, children = responding
    mallory = other_user()
    state_dir = shared / "tether-agent"
    mallory.run("mkdir", "-m", "0755", str(state_dir))
    mallory.run("ln", "-s", str(shared / "stolen.key"), str(state_dir / "agent.key.tmp"))
    token = admin.json("enroll-token", "create", "--segment", "ir", "--uses", "1")["token"]

    result = Agent(state_dir, children, platform.env).enroll(token)

    assert result.returncode == 1
    assert result.stderr.rstrip("\n").endswith(
        f"The state directory {state_dir} belongs to {mallory.name}, not root, so the agent "
        "refuses it; remove it or choose another --state-dir."
    ), result.stderr
    assert not os.path.lexists(shared / "stolen.key")
    assert sorted(os.listdir(state_dir)) == ["agent.key.tmp"]
    # The token was not spent: a proper folder enrolls with it.
    again = Agent(shared / "root-made", children, platform.env).enroll(token)
    assert again.returncode == 0, again.stderr
