"""`tether agent upgrade`: send a signed agent bundle to hosts, a few at a time, and follow it.

The bundle archive goes into the file library first (streamed), then the platform signs it,
records the request and sends it over each agent's own connection (docs/adr/0051).
"""

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.client import Api, StepUpOpt
from tether.cli.errors import CliError, UsageError
from tether.cli.files import upload
from tether.cli.output import console, emit_json, one_line

# Seconds between looks at a rollout being followed.
POLL_SECONDS = 2.0


def _selection(segment: str | None, hosts: str | None) -> dict[str, Any]:
    if (segment is None) == (hosts is None):
        raise UsageError("Name the hosts to upgrade with exactly one of --segment and --hosts.")
    if hosts is not None:
        names = [h.strip() for h in hosts.split(",") if h.strip()]
        if not names:
            raise UsageError("--hosts needs at least one host id or hostname.")
        return {"hosts": names}
    return {"segment": segment}


def _print_host(host: dict[str, Any], version: str) -> None:
    outcome = host["outcome"]
    said = {
        "upgraded": f"upgraded to {version}",
        "rolled back": "rolled back",
        "refused": "refused",
    }.get(outcome, outcome)
    error = f": {one_line(host['error'])}" if host.get("error") and outcome != "upgraded" else ""
    console.print(f"{one_line(host['hostname'])}: {said}{error}", markup=False, highlight=False)


def follow(api: Api, rollout: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Print each host's outcome as it ends; returns the rollout once every host has one."""
    shown: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        for host in rollout["hosts"]:
            if host["outcome"] is not None and host["host_id"] not in shown:
                shown.add(host["host_id"])
                _print_host(host, rollout["version"])
        if all(h["outcome"] is not None for h in rollout["hosts"]):
            return rollout
        if time.monotonic() > deadline:
            raise CliError(
                f"The upgrade {rollout['id']} is still going after {timeout:g} s; follow it "
                "with 'tether agent upgrade --show ID'."
            )
        time.sleep(POLL_SECONDS)
        rollout = api.get(f"/agent-upgrades/{rollout['id']}")


def upgrade(
    bundle: Annotated[
        Path | None,
        typer.Option(help="Bundle archive from 'tether agent upgrade-bundle' (.tar.gz)."),
    ] = None,
    segment: Annotated[str | None, typer.Option(help="Upgrade every host of this segment.")] = None,
    hosts: Annotated[
        str | None, typer.Option(help="Comma-separated host ids or hostnames to upgrade.")
    ] = None,
    max_parallel: Annotated[
        int, typer.Option(help="At most this many hosts upgrading at once.")
    ] = 1,
    wait: Annotated[bool, typer.Option(help="Follow the rollout until every host ended.")] = True,
    timeout: Annotated[float, typer.Option(help="How long to follow it, in seconds.")] = 3600.0,
    show: Annotated[str | None, typer.Option(help="Show an earlier upgrade by its id.")] = None,
    code: StepUpOpt = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send a signed agent bundle to hosts over their own connections, N at a time; each agent
    verifies it, restarts into it, and rolls back by itself if it does not connect in 60 s."""
    api = Api.from_profile(step_up_code=code)
    if show is not None:
        rollout: dict[str, Any] = api.get(f"/agent-upgrades/{show}")
    else:
        if bundle is None:
            raise UsageError("Give the bundle archive with --bundle (or --show ID).")
        body = {**_selection(segment, hosts), "max_parallel": max_parallel}
        entry = upload(api, bundle)
        rollout = api.post("/agent-upgrades", json={**body, "sha256": entry["sha256"]})
        if not json_output:
            console.print(
                f"Upgrade {rollout['id']}: version {one_line(rollout['version'])} to "
                f"{len(rollout['hosts'])} host(s), at most {rollout['max_parallel']} at a time.",
                markup=False,
                highlight=False,
            )
    if wait:
        rollout = (
            follow(api, rollout, timeout) if not json_output else _quiet(api, rollout, timeout)
        )
    if json_output:
        emit_json(rollout)
    elif not wait:
        for host in rollout["hosts"]:
            if host["outcome"] is not None:
                _print_host(host, rollout["version"])
    if wait and any(h["outcome"] != "upgraded" for h in rollout["hosts"]):
        raise typer.Exit(1)


def _quiet(api: Api, rollout: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not all(h["outcome"] is not None for h in rollout["hosts"]):
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
        rollout = api.get(f"/agent-upgrades/{rollout['id']}")
    return rollout
