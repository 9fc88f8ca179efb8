"""Segments end to end: the CLI changes a segment, the real agent hears its new policy.

This module runs its own platform: the shared one's audit chain is cut on purpose at the end of
test_platform.py.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import running_agent
from .harness import Agent, Children, Cli, Platform, host_by_id, log_events, wait_for, wait_online

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Cli, Children]]:
    root = tmp_path_factory.mktemp("segments-platform")
    children = Children(root / "logs")
    try:
        platform = Platform(root, children)
        platform.init()
        platform.start()
        admin = platform.login(root / "admin-cli")
        yield platform, admin, children
    finally:
        children.kill_all()


def policies_seen(agent: Agent) -> list[str]:
    assert agent.proc is not None
    return [
        str(e["event"])
        for e in log_events(agent.proc.output())
        if str(e.get("event", "")).startswith("Policy from the platform")
    ]


def wait_policy(agent: Agent, expected: str) -> None:
    """Wait until the agent's latest policy line is `expected`."""
    wait_for(
        lambda: (seen := policies_seen(agent)) and seen[-1] == expected,
        timeout=15,
        what=f"the agent to log {expected!r} (saw {policies_seen(agent)})",
    )


def segment(admin: Cli, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in admin.json("segment", "list") if s["name"] == name]
    assert len(found) == 1, found
    return found[0]


def test_switch_move_rename_and_delete_reach_the_agent(
    own: tuple[Platform, Cli, Children], tmp_path: Path
) -> None:
    platform, admin, children = own
    out = admin.ok("segment", "create", "lab")
    assert "Created. Segment lab: Active Response off, approval off, 0 host(s)." in out
    agent = running_agent(platform, admin, children, tmp_path / "agent", "lab")
    wait_policy(agent, "Policy from the platform: segment lab, Active Response off")

    switched = admin.json("segment", "set", "lab", "--active-response", "on")
    assert (switched["name"], switched["active_response"], switched["hosts"]) == ("lab", True, 1)
    wait_policy(agent, "Policy from the platform: segment lab, Active Response on")

    # The first admin also holds the Active Response role and logged in with its second factor:
    # with the switch on it may act on the host.
    allowed = admin.run("host", "access", agent.host_id)
    assert allowed.returncode == 0, allowed.stderr
    assert f"You may run response actions on {agent.host_id} now." in allowed.stdout

    admin.ok("segment", "create", "quarantine")
    moved = admin.json("host", "move", agent.host_id, "quarantine")
    assert moved["segment"] == "quarantine"
    wait_policy(agent, "Policy from the platform: segment quarantine, Active Response off")

    # Moved into a segment whose switch is off, the same user is refused, with the reason.
    refused = admin.run("host", "access", agent.host_id)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith(
        "tether: Active Response is off in segment quarantine, so response actions on "
    )

    refused = admin.run("segment", "delete", "quarantine")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "tether: Segment 'quarantine' still holds 1 host; "
        "move them to another segment before deleting it."
    )

    admin.ok("segment", "rename", "quarantine", "isolated")
    wait_policy(agent, "Policy from the platform: segment isolated, Active Response off")
    assert segment(admin, "isolated")["hosts"] == 1
    assert segment(admin, "lab") == {**segment(admin, "lab"), "hosts": 0, "active_response": True}

    assert "Deleted segment lab." in admin.ok("segment", "delete", "lab")
    assert "lab" not in [s["name"] for s in admin.json("segment", "list")]

    # Every change is in the audit log, with who did it.
    records = admin.json("audit", "list", "--limit", "1000")
    changes = [(r["action"], r["actor"], r["target"]) for r in records if r["actor"] == "admin"]
    for expected in [
        ("segment.create", "admin", "segment:lab"),
        ("segment.active_response", "admin", "segment:lab"),
        ("host.move", "admin", f"host:{agent.host_id}"),
        ("segment.rename", "admin", "segment:isolated"),
        ("segment.delete", "admin", "segment:lab"),
    ]:
        assert expected in changes
    # The agent stayed connected through all of it.
    assert agent.proc is not None
    assert agent.proc.alive()


def test_local_switch_shows_in_the_inventory(
    own: tuple[Platform, Cli, Children], tmp_path: Path
) -> None:
    platform, admin, children = own
    agent = running_agent(platform, admin, children, tmp_path / "agent")
    assert admin.json("host", "show", agent.host_id)["response_disabled_locally"] is False

    # The endpoint owner switches response actions off with a file, then restarts the agent.
    assert agent.proc is not None
    agent.proc.popen.terminate()
    agent.proc.wait(timeout=10)
    with admin.api() as api:
        wait_online(api, agent.host_id, online=False, timeout=30)
    (tmp_path / "agent" / "disable-active-response").touch()
    agent.start()
    with admin.api() as api:
        wait_for(
            lambda: (
                (host := host_by_id(api, agent.host_id))
                and host["online"]
                and host["response_disabled_locally"]
            ),
            timeout=20,
            what="the inventory to show the local switch",
        )
    listed = [h for h in admin.json("hosts") if h["id"] == agent.host_id]
    assert listed[0]["response_disabled_locally"] is True
    table = admin.ok("hosts")
    assert "Response off locally" in table
    assert "Response actions are switched off locally on this endpoint" in agent.proc.output()


def test_refusals_say_why_and_exit_non_zero(own: tuple[Platform, Cli, Children]) -> None:
    _, admin, _ = own
    cases = [
        (
            ("segment", "set", "nowhere", "--active-response", "on"),
            "No segment is named 'nowhere'.",
        ),
        (("segment", "create", "bad/name"), "A segment name is 1 to 64"),
        (("host", "move", "no-such-host", "default"), "No host has the id or hostname"),
        (("segment", "rename", "default", "default"), "already has that name"),
    ]
    for args, reason in cases:
        result = admin.run(*args)
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr.startswith("tether: "), result.stderr
        assert reason in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    bad_switch = admin.run("segment", "set", "default", "--active-response", "maybe")
    # A usage error: click's message, exit status 2, and no traceback.
    assert bad_switch.returncode == 2
    assert "Invalid value for '--active-response'" in bad_switch.stderr
    assert "Traceback" not in bad_switch.stderr
    assert json.loads(admin.ok("segment", "list", "--json"))
