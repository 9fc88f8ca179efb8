"""`tether hosts`, `tether host show|revoke|move|access`, `tether ping`."""

from typing import Annotated, Any
from urllib.parse import quote

import typer

from tether.cli.client import Api
from tether.cli.isolation import isolation_column
from tether.cli.output import console, emit_json, one_line, plain, table
from tether.cli.times import short_time
from tether.protocol import PROTOCOL_VERSION

HOST_COLUMNS = [
    ("id", "ID"),
    ("hostname", "Hostname"),
    ("os", "OS"),
    ("addresses", "Addresses"),
    ("segment", "Segment"),
    ("online", "Online"),
    ("last_seen", "Last seen"),
    ("agent_version", "Agent"),
    ("response_disabled_locally", "Response off locally"),
    ("isolation", "Isolation"),
]

NODE_COLUMN = ("node", "Node")

host_app = typer.Typer(
    help="One host: show, revoke, move to a segment, check response access.", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def agent_column(host: dict[str, Any]) -> str:
    """The agent's version, and its protocol version when older than this Tether's (an agent
    still to upgrade: the platform serves it the previous version's messages)."""
    version = host.get("protocol_version")
    if isinstance(version, int) and version < PROTOCOL_VERSION:
        return f"{host['agent_version']} (protocol {version})"
    return str(host["agent_version"])


def _row(host: dict[str, Any]) -> dict[str, Any]:
    state = "revoked" if host["revoked"] else host["online"]
    return {
        **host,
        "os": f"{host['os_name']} {host['os_version']}".strip(),
        "online": state,
        "last_seen": short_time(host.get("last_seen")),
        "agent_version": agent_column(host),
        "isolation": isolation_column(host),
    }


def list_hosts(json_output: JsonOpt = False) -> None:
    """List enrolled hosts: id, hostname, OS, addresses, segment, online, last seen, agent,
    and whether the endpoint switched response actions off locally."""
    hosts = Api.from_profile().get("/hosts")
    if json_output:
        emit_json(hosts)
    elif any(h.get("node") for h in hosts):
        # A platform of several nodes: which one holds each agent.
        at = HOST_COLUMNS.index(("online", "Online")) + 1
        table([_row(h) for h in hosts], [*HOST_COLUMNS[:at], NODE_COLUMN, *HOST_COLUMNS[at:]])
    else:
        table([_row(h) for h in hosts], HOST_COLUMNS)


@host_app.command("show")
def show(host: str, json_output: JsonOpt = False) -> None:
    """Show one host by id or hostname."""
    found = Api.from_profile().get(f"/hosts/{host}")
    if json_output:
        emit_json(found)
    else:
        for key, value in found.items():
            if key == "isolation":
                value = isolation_column(found)
            console.print(f"{key:15} {plain(value)}", markup=False)
        failed = (found.get("isolation") or {}).get("failed")
        if failed:
            console.print(f"{'':15} {one_line(failed)}", markup=False)


@host_app.command("revoke")
def revoke(host: str, json_output: JsonOpt = False) -> None:
    """Refuse the host's certificate from now on and close its live connection."""
    found = Api.from_profile().post(f"/hosts/{host}/revoke")
    if json_output:
        emit_json(found)
    else:
        console.print(f"Revoked {plain(found['hostname'])} ({found['id']}).", markup=False)


@host_app.command("move")
def move(host: str, segment: str, json_output: JsonOpt = False) -> None:
    """Put a host into another segment; its agent gets that segment's Active Response switch."""
    found = Api.from_profile().post(
        f"/hosts/{quote(host, safe='')}/move", json={"segment": segment}
    )
    if json_output:
        emit_json(found)
    else:
        console.print(
            f"Host {plain(found['hostname'])} ({found['id']}) is in segment "
            f"{plain(found['segment'])}.",
            markup=False,
        )


@host_app.command("access")
def access(host: str) -> None:
    """Say whether you may run response actions on the host now, and why not if not."""
    api = Api.from_profile()
    api.get(f"/hosts/{quote(host, safe='')}/response-access")
    console.print(f"You may run response actions on {plain(host)} now.", markup=False)


def ping(
    hosts: Annotated[list[str] | None, typer.Argument(help="Hosts (default: all online).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for answers.")] = 10.0,
    json_output: JsonOpt = False,
) -> None:
    """Round-trip a no-op to hosts and report who answered."""
    api = Api.from_profile()
    report = api.post("/hosts/ping", json={"hosts": hosts or None, "timeout_seconds": timeout})
    if json_output:
        emit_json(report)
    else:
        console.print(
            f"{report['answered']} of {report['asked']} answered in {report['seconds']:.2f} s.",
            markup=False,
        )
        names = {h["id"]: h["hostname"] for h in api.get("/hosts")}
        rows = [
            {"hostname": names.get(i, "?"), "id": i, "answer": f"{ms:.1f} ms"}
            for i, ms in sorted(report.get("round_trip_ms", {}).items(), key=lambda t: t[1])
        ] + [
            {"hostname": names.get(i, "?"), "id": i, "answer": reason}
            for i, reason in sorted(report["failed"].items())
        ]
        if rows:
            table(rows, [("hostname", "Host"), ("id", "ID"), ("answer", "Round trip")])
    if report["failed"]:
        raise typer.Exit(1)
