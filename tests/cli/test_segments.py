import json

from tether.cli.segments import segment_path

from .conftest import Cli, Hosts


def test_segment_names_are_one_path_segment() -> None:
    assert segment_path("lab net") == "/segments/lab%20net"
    assert segment_path("a.b_c-d") == "/segments/a.b_c-d"
    # Never valid names, but the CLI must not turn them into other routes either.
    assert segment_path("../hosts") == "/segments/..%2Fhosts"
    assert segment_path("a?b#c") == "/segments/a%3Fb%23c"


async def test_segments_count_revoked_hosts_apart(cli: Cli, hosts: Hosts) -> None:
    await hosts.platform.hosts.revoke(hosts.ids["ws-2"], actor="admin", source="test")
    listed = json.loads((await cli("segment", "list", "--json")).stdout)
    lab = next(s for s in listed if s["name"] == "lab")
    assert (lab["hosts"], lab["revoked_hosts"]) == (1, 1)
    shown = await cli("segment", "list")
    assert shown.code == 0, shown.stderr
    assert "Revoked" in shown.stdout
    # Deleting still waits for the revoked host to move, and the refusal says it is among them.
    refused = await cli("segment", "delete", "lab")
    assert refused.code == 1
    assert "Segment 'lab' still holds 2 hosts (1 revoked)" in refused.stderr
