"""Isolation end to end with real packets: a real platform in the root namespace, a real agent in
an endpoint namespace, and an "outside" namespace the endpoint should or should not reach.

Runs as root only (skipped with the reason elsewhere; CI runs as root and must run it).
"""

import time

import pytest

from tests.e2e.harness import wait_for
from tests.netns.world import TABLE, World, echo_server

pytestmark = pytest.mark.e2e


def test_outbound_isolation_blocks_the_outside_keeps_inbound_and_the_platform(
    endpoint: World,
) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    outside_v6 = net.listen(net.outside, net.outside_v6)
    inbound = net.listen(net.endpoint, net.endpoint_outside_v4)
    echo_server(inbound)
    out_port, out_v6_port = outside.getsockname()[1], outside_v6.getsockname()[1]
    in_port = inbound.getsockname()[1]
    assert w.outbound_works(out_port)

    done = w.admin.run("isolate", w.host_id)
    assert done.returncode == 0, done.stderr
    assert "isolated (outbound)" in done.stdout

    assert not w.outbound_works(out_port)
    assert not net.can_connect(net.endpoint, net.outside_v6, out_v6_port)
    # Inbound connections still get in, and their replies get back out.
    with net.connect(net.outside, net.endpoint_outside_v4, in_port) as conn:
        assert conn.recv(64) == b"hello from the endpoint\n"
    # The agent stays connected and answers jobs.
    assert w.agent_answers()
    isolation = w.host()["isolation"]
    assert (isolation["state"], isolation["mode"], isolation["by"]) == (
        "isolated",
        "outbound",
        "admin",
    )
    assert TABLE in net.nft_ruleset(net.endpoint)

    # Full mode: new inbound connections are refused too.
    full = w.admin.run("isolate", w.host_id, "--mode", "full")
    assert full.returncode == 0, full.stderr
    assert not w.inbound_works(in_port)
    assert not w.outbound_works(out_port)
    assert w.agent_answers()

    released = w.admin.run("unisolate", w.host_id)
    assert released.returncode == 0, released.stderr
    assert w.outbound_works(out_port)
    assert w.inbound_works(in_port)
    assert TABLE not in net.nft_ruleset(net.endpoint)
    assert w.host()["isolation"]["state"] == "not isolated"

    with w.admin.api() as api:
        records = api.get("/audit", params={"limit": 1000}).json()
    asked = [
        (
            r["actor"],
            r["details"]["action"],
            r["details"]["args"].get("mode"),
            r["details"]["hosts"],
        )
        for r in records
        if r["action"] == "job.submit" and r["details"]["action"].startswith("isolation.")
    ]
    assert ("admin", "isolation.isolate", "outbound", [w.host_id]) in asked
    assert ("admin", "isolation.isolate", "full", [w.host_id]) in asked
    assert ("admin", "isolation.release", None, [w.host_id]) in asked


def test_isolation_survives_an_agent_restart(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]
    assert w.admin.run("isolate", w.host_id).returncode == 0
    w.stop_agent()
    # The rules belong to the endpoint, not to the agent process.
    assert not w.outbound_works(port)
    w.start_agent()
    assert not w.outbound_works(port)
    assert w.agent_answers()
    assert w.host()["isolation"]["state"] == "isolated"
    assert w.admin.run("unisolate", w.host_id).returncode == 0
    assert w.outbound_works(port)


def test_rules_that_would_cut_the_platform_off_are_rolled_back(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]
    # The platform's name now points somewhere nothing answers: rules allowing only that
    # address would cut the agent off at its next connection.
    w.point_name_at("198.51.100.77")
    failed = w.admin.run("isolate", w.host_id)
    assert failed.returncode == 1
    assert "failed:" in failed.stdout
    assert "platform" in failed.stdout
    assert TABLE not in net.nft_ruleset(net.endpoint)
    assert w.outbound_works(port)
    w.point_name_at(net.platform_v4)
    assert w.agent_answers()
    isolation = w.host()["isolation"]
    assert isolation["state"] == "not isolated"
    assert isolation["failed"].startswith("The request to isolate the host failed:")


def test_an_offline_host_is_pending_then_isolated_when_it_returns(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]
    w.stop_agent()
    queued = w.admin.run("isolate", w.host_id, "--mode", "full")
    assert queued.returncode == 0, queued.stderr
    assert "isolation pending (the host is offline" in queued.stdout
    assert w.host()["isolation"]["state"] == "isolation pending"
    assert w.outbound_works(port)

    w.start_agent()
    started = time.monotonic()
    wait_for(
        lambda: w.host()["isolation"]["state"] == "isolated",
        timeout=20,
        interval=0.1,
        what="the pending isolation to be applied",
    )
    assert time.monotonic() - started < 10
    assert w.host()["isolation"]["mode"] == "full"
    assert not w.outbound_works(port)


def test_the_isolation_control_script_through_the_agent_and_directly(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]

    def control(*params: str) -> str:
        argv = ["run", w.host_id, "--script", "Isolation Control"]
        for param in params:
            argv += ["--param", param]
        done = w.admin.run(*argv, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # Through the agent: its tested rules, and the platform is told (the script's job named).
    assert "isolate: isolated." in control("action=isolate", "mode=full")
    assert not w.outbound_works(port)
    assert not w.inbound_works(net.listen(net.endpoint, net.endpoint_outside_v4).getsockname()[1])
    shown = w.host()["isolation"]
    assert (shown["state"], shown["mode"], shown["reported_by_endpoint"]) == (
        "isolated",
        "full",
        True,
    )
    assert "status: isolated." in control("action=status")
    assert "unisolate: not isolated." in control("action=unisolate")
    assert w.outbound_works(port)
    assert w.host()["isolation"]["state"] == "not isolated"
    with w.admin.api() as api:
        records = api.get("/audit", params={"limit": 1000}).json()
    reported = [
        (r["details"]["cause"], r["details"]["isolated"], r["details"]["mode"])
        for r in records
        if r["action"] == "isolation.reported" and r["target"] == f"host:{w.host_id}"
    ]
    assert reported == [("script", True, "full"), ("script", False, None)]

    # Directly from Python: a table of the script's own that keeps the agent's connection.
    assert "isolate: isolated." in control("action=isolate", "method=direct")
    assert "tether_script_isolation" in net.nft_ruleset(net.endpoint)
    assert not w.outbound_works(port)
    assert w.agent_answers()
    assert "unisolate: not isolated." in control("action=unisolate", "method=direct")
    assert "tether_script_isolation" not in net.nft_ruleset(net.endpoint)
    assert w.outbound_works(port)


def test_an_allowlist_change_reaches_a_host_already_isolated(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]
    assert w.admin.run("isolate", w.host_id).returncode == 0
    assert not w.outbound_works(port)

    # The admin lets isolated hosts reach one outside service: the policy push carries it to
    # the agent, which re-applies its rules without a new isolation request.
    allowed = w.admin.run("isolation", "allowlist", "set", f"{net.outside_v4}:{port}")
    assert allowed.returncode == 0, allowed.stderr
    wait_for(
        lambda: w.outbound_works(port),
        timeout=20,
        interval=0.2,
        what="the isolated host to reach the newly allowed address",
    )
    other = net.listen(net.outside, net.outside_v4)
    assert not w.outbound_works(other.getsockname()[1])
    assert w.host()["isolation"]["state"] == "isolated"
    assert w.agent_answers()

    def allowlist_reports() -> list[tuple[str, list[dict[str, object]], object]]:
        with w.admin.api() as api:
            records = api.get("/audit", params={"limit": 1000}).json()
        return [
            (r["outcome"], r["details"]["allow"], r["details"]["error"])
            for r in records
            if r["action"] == "isolation.reported"
            and r["details"]["cause"] == "allowlist"
            and r["target"] == f"host:{w.host_id}"
        ]

    # The endpoint says what it applied, so the admin sees the change took.
    wait_for(lambda: allowlist_reports(), timeout=10, what="the agent's allowlist report")
    assert allowlist_reports() == [
        ("success", [{"cidr": f"{net.outside_v4}/32", "ports": [port]}], None)
    ]

    # Taking it away again closes it.
    assert w.admin.run("isolation", "allowlist", "set", "--clear").returncode == 0
    wait_for(
        lambda: not w.outbound_works(port),
        timeout=20,
        interval=0.2,
        what="the isolated host to lose the address taken off the allowlist",
    )
    assert w.admin.run("unisolate", w.host_id).returncode == 0
