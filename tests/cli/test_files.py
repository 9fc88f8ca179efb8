"""Where the CLI saves a file whose name an endpoint chose, the mode it deploys with, and the\nprogress bar of a transfer."""

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress, TaskID

from tether.cli.errors import CliError, UsageError
from tether.cli.files import PROGRESS_POLL_SECONDS, _finished, deploy_mode, local_name
from tether.cli.follow import LONG_POLL_SECONDS

from .conftest import Cli, Hosts

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/var/log/auth.log", "auth.log"),
        ("C:\\Windows\\Temp\\evil.exe", "evil.exe"),
        ("/home/x/.bashrc", f"retrieved-{SHA[:16]}"),
        ("C:evil", f"retrieved-{SHA[:16]}"),
        ("report.txt:stream", f"retrieved-{SHA[:16]}"),
        ("/tmp/dir/", f"retrieved-{SHA[:16]}"),
        ("bad\x1b[2Jname", f"retrieved-{SHA[:16]}"),
    ],
)
def test_local_names_are_never_hidden_drives_or_escapes(name: str, expected: str) -> None:
    assert local_name(name, SHA) == expected


# Where `-o` saves (issue 18, item 1): a name ending with / is a directory, created if new; a
# file in a directory that does not exist is refused in one sentence before anything runs.


async def test_download_into_a_new_directory_named_with_a_slash(cli: Cli, tmp_path: Path) -> None:
    tool = tmp_path / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\necho fixed\n")
    uploaded = await cli("files", "upload", str(tool))
    assert uploaded.code == 0, uploaded.stderr
    target = tmp_path / "evidence" / "case-7"

    saved = await cli("files", "download", "tool.sh", "-o", f"{target}/")

    assert saved.code == 0, saved.stderr
    assert (target / "tool.sh").read_bytes() == tool.read_bytes()
    assert not (tmp_path / "evidence" / "case-7.sh").exists()


async def test_get_into_a_missing_directory_is_refused_before_the_job(
    cli: Cli, hosts: Hosts, tmp_path: Path
) -> None:
    missing = tmp_path / "missing-dir" / "shadow"

    refused = await cli("get", "ws-1", "/etc/shadow", "-o", str(missing))

    assert refused.code != 0
    assert refused.stderr.strip() == "tether: " + (
        f"The directory {missing.parent} does not exist; create it, or end --output with / to "
        "have it created."
    )
    assert await hosts.platform.jobs.find(host_id=hosts.ids["ws-1"]) == []
    assert not missing.parent.exists()


async def test_output_naming_a_file_as_a_directory_is_refused(cli: Cli, tmp_path: Path) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("x")

    refused = await cli("files", "download", "anything", "-o", f"{existing}/")

    assert refused.code != 0
    assert refused.stderr.strip() == f"tether: {existing} exists and is not a directory."


# The mode `tether put` deploys with (issue 18, item 2).


@pytest.mark.parametrize(
    ("source", "given", "expected"),
    [
        (0o755, None, "0755"),
        (0o775, None, "0755"),  # no write for group and others by default
        (0o666, None, "0644"),
        (0o4755, None, "0755"),  # a setuid source deploys without it
        (0o600, "755", "0755"),
        (0o755, "0640", "0640"),
    ],
)
def test_put_keeps_the_source_mode_or_takes_mode(
    tmp_path: Path, source: int, given: str | None, expected: str
) -> None:
    local = tmp_path / "fix.sh"
    local.write_text("#!/bin/sh\n")
    local.chmod(source)
    assert deploy_mode(local, given) == expected


@pytest.mark.parametrize("given", ["4755", "2755", "1777", "rwx", "9", "0o755", ""])
def test_put_refuses_a_mode_beyond_read_write_execute(tmp_path: Path, given: str) -> None:
    local = tmp_path / "fix.sh"
    local.write_text("x")
    with pytest.raises(UsageError, match="is not three octal digits like 755 or 0644"):
        deploy_mode(local, given)


async def test_put_asks_for_the_mode_and_the_job_records_it(
    cli: Cli, hosts: Hosts, tmp_path: Path
) -> None:
    local = tmp_path / "fix.sh"
    local.write_text("#!/bin/sh\necho fixed\n")
    local.chmod(0o755)
    running = asyncio.create_task(cli("put", "ws-1", str(local), "/usr/local/bin/fix.sh"))
    (job_id,) = await hosts.jobs_of("ws-1")
    job = await hosts.platform.jobs.get(job_id)
    assert job.args is not None
    assert job.args["mode"] == "0755"
    # ws-1 is offline: the deploy waits, and is cancelled here.
    assert (await cli("job", "cancel", job_id)).code == 0
    ended = await running
    assert ended.code == 1
    assert ended.stderr.startswith("tether: The deployment cancelled")
    refused = await cli("put", "ws-1", str(local), "/usr/local/bin/fix.sh", "--mode", "4755")
    assert refused.code == 2
    assert "setuid, setgid and sticky bits are not deployed" in refused.stderr
    assert len(await hosts.platform.jobs.find(host_id=hosts.ids["ws-1"])) == 1


# The bar of `tether get` and `tether put` covers the endpoint's leg too (issue 17, item 6).


class _Polls:
    """An Api whose job output poll answers with the given jobs, one per call."""

    def __init__(self, *jobs: dict[str, object]) -> None:
        self.jobs = list(jobs)
        self.waits: list[float] = []

    def get(self, path: str, params: dict[str, float] | None = None) -> dict[str, object]:
        assert path.endswith("/output")
        self.waits.append(float((params or {})["wait"]))
        return {"job": self.jobs.pop(0), "output": [], "cursor": 0}


def _job(state: str, moved: int | None, size: int | None = 4 << 20) -> dict[str, object]:
    return {"id": "j1", "state": state, "transfer_bytes": moved, "transfer_size": size}


def _terminal_bar() -> Progress:
    return Progress(console=Console(file=io.StringIO(), force_terminal=True, width=100))


def test_the_bar_follows_the_endpoint_leg_to_the_end() -> None:
    api = _Polls(
        _job("delivered", None, None),
        _job("running", 1 << 20),
        _job("running", 3 << 20),
        _job("succeeded", 4 << 20),
    )
    seen: list[float] = []
    with _terminal_bar() as bar:
        real_update = bar.update

        def update(task: TaskID, **kw: Any) -> None:
            real_update(task, **kw)
            seen.append(bar.tasks[0].completed)

        bar.update = update  # type: ignore[method-assign,assignment]
        job = _finished(api, "j1", "The retrieval", bar=bar, label="ws-1 -> platform")  # type: ignore[arg-type]
        (task,) = bar.tasks
    assert job["state"] == "succeeded"
    assert task.description == "ws-1 -> platform"
    assert (task.completed, task.total) == (4 << 20, 4 << 20)
    assert seen[:2] == [1 << 20, 3 << 20]
    # Short polls while a bar is drawn: the platform writes progress about once a second.
    assert api.waits == [PROGRESS_POLL_SECONDS] * 4


def test_a_failed_transfer_ends_the_bar_with_the_reason() -> None:
    failed = {**_job("failed", 2 << 20), "error": "The endpoint's disk is full."}
    with (
        _terminal_bar() as bar,
        pytest.raises(CliError, match="The retrieval failed: The endpoint"),
    ):
        _finished(_Polls(failed), "j1", "The retrieval", bar=bar, label="x")  # type: ignore[arg-type]
    assert bar.tasks[0].completed == 2 << 20


def test_without_a_terminal_the_job_is_followed_with_the_long_poll() -> None:
    api = _Polls(_job("succeeded", 4 << 20))
    bar = Progress(console=Console(file=io.StringIO(), force_terminal=False), disable=True)
    _finished(api, "j1", "The retrieval", bar=bar, label="x")  # type: ignore[arg-type]
    assert api.waits == [LONG_POLL_SECONDS]
