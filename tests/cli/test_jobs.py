"""`tether jobs`, `tether job show|cancel`, `tether actions` against a platform in process."""

import asyncio
import json
import re
from pathlib import Path

from ..server.support import add_host
from .conftest import Cli, Hosts

SCRIPT = "Write-Output hello\n"


async def submit(cli: Cli, tmp_path: Path, *hostnames: str) -> dict[str, object]:
    script = tmp_path / "probe.ps1"
    script.write_text(SCRIPT)
    done = await cli("run", *hostnames, str(script), "--detach", "--json")
    assert done.code == 0, done.stderr
    batch: dict[str, object] = json.loads(done.stdout)
    return batch


async def test_jobs_lists_with_short_ids_and_json_with_full_ones(
    cli: Cli, hosts: Hosts, tmp_path: Path
) -> None:
    hosts.online("ws-1")
    await submit(cli, tmp_path, "ws-1", "ws-2")
    [done] = await hosts.jobs_of("ws-1")
    await hosts.agent_runs(
        "ws-1", done, state="failed", error="The script failed\nwith\x1b[2J two lines."
    )

    listed = await cli("jobs", "--json")
    assert listed.code == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    assert {j["hostname"]: j["state"] for j in jobs} == {"ws-1": "failed", "ws-2": "queued"}
    assert all(len(j["id"]) == 32 for j in jobs)

    shown = await cli("jobs")
    assert shown.code == 0
    assert done[:12] in shown.stdout
    assert done not in shown.stdout
    assert "script.run" in shown.stdout
    assert "admin" in shown.stdout
    assert "The script failed with" in shown.stdout  # one line in the table
    assert "\x1b" not in shown.stdout

    pending = json.loads((await cli("jobs", "--pending", "--json")).stdout)
    assert [j["hostname"] for j in pending] == ["ws-2"]
    failed = json.loads((await cli("jobs", "--state", "failed", "--host", "ws-1", "--json")).stdout)
    assert [j["id"] for j in failed] == [done]


async def test_jobs_of_one_batch(cli: Cli, hosts: Hosts, tmp_path: Path) -> None:
    first = await submit(cli, tmp_path, "ws-1")
    await submit(cli, tmp_path, "ws-2")
    listed = json.loads((await cli("jobs", "--batch", str(first["id"]), "--json")).stdout)
    assert [j["hostname"] for j in listed] == ["ws-1"]


async def test_bad_state_is_a_usage_error(cli: Cli, hosts: Hosts) -> None:
    refused = await cli("jobs", "--state", "sleeping")
    assert refused.code == 2
    assert "sleeping" in refused.stderr


async def test_job_show_prints_fields_result_output_and_rows(
    cli: Cli, hosts: Hosts, tmp_path: Path
) -> None:
    hosts.online("ws-1")
    await submit(cli, tmp_path, "ws-1")
    [job_id] = await hosts.jobs_of("ws-1")
    await hosts.agent_runs(
        "ws-1",
        job_id,
        [
            ("stdout", "hello\x1b]0;pwned\x07 world\n"),
            ("stderr", "a warning\n"),
            ("row", {"path": "C:\\x.exe", "size": 10}),
            ("row", {"path": "C:\\y.exe", "size": 20, "signed": True}),
            ("log", "almost out of room"),
        ],
        result={"exit_code": 0, "output_truncated": True},
    )

    shown = await cli("job", "show", job_id[:12])
    assert shown.code == 0, shown.stderr
    out = shown.stdout
    assert job_id in out
    assert "succeeded" in out
    assert "ws-1" in out
    assert '"exit_code": 0' in out
    assert '"output_truncated": true' in out
    assert "Write-Output hello" in out  # the arguments
    assert "hello world" in out
    assert "pwned" not in out.replace("hello world", "")
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "stderr: a warning" in out
    assert "log: almost out of room" in out
    assert "C:\\y.exe" in out
    assert "signed" in out

    as_json = json.loads((await cli("job", "show", job_id, "--json")).stdout)
    assert as_json["job"]["result"] == {
        "exit_code": 0,
        "timed_out": False,
        "cancelled": False,
        "output_truncated": True,
        "rows_truncated": False,
        "error": None,
    }
    assert [p["stream"] for p in as_json["output"]] == ["stdout", "stderr", "row", "row", "log"]


async def test_job_show_unknown_id_is_one_sentence(cli: Cli, hosts: Hosts) -> None:
    missing = await cli("job", "show", "0" * 32)
    assert missing.code == 1
    assert missing.stderr == f"tether: No job has the id '{'0' * 32}'.\n"
    prefix = await cli("job", "show", "abcdef12")
    assert prefix.code == 1
    assert "No job among the latest 1000 has an id starting with abcdef12" in prefix.stderr


async def test_cancel_a_pending_job_then_again(cli: Cli, hosts: Hosts, tmp_path: Path) -> None:
    await submit(cli, tmp_path, "ws-2")  # offline: the job waits
    [job_id] = await hosts.jobs_of("ws-2")

    cancelled = await cli("job", "cancel", job_id)
    assert cancelled.code == 0, cancelled.stderr
    assert cancelled.stdout == f"Job {job_id} is cancelled.\n"

    again = await cli("job", "cancel", job_id)
    assert again.code == 1
    assert again.stderr == (
        f"tether: Job {job_id} already ended (cancelled); there is nothing to cancel.\n"
    )


async def test_cancel_a_running_job_asks_the_agent(cli: Cli, hosts: Hosts, tmp_path: Path) -> None:
    link = hosts.online("ws-1")
    await submit(cli, tmp_path, "ws-1")
    [job_id] = await hosts.jobs_of("ws-1")
    await hosts.agent_runs("ws-1", job_id, state="running")
    asked = await cli("job", "cancel", job_id)
    assert asked.code == 0, asked.stderr
    assert asked.stdout == f"Job {job_id} is running; its agent was asked to stop it.\n"
    assert any('"job.cancel"' in sent for sent in link.sent)


async def test_actions_lists_declarations(cli: Cli, hosts: Hosts) -> None:
    listed = await cli("actions", "--json")
    assert listed.code == 0
    assert {"system.noop", "script.run"} <= {a["name"] for a in json.loads(listed.stdout)}
    assert "system.noop" in (await cli("actions")).stdout


LOOK_ALIKE = "ws-01\u202eexe.gpj\x9b2J"
ERROR = "failed on \u2066ws-02\u2069\x85 again"


async def test_a_look_alike_hostname_and_error_read_as_what_they_are(
    cli: Cli, hosts: Hosts, tmp_path: Path
) -> None:
    """An endpoint names itself and words its errors: tables show '?' for what a terminal or a
    reader would act on, --json writes it as \\u escapes and parses back to the same text."""
    host_id = await add_host(hosts.platform.engine, LOOK_ALIKE, segment="lab")
    hosts.ids[LOOK_ALIKE] = host_id
    hosts.online(LOOK_ALIKE)
    await submit(cli, tmp_path, host_id)
    [job_id] = await hosts.jobs_of(LOOK_ALIKE)
    await hosts.agent_runs(LOOK_ALIKE, job_id, state="failed", error=ERROR)
    raw = ("\u202e", "\u2066", "\u2069", "\x9b", "\x85")
    for command in (["hosts"], ["jobs"], ["job", "show", job_id]):
        shown = await cli(*command)
        assert shown.code == 0, shown.stderr
        assert not [c for c in raw if c in shown.stdout], command
    assert "ws-01?exe.gpj?2J" in (await cli("hosts")).stdout
    assert "failed on ?ws-02?? again" in (await cli("job", "show", job_id)).stdout
    for command in (["hosts", "--json"], ["jobs", "--json"]):
        out = (await cli(*command)).stdout
        assert not [c for c in raw if c in out], command
        assert "ws-01\\u202eexe.gpj\\u009b2J" in out
    listed = json.loads((await cli("jobs", "--json")).stdout)
    assert {(j["hostname"], j["error"]) for j in listed if j["id"] == job_id} == {
        (LOOK_ALIKE, ERROR)
    }


async def test_no_pending_job_is_a_sentence_not_an_empty_table(cli: Cli, hosts: Hosts) -> None:
    shown = await cli("jobs", "--pending")
    assert shown.code == 0, shown.stderr
    assert shown.stdout == "No job is pending: nothing waits for an offline host.\n"
    assert (await cli("jobs", "--pending", "--json")).stdout.strip() == "[]"


# One timestamp format in every listing (issue 18, item 9): "YYYY-MM-DD HH:MM:SSZ", in UTC.
ONE_FORMAT = re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\b")
OTHER_FORMATS = re.compile(r"\d\d:\d\d:\d\d(?:\.\d+|[+-]\d\d:\d\d)|\d{4}-\d\d-\d\dT\d\d")


async def test_jobs_scripts_and_files_print_one_timestamp_format(
    cli: Cli, hosts: Hosts, tmp_path: Path
) -> None:
    await submit(cli, tmp_path, "ws-1")
    tool = tmp_path / "tool.sh"
    tool.write_text("echo\n")
    assert (await cli("files", "upload", str(tool))).code == 0
    script = tmp_path / "probe.py"
    script.write_text("print(1)\n")
    saved = await cli("script", "save", "Probe", str(script), "--description", "A probe.")
    assert saved.code == 0, saved.stderr
    for command in (
        ("jobs",),
        ("files", "list"),
        ("script", "list"),
        ("script", "history", "Probe"),
    ):
        shown = await cli(*command)
        assert shown.code == 0, shown.stderr
        assert ONE_FORMAT.search(shown.stdout), (command, shown.stdout)
        assert not OTHER_FORMATS.search(shown.stdout), (command, shown.stdout)


async def test_job_show_follow_streams_until_the_job_ends(
    cli: Cli, hosts: Hosts, tmp_path: Path
) -> None:
    hosts.online("ws-1")
    await submit(cli, tmp_path, "ws-1")
    [job_id] = await hosts.jobs_of("ws-1")
    following = asyncio.create_task(cli("job", "show", job_id[:12], "--follow"))
    await asyncio.sleep(0.3)  # the command is following before the output arrives
    assert not following.done()
    await hosts.agent_runs(
        "ws-1",
        job_id,
        [("stdout", "line one\nline two\n"), ("row", {"user": "root", "pid": 1})],
        result={"exit_code": 2},
    )
    shown = await following

    assert shown.code == 1  # the script exited 2
    assert "output (following; Ctrl-C stops following, the job goes on):" in shown.stdout
    assert "line one\nline two\n" in shown.stdout
    assert "rows:" in shown.stdout
    assert "root" in shown.stdout
    assert shown.stderr.endswith("ws-1: succeeded, exit code 2\n")
    refused = await cli("job", "show", job_id, "--follow", "--json")
    assert refused.code == 2


async def test_jobs_shows_the_host_id_beside_a_name_two_listed_hosts_share(
    cli: Cli, hosts: Hosts, tmp_path: Path
) -> None:
    first = hosts.ids["ws-1"]
    twin = await add_host(hosts.platform.engine, "ws-1", segment="lab")  # re-imaged
    await submit(cli, tmp_path, first, twin, "ws-2")
    shown = await cli("jobs")
    assert shown.code == 0, shown.stderr
    assert f"ws-1 ({first[:8]})" in shown.stdout
    assert f"ws-1 ({twin[:8]})" in shown.stdout
    assert "ws-2 (" not in shown.stdout
    # The short id names the host: `tether jobs --host` takes it back.
    mine = json.loads((await cli("jobs", "--host", twin[:8], "--json")).stdout)
    assert [j["host_id"] for j in mine] == [twin]
