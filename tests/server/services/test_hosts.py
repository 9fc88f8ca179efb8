"""The host inventory: lookups, revocation (audited, closes the live link), hello facts."""

import asyncio
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import CloseCode, Hello, OsInfo
from tether.server.errors import Conflict, NotFound
from tether.server.services.audit import AuditLog
from tether.server.services.hosts import Hosts
from tether.server.services.presence import Presence
from tether.server.store.tables import hosts as hosts_table

from ..support import FakeLink, add_host


@pytest.fixture
def presence(engine: AsyncEngine) -> Presence:
    return Presence(engine)


@pytest.fixture
def inventory(engine: AsyncEngine, audit: AuditLog, presence: Presence) -> Hosts:
    return Hosts(engine, audit, presence)


async def test_list_and_get(inventory: Hosts, engine: AsyncEngine) -> None:
    b = await add_host(engine, "bravo", segment="servers")
    a = await add_host(engine, "alpha")
    listed = await inventory.list()
    assert [(h.id, h.hostname, h.segment) for h in listed] == [
        (a, "alpha", "default"),
        (b, "bravo", "servers"),
    ]
    assert (await inventory.get(a)).hostname == "alpha"
    assert (await inventory.get("bravo")).id == b
    assert not listed[0].online
    assert not listed[0].revoked


async def test_unknown_and_ambiguous_references(inventory: Hosts, engine: AsyncEngine) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        await inventory.get("nope")
    first = await add_host(engine, "twin")
    await add_host(engine, "twin")
    with pytest.raises(Conflict, match="use more of the id"):
        await inventory.get("twin")
    assert (await inventory.get(first)).id == first


# One rule for host references (issue 18, item 4; docs/adr/0045).

ALPHA = "abcd1234-0000-4000-8000-000000000001"
ALPHA_TWIN = "abcd9999-0000-4000-8000-000000000002"


async def test_a_unique_id_prefix_names_a_host(inventory: Hosts, engine: AsyncEngine) -> None:
    await add_host(engine, "alpha", host_id=ALPHA)
    await add_host(engine, "alpha-2", host_id=ALPHA_TWIN)
    assert (await inventory.get("abcd1234")).id == ALPHA
    assert (await inventory.get("ABCD1234")).id == ALPHA  # ids are shown lower-case
    with pytest.raises(Conflict) as ambiguous:
        await inventory.get("abcd")
    assert str(ambiguous.value) == (
        # Newest enrolled first.
        f"Several hosts have an id starting with 'abcd': {ALPHA_TWIN} (alpha-2), {ALPHA} "
        "(alpha); use more of the id of the one meant."
    )
    with pytest.raises(NotFound):
        await inventory.get("abc")  # too short to be taken as a prefix
    with pytest.raises(NotFound):
        await inventory.get("ab%")  # LIKE wildcards are text, not patterns


async def test_a_revoked_host_neither_answers_nor_makes_a_name_ambiguous(
    inventory: Hosts, engine: AsyncEngine, presence: Presence
) -> None:
    old = await add_host(engine, "reimaged")
    await inventory.revoke(old, actor="admin", source="test")
    new = await add_host(engine, "reimaged")
    assert (await inventory.get("reimaged")).id == new
    assert (await inventory.get(old)).revoked  # its full id still finds it
    await inventory.revoke(new, actor="admin", source="test")
    # Every host of the name revoked: the name finds the newest, shown as revoked.
    found = await inventory.get("reimaged")
    assert found.revoked
    assert found.id in {old, new}


async def test_online_and_pending_last_seen_show_in_listings(
    inventory: Hosts, presence: Presence, engine: AsyncEngine
) -> None:
    host_id = await add_host(engine, "ws")
    assert (await inventory.get(host_id)).last_seen is None
    presence.attach(FakeLink(host_id))
    view = await inventory.get(host_id)
    assert view.online
    assert view.last_seen == presence.pending_last_seen(host_id)


async def test_revoke_refuses_the_certificate_and_closes_the_link(
    inventory: Hosts, presence: Presence, engine: AsyncEngine, audit: AuditLog
) -> None:
    host_id = await add_host(engine, "ws")
    link = FakeLink(host_id)
    presence.attach(link)
    async with engine.connect() as conn:
        serial = (await conn.execute(select(hosts_table.c.cert_serial))).scalar_one()
    status = await inventory.certificate_status(serial)
    assert status is not None
    assert not status.revoked
    view = await inventory.revoke("ws", actor="admin", source="10.0.0.1")
    assert view.revoked
    assert link.closed == [(CloseCode.REVOKED, "This host's certificate was revoked.")]
    status = await inventory.certificate_status(serial)
    assert status is not None
    assert status.revoked
    assert status.host_id == host_id
    last = [r async for r in audit.iter_records()][-1]
    assert (last.action, last.actor, last.target, last.source) == (
        "host.revoke",
        "admin",
        f"host:{host_id}",
        "10.0.0.1",
    )
    assert last.to_json()["details"] == {"hostname": "ws", "was_online": True}
    with pytest.raises(Conflict, match="already revoked"):
        await inventory.revoke(host_id, actor="admin", source="s")


async def test_unknown_certificate_has_no_status(inventory: Hosts) -> None:
    assert await inventory.certificate_status("deadbeef") is None


async def test_record_hello_stores_what_the_agent_reports(
    inventory: Hosts, engine: AsyncEngine
) -> None:
    host_id = await add_host(engine, "old-name")
    hello = Hello(
        protocol_version=1,
        agent_version="9.9.9",
        hostname="new-name",
        os=OsInfo(family="windows", name="Windows", version="10.0.19045"),
        addresses=["10.0.0.7", "2001:db8::7"],
        boot_time=datetime(2030, 1, 1, tzinfo=UTC),
    )
    await inventory.record_hello(host_id, hello)
    view = await inventory.get(host_id)
    assert (view.hostname, view.os_family, view.os_version, view.agent_version) == (
        "new-name",
        "windows",
        "10.0.19045",
        "9.9.9",
    )
    assert view.addresses == ["10.0.0.7", "2001:db8::7"]
    assert view.boot_time == datetime(2030, 1, 1, tzinfo=UTC)
    assert view.last_seen is not None
    # The hosts still on the previous protocol version during an upgrade.
    assert view.protocol_version == 1
    async with engine.connect() as conn:
        stored = (await conn.execute(select(hosts_table.c.addresses))).scalar_one()
    assert json.loads(stored) == ["10.0.0.7", "2001:db8::7"]


async def test_record_hello_stores_the_local_response_switch_in_the_batched_write(
    inventory: Hosts, engine: AsyncEngine
) -> None:
    off = await add_host(engine, "switched-off")
    on = await add_host(engine, "left-alone")
    assert (await inventory.get(off)).response_disabled_locally is False

    def hello(name: str, disabled: bool) -> Hello:
        return Hello(
            protocol_version=1,
            agent_version="1",
            hostname=name,
            os=OsInfo(family="linux", name="Linux", version="6"),
            addresses=[],
            boot_time=datetime(2030, 1, 1, tzinfo=UTC),
            response_disabled_locally=disabled,
        )

    # Submitted together, so both land in one statement of the batch.
    await asyncio.gather(
        inventory.record_hello(off, hello("switched-off", True)),
        inventory.record_hello(on, hello("left-alone", False)),
    )
    assert (await inventory.get(off)).response_disabled_locally is True
    assert (await inventory.get(on)).response_disabled_locally is False
    # The agent's next hello is the truth: the endpoint owner removed the switch.
    await inventory.record_hello(off, hello("switched-off", False))
    assert (await inventory.get(off)).response_disabled_locally is False
