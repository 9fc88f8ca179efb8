"""`tether ps` and `tether kill` against a platform in process."""

import asyncio
import json

from tether.protocol import ProcessList

from .conftest import Cli, Hosts

# A processes.list result as the real declaration has it. The agent escapes control characters
# (the protocol refuses them), so what is left to the CLI is markup and width.
PROCESSES = {
    "processes": [
        {
            "pid": 812,
            "ppid": 4,
            "name": "evil\\x1b]0;pwned.exe",
            "user": "SYSTEM",
            "command_line": "C:\\evil.exe --flag " + "x" * 300,
            "started": "2030-01-01T10:00:00+00:00",
            "executable": "C:\\evil.exe",
            "sha256": "ab" * 32,
        },
        {
            "pid": 4,
            "ppid": 0,
            "name": "[bold]System[/bold]",
            "user": "SYSTEM",
            "command_line": None,
            "started": None,
            "executable": None,
            "hash_unavailable": "no executable",
        },
    ],
    "truncated": True,
}


async def test_ps_prints_a_table_of_processes(cli: Cli, hosts: Hosts) -> None:
    hosts.online("ws-1")
    running = asyncio.create_task(cli("ps", "ws-1", "--hashes", "--name", "evil", columns=120))
    [job_id] = await hosts.jobs_of("ws-1")
    assert (await hosts.platform.jobs.get(job_id)).args == {
        "hashes": True,
        "name": "evil",
        "pid": None,
        "user": None,
    }
    await hosts.agent_runs("ws-1", job_id, result=PROCESSES)
    done = await running
    assert done.code == 0, done.stderr
    out = done.stdout
    assert "evil\\x1b]0;pwned.exe" in out
    assert "[bold]System[/bold]" in out  # shown as typed, never read as markup
    assert "C:\\evil.exe --f" in out
    assert "x" * 300 not in out
    assert "…" in out
    assert max(len(line) for line in out.splitlines()) <= 120
    assert out.index("│ 4 ") < out.index("│ 812 ")  # by pid
    assert "2030-01-01" in out
    assert "no executable" in out
    assert "only part of the processes" in done.stderr

    as_json = json.loads((await cli("job", "show", job_id, "--json")).stdout)
    assert as_json["job"]["result"]["truncated"] is True


async def test_ps_json_is_the_result(cli: Cli, hosts: Hosts) -> None:
    hosts.online("ws-1")
    running = asyncio.create_task(cli("ps", "ws-1", "--json"))
    [job_id] = await hosts.jobs_of("ws-1")
    await hosts.agent_runs("ws-1", job_id, result=PROCESSES)
    done = await running
    assert done.code == 0
    # As stored: validated against the declaration, its defaults filled in.
    assert json.loads(done.stdout) == ProcessList.model_validate(PROCESSES).model_dump(mode="json")
    assert (await hosts.platform.jobs.get(job_id)).args == {
        "hashes": False,
        "name": None,
        "pid": None,
        "user": None,
    }


async def test_ps_failure_is_one_sentence(cli: Cli, hosts: Hosts) -> None:
    hosts.online("ws-1")
    running = asyncio.create_task(cli("ps", "ws-1"))
    [job_id] = await hosts.jobs_of("ws-1")
    await hosts.agent_runs("ws-1", job_id, state="failed", error="Access denied.")
    done = await running
    assert done.code == 1
    assert done.stderr == "tether: processes.list on ws-1 ended failed: Access denied.\n"


async def test_kill_prints_the_outcomes(cli: Cli, hosts: Hosts) -> None:
    hosts.online("ws-1")
    running = asyncio.create_task(cli("kill", "ws-1", "812", "--tree"))
    [job_id] = await hosts.jobs_of("ws-1")
    assert (await hosts.platform.jobs.get(job_id)).args == {"pid": 812, "tree": True}
    await hosts.agent_runs(
        "ws-1",
        job_id,
        result={
            "pid": 812,
            "processes": [
                {"pid": 812, "name": "evil.exe", "outcome": "killed"},
                {"pid": 813, "name": None, "outcome": "gone"},
            ],
            "truncated": False,
        },
    )
    done = await running
    assert done.code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("812" in line and "evil.exe" in line and "killed" in line for line in lines)
    assert any("813" in line and "gone" in line for line in lines)


async def test_kill_refuses_a_bad_pid(cli: Cli, hosts: Hosts) -> None:
    done = await cli("kill", "ws-1", "zero")
    assert done.code == 2
    assert await hosts.platform.jobs.find() == []
