"""An upgrade from the oldest supported release: a data directory made and used by the code of
the first commit with migrations 0001-0008 (there are no release tags yet), then served by the
current code: migrations run, the chain verifies, the retrieved file's custody is still there.
The older agent, which speaks the previous protocol version, is served and runs a job."""

import hashlib
import os
import sqlite3
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from tether.protocol import OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION
from tether.server.store.migrate import alembic_config

from .conftest import running_agent
from .harness import Agent, Children, Cli, Platform, host_by_id, wait_online

REPO = Path(__file__).resolve().parents[2]
# The oldest schema an upgrade is promised from: the release line that first had 0008.
OLDEST_MIGRATION = "src/tether/server/store/migrations/versions/0008_isolation_reports.py"


def _oldest_release(into: Path) -> Path:
    """The source tree of the first commit holding OLDEST_MIGRATION, extracted under `into`."""
    try:
        found = subprocess.run(
            ["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "--",
             OLDEST_MIGRATION],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()  # fmt: skip
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", found[-1], "src/tether"],
            capture_output=True, check=True, timeout=120,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError, IndexError) as exc:
        reason = f"the repository's history (git log, git archive) is not available: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


@dataclass
class Upgraded:
    platform: Platform
    admin: Cli
    agent: Agent
    evidence: Path


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upgraded]:
    """A data directory made by the oldest release's platform, with a file its agent retrieved
    (a job), then served by the current code; the older agent keeps running throughout."""
    root = tmp_path_factory.mktemp("upgrade")
    old_source = _oldest_release(root / "old")
    children = Children(root / "logs")
    try:
        platform = Platform(root / "p", children)
        platform.root.mkdir()
        current_env = dict(platform.env)
        # The older code first on the path: its `tether` runs the platform, CLI and agent.
        platform.env = {**current_env, "PYTHONPATH": str(old_source)}
        platform.init()
        platform.start()
        old_admin = platform.login(root / "old-cli")
        old_admin.ok("segment", "set", "default", "--active-response", "on")
        agent = running_agent(platform, old_admin, children, root / "agent")
        evidence = root / "evidence.txt"
        evidence.write_text("kept across the upgrade\n" * 100)
        fetched = old_admin.run("get", agent.host_id, str(evidence), "-o", str(root / "got"))
        assert fetched.returncode == 0, fetched.stderr
        assert platform.stop() == 0
        platform.env = current_env
        platform.start()
        yield Upgraded(platform, platform.login(root / "new-cli"), agent, evidence)
    finally:
        children.kill_all()


def test_the_current_code_migrates_the_oldest_release_and_the_chain_and_custody_hold(
    upgraded: Upgraded,
) -> None:
    with sqlite3.connect(upgraded.platform.db) as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert revision == head
    verified = upgraded.admin.run("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("Intact:")
    files = upgraded.admin.json("files", "list", "--kind", "retrieved")
    kept = [f for f in files if f["source_path"] == str(upgraded.evidence)]
    assert len(kept) == 1
    assert kept[0]["size"] == upgraded.evidence.stat().st_size
    assert kept[0]["sha256"] == hashlib.sha256(upgraded.evidence.read_bytes()).hexdigest()


def test_the_agent_of_the_oldest_release_still_runs_jobs_on_the_current_platform(
    upgraded: Upgraded,
) -> None:
    # The oldest release says protocol version 1; the platform serves it the policy without the
    # allowlist field its models refuse (tether.protocol.compat), so it connects and runs a job.
    agent = upgraded.agent
    assert agent.proc is not None
    with upgraded.admin.api() as api:
        wait_online(api, agent.host_id, timeout=30)
        host = host_by_id(api, agent.host_id)
    assert host is not None
    assert host["protocol_version"] == OLDEST_PROTOCOL_VERSION < PROTOCOL_VERSION
    # The hosts still to upgrade are visible in the inventory.
    assert f"(protocol {OLDEST_PROTOCOL_VERSION})" in upgraded.admin.ok("hosts")
    listed = upgraded.admin.json("ps", agent.host_id)
    assert agent.proc.pid in {p["pid"] for p in listed["processes"]}
    # Served, not looping: the agent kept the one connection the job ran on.
    assert "Reconnecting" not in agent.proc.output().split("Connected to")[-1]
