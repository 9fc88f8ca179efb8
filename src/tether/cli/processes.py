"""`tether ps` and `tether kill`: one action on one host, waited for, its result shown.

The result shapes come from the actions' declarations; whatever this module does not recognise
is still shown (as JSON), so a small change in a result never hides it.
"""

import sys
from typing import Annotated, Any

import typer

from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.follow import Job, offline_notices, submit, wait_for_job
from tether.cli.jobs import pretty
from tether.cli.output import console, emit_json, one_line, plain, table
from tether.cli.run import StreamPrinter
from tether.cli.times import short_time
from tether.protocol.action_names import PROCESSES_KILL, PROCESSES_LIST

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
HostArg = Annotated[str, typer.Argument(metavar="HOST", help="Host id or hostname.")]

LIST_ACTION = PROCESSES_LIST
KILL_ACTION = PROCESSES_KILL
_PROCESS_KEYS = {"processes", "truncated"}


def run_on_host(api: Api, action: str, args: dict[str, Any], host: str) -> Job:
    """Submit `action` to one host and wait for its end; an unsuccessful end is a CliError."""
    batch = submit(api, action, args, hosts=[host])
    for notice in offline_notices(api, batch["jobs"]):
        sys.stderr.write(notice + "\n")
    job_id = batch["jobs"][0]["id"]
    # Logs and notices of the action go to stderr; its result is what this command prints.
    printer = StreamPrinter(prefixed=False)
    try:
        job = wait_for_job(api, job_id, printer.piece)
    except KeyboardInterrupt:
        sys.stderr.write(
            f"Stopped waiting; the job keeps going. Resume with: tether job show {job_id}\n"
        )
        raise typer.Exit(130) from None
    printer.end(job)
    if job["state"] != "succeeded":
        why = f": {one_line(job['error']).rstrip('.')}" if job.get("error") else ""
        raise CliError(f"{action} on {plain(host)} ended {job['state']}{why}.")
    return job


def print_processes(result: dict[str, Any], *, hashes: bool) -> None:
    """The process table of a processes.list result, then anything else it holds."""
    processes = result.get("processes")
    if isinstance(processes, list) and all(isinstance(p, dict) for p in processes):
        rows = [
            {
                **p,
                "started": short_time(p.get("started")),
                "sha256": p.get("sha256") or p.get("hash_unavailable") or "",
            }
            for p in sorted(processes, key=_pid_order)
        ]
        columns = [
            ("pid", "PID"),
            ("ppid", "PPID"),
            ("user", "User"),
            ("name", "Name"),
            ("started", "Started"),
            ("command_line", "Command line"),
        ]
        if hashes:
            columns.append(("sha256", "Exe SHA-256"))
        table(rows, columns, truncate={"command_line"})
    else:
        print_generic({"processes": processes})
    if result.get("truncated"):
        sys.stderr.write("The agent listed only part of the processes (it hit its limit).\n")
    print_generic({k: v for k, v in result.items() if k not in _PROCESS_KEYS})


def print_kill(result: dict[str, Any]) -> None:
    """What happened to each process of a processes.kill result, then anything else it holds."""
    processes = result.get("processes")
    if isinstance(processes, list) and all(isinstance(p, dict) for p in processes):
        table(processes, [("pid", "PID"), ("name", "Name"), ("outcome", "Outcome")])
    else:
        print_generic({"processes": processes})
    if result.get("truncated"):
        sys.stderr.write("Some descendants were killed but are not listed (result too large).\n")
    print_generic({k: v for k, v in result.items() if k not in {"pid", *_PROCESS_KEYS}})


def _pid_order(process: dict[str, Any]) -> tuple[int, str]:
    pid = process.get("pid")
    return (pid, "") if isinstance(pid, int) else (sys.maxsize, str(pid))


def print_generic(values: dict[str, Any]) -> None:
    """Keys with scalar values as 'key: value', the rest as indented JSON."""
    for key, value in values.items():
        if isinstance(value, dict | list):
            console.print(f"{plain(key)}:", markup=False)
            console.out(pretty(value), highlight=False)
        else:
            console.print(f"{plain(key)}: {plain(value)}", markup=False, highlight=False)


def ps(
    host: HostArg,
    hashes: Annotated[
        bool, typer.Option("--hashes", help="Also the SHA-256 of each executable.")
    ] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Only processes with this name.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """List the processes of a host: pid, ppid, user, name, start time, command line."""
    args: dict[str, Any] = {"hashes": hashes}
    if name is not None:
        args["name"] = name
    job = run_on_host(Api.from_profile(), LIST_ACTION, args, host)
    result = job.get("result") or {}
    if json_output:
        emit_json(result)
    else:
        print_processes(result, hashes=hashes)


def kill(
    host: HostArg,
    pid: Annotated[int, typer.Argument(metavar="PID", min=1, help="The process to end.")],
    tree: Annotated[bool, typer.Option("--tree", help="Its descendants too.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """End a process (and with --tree its descendants) on a host; prints what happened to each."""
    job = run_on_host(Api.from_profile(), KILL_ACTION, {"pid": pid, "tree": tree}, host)
    result = job.get("result") or {}
    if json_output:
        emit_json(result)
    else:
        print_kill(result)
