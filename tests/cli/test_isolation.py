"""`tether isolate`, `unisolate`, the inventory's isolation column and the allowlist, against a
platform in process and a fake agent."""

import asyncio
import json

import pytest

from tether.cli.errors import CliError
from tether.cli.isolation import parse_entry

from .conftest import Cli, Hosts

STATUS = {"isolated": True, "mode": "full", "backend": "nftables", "platform": ["192.0.2.1"]}


async def test_isolate_waits_for_online_hosts_and_leaves_offline_ones_pending(
    cli: Cli, hosts: Hosts
) -> None:
    hosts.online("ws-1")
    running = asyncio.create_task(cli("isolate", "ws-1", "ws-2", "--mode", "full"))
    job_ids = await hosts.jobs_of("ws-1")
    await hosts.agent_runs("ws-1", job_ids[0], result=STATUS)
    done = await running
    assert done.code == 0, done.stderr
    assert "ws-1: isolated (full)" in done.stdout
    assert "ws-2: isolation pending (the host is offline" in done.stdout

    listed = {h["hostname"]: h for h in json.loads((await cli("hosts", "--json")).stdout)}
    assert listed["ws-1"]["isolation"]["state"] == "isolated"
    assert listed["ws-1"]["isolation"]["by"] == "admin"
    assert listed["ws-2"]["isolation"]["state"] == "isolation pending"
    table = (await cli("hosts", columns=250)).stdout
    assert "isolated (full, since" in table
    assert "isolation pending (full)" in table


async def test_a_failed_isolation_exits_non_zero_with_the_reason(cli: Cli, hosts: Hosts) -> None:
    hosts.online("ws-1")
    running = asyncio.create_task(cli("isolate", "ws-1"))
    (job_id,) = await hosts.jobs_of("ws-1")
    await hosts.agent_runs(
        "ws-1",
        job_id,
        state="failed",
        error="The platform was unreachable through the new rules; nothing was changed.",
    )
    done = await running
    assert done.code == 1
    assert "ws-1: failed: The platform was unreachable through the new rules" in done.stdout
    shown = (await cli("host", "show", "ws-1")).stdout
    assert "not isolated; last request failed" in shown
    assert "The request to isolate the host failed" in shown


async def test_unisolate_and_refusals(cli: Cli, hosts: Hosts) -> None:
    done = await cli("unisolate", "ws-1", "--no-wait")
    assert done.code == 0, done.stderr
    assert "ws-1: unisolation pending" in done.stdout
    refused = await cli("isolate", "ws-off")
    assert refused.code == 1
    assert "Active Response" in refused.stderr
    neither = await cli("isolate")
    assert neither.code == 1
    assert (
        neither.stderr.strip()
        == "tether: Name hosts, or give --segment or --all (exactly one of them)."
    )


async def test_the_allowlist_is_set_shown_and_sent_with_isolations(cli: Cli, hosts: Hosts) -> None:
    done = await cli(
        "isolation", "allowlist", "set", "10.0.0.0/8", "192.0.2.53:53,123", "[2001:db8::/32]:443"
    )
    assert done.code == 0, done.stderr
    shown = json.loads((await cli("isolation", "allowlist", "show", "--json")).stdout)
    assert shown == [
        {"cidr": "10.0.0.0/8", "ports": []},
        {"cidr": "192.0.2.53/32", "ports": [53, 123]},
        {"cidr": "2001:db8::/32", "ports": [443]},
    ]
    await cli("isolate", "ws-2", "--no-wait")
    (job_id,) = await hosts.jobs_of("ws-2")
    args = (await hosts.platform.jobs.get(job_id)).args
    assert args is not None
    assert args["allow"] == shown
    bad = await cli("isolation", "allowlist", "set", "10.0.0.300/8")
    assert bad.code == 1
    assert "is not an IPv4 or IPv6 network" in bad.stderr
    cleared = await cli("isolation", "allowlist", "set", "--clear")
    assert "The allowlist is empty" in cleared.stdout


@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ("10.0.0.0/8", {"cidr": "10.0.0.0/8"}),
        ("10.0.0.5:53", {"cidr": "10.0.0.5", "ports": [53]}),
        ("2001:db8::1", {"cidr": "2001:db8::1"}),
        ("[2001:db8::/32]:443,8443", {"cidr": "2001:db8::/32", "ports": [443, 8443]}),
        ("[2001:db8::1]", {"cidr": "2001:db8::1"}),
    ],
)
def test_allowlist_entries_parse(entry: str, rule: dict[str, object]) -> None:
    assert parse_entry(entry) == rule


@pytest.mark.parametrize("entry", ["10.0.0.5:dns", "[2001:db8::1:443", "[::1]x"])
def test_bad_allowlist_entries_are_one_sentence(entry: str) -> None:
    with pytest.raises(CliError, match=r"^Allowlist entry .*\.$"):
        parse_entry(entry)
