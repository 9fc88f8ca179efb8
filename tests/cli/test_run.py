"""`tether run`: parameters, submission, live output, summary and exit status."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tether.cli import run as run_module
from tether.cli.errors import UsageError
from tether.cli.run import parse_params

from ..server.support import add_host
from .conftest import Cli, Hosts


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "probe.ps1"
    path.write_text("Get-Process\n")
    return str(path)


def test_params_are_json_when_they_parse_else_strings() -> None:
    assert parse_params(["n=3", "flag=true", "path=C:\\temp", "list=[1,2]", "empty=", "s=a=b"]) == {
        "n": 3,
        "flag": True,
        "path": "C:\\temp",
        "list": [1, 2],
        "empty": "",
        "s": "a=b",
    }


@pytest.mark.parametrize("pair", ["novalue", "=3", "bad name=1", "x\x1b=1"])
def test_malformed_params_are_usage_errors(pair: str) -> None:
    with pytest.raises(UsageError, match="is not name=value"):
        parse_params([pair])


def test_a_param_given_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="--param n is given twice"):
        parse_params(["n=1", "n=2"])


async def test_detach_submits_and_returns(cli: Cli, hosts: Hosts, script: str) -> None:
    done = await cli(
        "run", "ws-1", "ws-2", script, "--param", "n=3", "--param", "who=me", "--detach",
        "--ttl", "12h", "--timeout", "90", "--not-after", "2099-01-01T08:00Z",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("batch ")
    assert sorted(line.split()[2] for line in lines[1:]) == ["ws-1", "ws-2"]
    [job_id] = await hosts.jobs_of("ws-1")
    job = await hosts.platform.jobs.get(job_id)
    assert job.args == {
        "source": "Get-Process\n",
        "params": {"n": 3, "who": "me"},
        "name": None,
        "max_output_bytes": 8 * 1024 * 1024,
        "max_rows": 10_000,
    }
    assert job.timeout_seconds == 90
    assert job.not_after is not None
    assert job.not_after.year == 2099
    assert (job.expires_at - job.created_at).total_seconds() == 12 * 3600


async def test_detach_json_is_the_batch(cli: Cli, hosts: Hosts, script: str) -> None:
    done = await cli("run", "ws-1", "ws-off", script, "--detach", "--json")
    assert done.code == 0, done.stderr
    batch = json.loads(done.stdout)
    assert [j["hostname"] for j in batch["jobs"]] == ["ws-1"]
    assert list(batch["refused"].values()) == [
        "Active Response is off in segment default, so response actions on ws-off are refused."
    ]


async def test_run_streams_two_hosts_with_prefixes_then_summarises(
    cli: Cli, hosts: Hosts, script: str
) -> None:
    hosts.online("ws-1")
    hosts.online("ws-2")
    running = asyncio.create_task(cli("run", "ws-1", "ws-2", script))
    one = (await hosts.jobs_of("ws-1"))[0]
    two = (await hosts.jobs_of("ws-2"))[0]
    await hosts.agent_runs(
        "ws-1",
        one,
        [
            ("stdout", "hello "),
            ("stdout", "from one\nsecond\x1b]0;pwned\x07 line\n"),
            ("stderr", "careful\x1b[2J\n"),
            ("row", {"name": "svc", "pid": 4}),
        ],
        result={"exit_code": 0},
    )
    await hosts.agent_runs(
        "ws-2",
        two,
        [("stdout", "from two\n"), ("log", "exiting")],
        state="succeeded",
        result={"exit_code": 3},
    )
    done = await running

    assert done.code == 1
    out = done.stdout
    assert "[ws-1] hello from one\n" in out
    assert "[ws-1] second line\n" in out
    assert "[ws-2] from two\n" in out
    assert "rows from ws-1:" in out
    assert "svc" in out
    assert "[ws-1] careful\n" in done.stderr
    assert "[ws-2] log: exiting\n" in done.stderr
    assert "pwned" not in out
    assert "\x1b" not in out + done.stderr
    assert done.stderr.endswith("ws-1: succeeded, exit code 0\nws-2: succeeded, exit code 3\n")


async def test_run_on_one_host_streams_unprefixed_and_exits_0(
    cli: Cli, hosts: Hosts, script: str
) -> None:
    hosts.online("ws-1")
    running = asyncio.create_task(cli("run", "ws-1", script))
    [job_id] = await hosts.jobs_of("ws-1")
    await hosts.agent_runs("ws-1", job_id, [("stdout", "just me\r\n")], result={"exit_code": 0})
    done = await running
    assert done.code == 0, done.stderr
    assert done.stdout == "just me\n"
    assert done.stderr == "ws-1: succeeded, exit code 0\n"


async def test_run_json_reports_every_job_with_its_output(
    cli: Cli, hosts: Hosts, script: str
) -> None:
    hosts.online("ws-1")
    running = asyncio.create_task(cli("run", "ws-1", script, "--json"))
    [job_id] = await hosts.jobs_of("ws-1")
    await hosts.agent_runs(
        "ws-1", job_id, [("stdout", "x\n")], state="failed", error="Script crashed."
    )
    done = await running
    assert done.code == 1
    report = json.loads(done.stdout)
    [job] = report["jobs"]
    assert job["id"] == job_id
    assert job["state"] == "failed"
    assert job["error"] == "Script crashed."
    assert [p["text"] for p in job["output"]] == ["x\n"]


async def test_refused_hosts_are_named_and_fail_the_run(
    cli: Cli, hosts: Hosts, script: str
) -> None:
    hosts.online("ws-1")
    running = asyncio.create_task(cli("run", "ws-1", "ws-off", script))
    [job_id] = await hosts.jobs_of("ws-1")
    await hosts.agent_runs("ws-1", job_id, result={"exit_code": 0})
    done = await running
    assert done.code == 1
    assert f"host {hosts.ids['ws-off']} refused: Active Response is off" in done.stderr


async def test_offline_host_waits_and_ctrl_c_says_how_to_resume(
    cli: Cli, hosts: Hosts, script: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "follow_jobs", interrupted)
    done = await cli("run", "ws-2", script, "--ttl", "30m")
    assert done.code == 130
    [job_id] = await hosts.jobs_of("ws-2")
    assert "host ws-2 is offline; the job waits as pending until 20" in done.stderr
    assert "Stopped following; the jobs keep going." in done.stderr
    assert f"tether job show {job_id}" in done.stderr
    assert (await hosts.platform.jobs.get(job_id)).state == "queued"


async def test_a_broken_connection_is_retried(cli: Cli, hosts: Hosts, script: str) -> None:
    hosts.online("ws-1")
    broken = {"left": 2}

    def break_twice(request: httpx.Request) -> None:
        if request.url.path.endswith("/output") and broken["left"]:
            broken["left"] -= 1
            raise httpx.ReadError("connection reset")

    cli.transport.before = break_twice
    running = asyncio.create_task(cli("run", "ws-1", script))
    [job_id] = await hosts.jobs_of("ws-1")
    await hosts.agent_runs("ws-1", job_id, [("stdout", "ok\n")], result={"exit_code": 0})
    done = await running
    assert done.code == 0, done.stderr
    assert done.stdout == "ok\n"
    assert broken["left"] == 0


async def test_an_unknown_library_script_is_one_sentence(cli: Cli, hosts: Hosts) -> None:
    done = await cli("run", "ws-1", "--script", "triage")
    assert done.code == 1
    assert done.stderr == "tether: No script is named 'triage'.\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ws-1", "{script}", "--param", "oops"], "--param 'oops' is not name=value"),
        (["ws-1", "{script}", "--ttl", "7w"], "'7w' is not a duration like 30m, 24h or 7d."),
        (["ws-1", "{script}", "--not-after", "2030-01-01T08:00"], "is not a time with a zone"),
        (["ws-1", "{script}", "--not-after", "soon"], "'soon' is not a time with a zone"),
        (["{script}"], "Name hosts, --segment S or --all: exactly one of them."),
        (["ws-1", "{script}", "--all"], "Name hosts, --segment S or --all: exactly one of them."),
        ([], "Give the script file after the hosts, or --script NAME."),
        (["ws-1", "/nonexistent/x.ps1"], "Cannot read the script file /nonexistent/x.ps1"),
    ],
)
async def test_bad_values_are_one_sentence_usage_errors(
    cli: Cli, hosts: Hosts, script: str, args: list[str], message: str
) -> None:
    done = await cli("run", *(a.replace("{script}", script) for a in args))
    assert done.code == 2
    assert done.stderr.startswith("tether: ")
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
    assert await hosts.platform.jobs.find() == []


async def test_the_platform_refusal_is_one_sentence(cli: Cli, hosts: Hosts, script: str) -> None:
    done = await cli("run", "ws-off", script)
    assert done.code == 1
    assert done.stderr == (
        "tether: Active Response is off in segment default, "
        "so response actions on ws-off are refused.\n"
    )


async def test_run_csv_writes_rows_only_and_names_hosts_sharing_a_name_by_id(
    cli: Cli, hosts: Hosts, script: str
) -> None:
    first = hosts.ids["ws-1"]
    twin = await add_host(hosts.platform.engine, "ws-1", segment="lab")  # re-imaged
    hosts.ids["ws-1 twin"] = twin
    hosts.online("ws-1")
    hosts.online("ws-1 twin")
    running = asyncio.create_task(cli("run", first, twin, script, "--csv"))
    [one] = await hosts.jobs_of("ws-1")
    [two] = await hosts.jobs_of("ws-1 twin")
    await hosts.agent_runs(
        "ws-1",
        one,
        [("stdout", "hello\n"), ("row", {"name": "svc", "pid": 4})],
        result={"exit_code": 0},
    )
    await hosts.agent_runs(
        "ws-1 twin",
        two,
        [("row", {"name": "=cmd|' /c calc'!A0", "pid": 5})],
        result={"exit_code": 0},
    )
    done = await running

    assert done.code == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header == "host,name,pid"
    # A spreadsheet formula from the endpoint stays text (a leading apostrophe).
    assert sorted(rows) == sorted([f"ws-1 ({first}),svc,4", f"ws-1 ({twin}),'=cmd|' /c calc'!A0,5"])
    # The scripts' own output goes to stderr, so stdout is the CSV alone.
    assert f"[ws-1 ({first})] hello\n" in done.stderr
    assert f"ws-1 ({twin}): succeeded, exit code 0\n" in done.stderr


async def test_run_csv_goes_without_json(cli: Cli, hosts: Hosts, script: str) -> None:
    refused = await cli("run", "ws-1", script, "--csv", "--json")
    assert refused.code == 2
    assert "--csv prints the rows when the runs end" in refused.stderr
