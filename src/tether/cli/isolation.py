"""`tether isolate`, `tether unisolate` and `tether isolation allowlist`.

Isolating waits for the hosts that are online and says, for each host, what now holds; offline
hosts stay `isolation pending` until they return, which `tether hosts` shows.
"""

import sys
from typing import Annotated, Any

import typer

from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.follow import Job, approval_notice, follow_jobs
from tether.cli.output import console, emit_json, one_line, plain, table
from tether.cli.times import short_time
from tether.protocol import AWAITING_APPROVAL
from tether.protocol.isolation import IsolationMode

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
HostsArg = Annotated[
    list[str] | None, typer.Argument(metavar="HOST...", help="Host ids or hostnames.")
]
SegmentOpt = Annotated[str | None, typer.Option("--segment", help="Every host of this segment.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every enrolled host.")]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Return once queued, without waiting for online hosts.")
]

isolation_app = typer.Typer(
    help="What every isolation keeps reachable besides the platform.", no_args_is_help=True
)
allowlist_app = typer.Typer(
    help="The allowlist: networks, optionally ports, an isolated host may still reach.",
    no_args_is_help=True,
)
isolation_app.add_typer(allowlist_app, name="allowlist")


def _body(hosts: list[str] | None, segment: str | None, everything: bool) -> dict[str, Any]:
    chosen = sum((bool(hosts), segment is not None, everything))
    if chosen != 1:
        raise CliError("Name hosts, or give --segment or --all (exactly one of them).")
    if hosts:
        return {"hosts": hosts}
    if segment is not None:
        return {"segment": segment}
    return {"all": True}


def _describe(job: Job, pending: str, done: str, online: set[str]) -> str:
    name = plain(job["hostname"])
    state = job["state"]
    if state == "succeeded":
        return f"{name}: {done}"
    if state == AWAITING_APPROVAL:
        return f"{name}: awaiting a second person's approval (job {job['id']})"
    if state in {"queued", "delivered", "running"}:
        if job["host_id"] in online:
            return f"{name}: {pending} (the host has it; 'tether hosts' shows when it is done)"
        return f"{name}: {pending} (the host is offline; it is applied when the host returns)"
    reason = one_line(job.get("error") or f"the job ended {state}").rstrip(".")
    return f"{name}: failed: {reason}."


def _request(
    path: str,
    body: dict[str, Any],
    *,
    pending: str,
    done: str,
    wait: bool,
    json_output: bool,
) -> None:
    api = Api.from_profile()
    batch = api.post(path, json=body)
    for host, reason in batch.get("refused", {}).items():
        sys.stderr.write(f"host {plain(host)} refused: {one_line(reason)}\n")
    if batch.get("notice"):
        sys.stderr.write(approval_notice(batch) + "\n")
    jobs: dict[str, Job] = {job["id"]: job for job in batch["jobs"]}
    online = {h["id"] for h in api.get("/hosts") if h.get("online")}
    if wait:
        waited = [
            j["id"]
            for j in jobs.values()
            if j["host_id"] in online and j["state"] != AWAITING_APPROVAL
        ]
        try:
            jobs.update(follow_jobs(api, waited, lambda _job, _piece: None))
        except KeyboardInterrupt:
            sys.stderr.write(
                f"Stopped waiting; the requests keep going. See: tether jobs --batch {batch['id']}\n"
            )
            raise typer.Exit(130) from None
    if json_output:
        emit_json({**batch, "jobs": list(jobs.values())})
    else:
        for job in jobs.values():
            console.print(_describe(job, pending, done, online), markup=False, highlight=False)
    if any(
        j["state"] not in {"succeeded", AWAITING_APPROVAL, "queued", "delivered", "running"}
        for j in jobs.values()
    ):
        raise typer.Exit(1)


def isolate(
    hosts: HostsArg = None,
    segment: SegmentOpt = None,
    everything: AllOpt = False,
    mode: Annotated[
        IsolationMode,
        typer.Option(
            "--mode",
            help="outbound: block outbound traffic except to the platform and the allowlist, "
            "keep inbound; full: block new inbound connections too.",
        ),
    ] = IsolationMode.OUTBOUND,
    no_wait: NoWaitOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Isolate hosts from the network; they stay connected to the platform."""
    body = {**_body(hosts, segment, everything), "mode": mode.value}
    _request(
        "/isolation/isolate",
        body,
        pending="isolation pending",
        done=f"isolated ({mode.value})",
        wait=not no_wait,
        json_output=json_output,
    )


def unisolate(
    hosts: HostsArg = None,
    segment: SegmentOpt = None,
    everything: AllOpt = False,
    no_wait: NoWaitOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Release hosts from isolation: the isolation rules are removed whole."""
    _request(
        "/isolation/release",
        _body(hosts, segment, everything),
        pending="unisolation pending",
        done="released",
        wait=not no_wait,
        json_output=json_output,
    )


def parse_entry(entry: str) -> dict[str, Any]:
    """`10.0.0.0/8`, `192.0.2.53:53,123`, `[2001:db8::/32]:443` -> an allowlist rule."""
    network, ports = entry, ""
    if entry.startswith("["):
        network, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise CliError(f"Allowlist entry {entry!r} should read [NETWORK] or [NETWORK]:PORTS.")
        ports = rest[1:]
    elif entry.count(":") == 1:
        network, _, ports = entry.partition(":")
    rule: dict[str, Any] = {"cidr": network}
    if ports:
        try:
            rule["ports"] = [int(p) for p in ports.split(",")]
        except ValueError:
            raise CliError(
                f"Allowlist entry {entry!r} has ports that are not numbers; write them like "
                "10.0.0.5:53,123."
            ) from None
    return rule


def _print_rules(rules: list[dict[str, Any]]) -> None:
    if not rules:
        console.print("The allowlist is empty: isolated hosts reach the platform alone.")
        return
    table(
        [{"cidr": r["cidr"], "ports": ",".join(map(str, r["ports"])) or "all"} for r in rules],
        [("cidr", "Network"), ("ports", "Ports")],
    )


@allowlist_app.command("show")
def show_allowlist(json_output: JsonOpt = False) -> None:
    """Show the allowlist isolations use."""
    rules = Api.from_profile().get("/isolation/allowlist")
    if json_output:
        emit_json(rules)
    else:
        _print_rules(rules)


@allowlist_app.command("set")
def set_allowlist(
    entries: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ENTRY...",
            help="NETWORK, NETWORK:PORTS (IPv4) or [NETWORK]:PORTS (IPv6), e.g. 10.0.0.0/8, "
            "192.0.2.53:53 or [2001:db8::/32]:443,8443.",
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Empty the allowlist.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Replace the allowlist (admins); isolated hosts take it up at once, offline ones on return."""
    if bool(entries) == clear:
        raise CliError("Give the allowlist's entries, or --clear to empty it.")
    rules = [parse_entry(entry) for entry in entries or []]
    saved = Api.from_profile().put("/isolation/allowlist", json={"rules": rules})
    if json_output:
        emit_json(saved)
    else:
        _print_rules(saved)


def isolation_column(host: dict[str, Any]) -> str:
    """The inventory's one-cell summary of a host's isolation."""
    isolation = host.get("isolation") or {}
    state = str(isolation.get("state") or "not isolated")
    if state == "isolated":
        since = short_time(isolation.get("since"))
        state = f"isolated ({isolation.get('mode')}, since {since}, by {isolation.get('by')})"
    elif state == "isolation pending" and isolation.get("mode"):
        state = f"isolation pending ({isolation.get('mode')})"
    if isolation.get("reported_by_endpoint"):
        state += " (as the endpoint reports)"
    if isolation.get("failed"):
        state += "; last request failed"
    return state
