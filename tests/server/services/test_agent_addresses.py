"""Checking the agent address list an admin sets (docs/adr/0049)."""

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.errors import Invalid
from tether.server.services.agent_addresses import (
    AgentAddresses,
    as_url,
    check_address,
    check_addresses,
    write_addresses,
)
from tether.server.services.audit import AuditLog


@pytest.mark.parametrize(
    "text", ["node1.example.org:8444", "10.0.0.11:8444", "[2001:db8::1]:8444", " lb:1 "]
)
def test_host_port_is_accepted(text: str) -> None:
    assert check_address(text) == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "node1.example.org",  # no port
        "wss://node1:8444",  # a URL, not HOST:PORT
        "node1:0",
        "node1:65536",
        "node 1:8444",
        "node1:8444/path",
        "user@node1:8444",
        "2001:db8::1:8444",  # IPv6 without brackets
        "node1:8444\nnode2:8444",
        "",
    ],
)
def test_anything_else_is_refused_in_one_sentence(text: str) -> None:
    with pytest.raises(Invalid, match=r"is not an agent address; write HOST:PORT"):
        check_address(text)


def test_duplicates_are_dropped_and_the_list_is_bounded() -> None:
    assert check_addresses(["a:1", "b:2", "a:1"]) == ["a:1", "b:2"]
    with pytest.raises(Invalid, match="At most 32"):
        check_addresses([f"node{i}:8444" for i in range(33)])


def test_agents_are_told_wss_urls_their_protocol_accepts() -> None:
    from tether.protocol import Welcome

    urls = tuple(as_url(a) for a in check_addresses(["node1:8444", "[::1]:8444", "10.0.0.1:1"]))
    welcome = Welcome.model_validate(
        {
            "host_id": "h",
            "server_time": "2030-01-01T00:00:00Z",
            "heartbeat_seconds": 60,
            "agent_addresses": urls,
        }
    )
    assert welcome.agent_addresses == urls


async def test_without_a_list_agents_are_told_nothing_and_keep_what_they_dial(
    engine: AsyncEngine, audit: AuditLog
) -> None:
    """Behind a load balancer with no list set, the welcome must not name the node the agent
    happened to reach: the agent would dial it directly from then on and stay on a dead node."""
    addresses = AgentAddresses(engine, audit, "wss://node-b.internal:8444")
    assert await addresses.listed_urls() == ()
    assert await addresses.urls() == ("wss://node-b.internal:8444",)  # what the page shows
    async with engine.begin() as conn:
        await write_addresses(conn, ["lb.example.org:8444"])
    fresh = AgentAddresses(engine, audit, "wss://node-b.internal:8444")
    assert await fresh.listed_urls() == ("wss://lb.example.org:8444",)
    assert await fresh.urls() == ("wss://lb.example.org:8444",)
