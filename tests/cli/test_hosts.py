"""`tether host ...` takes the same host references as every other command (docs/adr/0045)."""

import json
import re

from sqlalchemy import update

from tether.cli.hosts import agent_column
from tether.protocol import OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION
from tether.server.services.nodes import ALIVE_WITHIN, Nodes
from tether.server.store.tables import hosts as host_rows

from ..server.support import add_host
from .conftest import Cli, Hosts


async def test_host_move_takes_the_id_prefix_tether_hosts_prints(cli: Cli, hosts: Hosts) -> None:
    host_id = hosts.ids["ws-off"]

    moved = await cli("host", "move", host_id[:8], "lab")

    assert moved.code == 0, moved.stderr
    assert moved.stdout.strip() == f"Host ws-off ({host_id}) is in segment lab."


async def test_a_revoked_twin_is_marked_and_leaves_the_name_to_the_live_host(
    cli: Cli, hosts: Hosts
) -> None:
    old = hosts.ids["ws-1"]
    assert (await cli("host", "revoke", "ws-1")).code == 0
    new = await add_host(hosts.platform.engine, "ws-1", segment="lab")

    shown = await cli("host", "show", "ws-1", "--json")
    assert shown.code == 0, shown.stderr
    assert f'"id": "{new}"' in shown.stdout
    listed = await cli("hosts")
    (old_line,) = [line for line in listed.stdout.splitlines() if old in line]
    assert "revoked" in old_line


async def test_ping_prints_each_hosts_round_trip_and_who_did_not_answer(
    cli: Cli, hosts: Hosts
) -> None:
    hosts.online("ws-1")

    pinged = await cli("ping", "ws-1", "ws-2")

    assert pinged.code == 1  # ws-2 is offline
    assert pinged.stdout.startswith("1 of 2 answered in ")
    (answered,) = [line for line in pinged.stdout.splitlines() if hosts.ids["ws-1"] in line]
    assert re.search(r"ws-1 .* \d+\.\d ms", answered), answered
    (offline,) = [line for line in pinged.stdout.splitlines() if hosts.ids["ws-2"] in line]
    assert "ws-2" in offline
    assert "offline" in offline
    report = json.loads((await cli("ping", "ws-1", "--json")).stdout)
    assert set(report["round_trip_ms"]) == {hosts.ids["ws-1"]}


def test_the_agent_column_names_hosts_still_on_the_previous_protocol() -> None:
    host = {"agent_version": "0.1.0", "protocol_version": OLDEST_PROTOCOL_VERSION}
    assert agent_column(host) == f"0.1.0 (protocol {OLDEST_PROTOCOL_VERSION})"
    assert agent_column({**host, "protocol_version": PROTOCOL_VERSION}) == "0.1.0"
    # Never connected yet, or a platform older than this CLI: the version alone.
    assert agent_column({"agent_version": ""}) == ""


async def test_the_hosts_table_has_a_node_column_only_on_a_platform_of_several_nodes(
    cli: Cli, hosts: Hosts
) -> None:
    # docs/adr/0050: one process shows no Node column; several name the node holding each host.
    single = await cli("hosts")
    assert single.code == 0, single.stderr
    assert "Node" not in single.stdout
    other = Nodes(hosts.platform.engine, "all", name="node-b")
    await other.join()
    async with hosts.platform.engine.begin() as conn:
        await conn.execute(
            update(host_rows).where(host_rows.c.id == hosts.ids["ws-1"]).values(node_id=other.id)
        )
    await hosts.platform.presence.refresh_remote(ALIVE_WITHIN)
    several = await cli("hosts")
    assert several.code == 0, several.stderr
    assert "Node" in several.stdout
    (line,) = [row for row in several.stdout.splitlines() if "node-b" in row]
    assert re.search(r"\bws-1\b", line), several.stdout
