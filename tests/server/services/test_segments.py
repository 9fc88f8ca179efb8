"""Segments: create, rename, switch, delete, host moves; each audited and told to the agents."""

import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import EnrollmentToken, EnrollRequest, Policy
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound
from tether.server.services.audit import AuditLog
from tether.server.services.enrollment import Enrollment
from tether.server.services.pki import CertificateAuthority
from tether.server.services.policy import PolicyDelivery
from tether.server.services.presence import Presence
from tether.server.services.segments import Segments
from tether.server.store.tables import enrollment_tokens, hosts

from ..support import FakeLink, add_host, make_csr


@pytest.fixture
def presence(engine: AsyncEngine) -> Presence:
    return Presence(engine)


@pytest.fixture
def policies(engine: AsyncEngine, presence: Presence) -> PolicyDelivery:
    return PolicyDelivery(engine, presence)


@pytest.fixture
def segments(engine: AsyncEngine, audit: AuditLog, policies: PolicyDelivery) -> Segments:
    return Segments(engine, audit, policies)


async def last_record(audit: AuditLog) -> tuple[str, str, str, dict[str, Any]]:
    last = [r async for r in audit.iter_records()][-1]
    return last.action, last.actor, last.target, last.to_json()["details"]


async def test_create_and_list_with_switch_and_host_count(
    segments: Segments, engine: AsyncEngine, audit: AuditLog
) -> None:
    created = await segments.create("lab", actor="admin", source="s")
    assert (created.name, created.active_response, created.hosts) == ("lab", False, 0)
    assert await last_record(audit) == (
        "segment.create",
        "admin",
        "segment:lab",
        {"name": "lab", "active_response": False},
    )
    await segments.create("servers", active_response=True, actor="admin", source="s")
    await add_host(engine, "a", segment="lab")
    await add_host(engine, "b", segment="lab")
    listed = await segments.list()
    assert [(s.name, s.active_response, s.hosts) for s in listed] == [
        ("lab", False, 2),
        ("servers", True, 0),
    ]


async def test_create_refuses_duplicates_and_bad_names(segments: Segments) -> None:
    await segments.create("lab", actor="admin", source="s")
    with pytest.raises(Conflict, match=re.escape("A segment named 'lab' already exists.")):
        await segments.create("lab", actor="admin", source="s")
    for bad in ("", " lab", "a/b", "x" * 65, "lab\n"):
        with pytest.raises(Invalid, match="A segment name is 1 to 64"):
            await segments.create(bad, actor="admin", source="s")


async def test_switch_is_audited_with_before_and_after_and_told_to_connected_agents(
    segments: Segments, engine: AsyncEngine, presence: Presence, audit: AuditLog
) -> None:
    await segments.create("lab", actor="admin", source="s")
    inside = await add_host(engine, "in", segment="lab")
    outside = await add_host(engine, "out", segment="other")
    offline = await add_host(engine, "offline", segment="lab")
    link_in, link_out = FakeLink(inside), FakeLink(outside)
    presence.attach(link_in)
    presence.attach(link_out)

    view = await segments.set_active_response("lab", True, actor="admin", source="s")
    assert view.active_response is True
    assert link_in.policies == [Policy(segment="lab", active_response=True)]
    assert link_out.policies == []
    assert await last_record(audit) == (
        "segment.active_response",
        "admin",
        "segment:lab",
        {"before": {"active_response": False}, "after": {"active_response": True}},
    )
    assert offline  # offline hosts learn it at their next connection, from the gateway

    await segments.set_active_response("lab", False, actor="admin", source="s")
    assert link_in.policies[-1] == Policy(segment="lab", active_response=False)


async def test_setting_the_position_it_has_changes_nothing(
    segments: Segments, audit: AuditLog
) -> None:
    await segments.create("lab", actor="admin", source="s")
    before = [r.seq async for r in audit.iter_records()]
    view = await segments.set_active_response("lab", False, actor="admin", source="s")
    assert view.active_response is False
    assert [r.seq async for r in audit.iter_records()] == before


async def test_rename_keeps_hosts_and_tells_agents_the_new_name(
    segments: Segments, engine: AsyncEngine, presence: Presence, audit: AuditLog
) -> None:
    await segments.create("lab", active_response=True, actor="admin", source="s")
    host_id = await add_host(engine, "a", segment="lab")
    link = FakeLink(host_id)
    presence.attach(link)
    renamed = await segments.rename("lab", "research", actor="admin", source="s")
    assert (renamed.name, renamed.hosts, renamed.active_response) == ("research", 1, True)
    assert link.policies == [Policy(segment="research", active_response=True)]
    assert await last_record(audit) == (
        "segment.rename",
        "admin",
        "segment:research",
        {"before": {"name": "lab"}, "after": {"name": "research"}},
    )
    with pytest.raises(NotFound, match=re.escape("No segment is named 'lab'.")):
        await segments.rename("lab", "x", actor="admin", source="s")


async def test_rename_refusals(segments: Segments) -> None:
    await segments.create("lab", actor="admin", source="s")
    await segments.create("servers", actor="admin", source="s")
    with pytest.raises(Conflict, match=re.escape("A segment named 'servers' already exists.")):
        await segments.rename("lab", "servers", actor="admin", source="s")
    with pytest.raises(Invalid, match="already has that name"):
        await segments.rename("lab", "lab", actor="admin", source="s")
    with pytest.raises(Invalid, match="A segment name is"):
        await segments.rename("lab", "bad/name", actor="admin", source="s")
    assert [s.name for s in await segments.list()] == ["lab", "servers"]


async def test_delete_is_refused_while_hosts_are_in_the_segment(
    segments: Segments, engine: AsyncEngine, audit: AuditLog
) -> None:
    await add_host(engine, "a", segment="lab")
    await add_host(engine, "b", segment="lab")
    with pytest.raises(Conflict) as refused:
        await segments.delete("lab", actor="admin", source="s")
    assert str(refused.value) == (
        "Segment 'lab' still holds 2 hosts; move them to another segment before deleting it."
    )
    assert [s.name for s in await segments.list()] == ["lab"]
    with pytest.raises(NotFound, match=re.escape("No segment is named 'nope'.")):
        await segments.delete("nope", actor="admin", source="s")


async def test_delete_takes_the_segments_enrollment_tokens_with_it(
    segments: Segments,
    engine: AsyncEngine,
    audit: AuditLog,
    ca: CertificateAuthority,
    presence: Presence,
) -> None:
    enrollment = Enrollment(engine, audit, ca, "https://p", "wss://p")
    await segments.create("lab", actor="admin", source="s")
    issued = await enrollment.create_token(
        segment="lab", uses=2, lifetime=timedelta(hours=1), actor="admin", source="s"
    )
    # A host enrolled with that token, then moved out: it must not block the deletion.
    host_id = await add_host(engine, "moved", segment="lab")
    async with engine.begin() as conn:
        await conn.execute(
            hosts.update().where(hosts.c.id == host_id).values(enrollment_token_id=issued.id)
        )
    await segments.create("servers", actor="admin", source="s")
    await segments.move_host(host_id, "servers", actor="admin", source="s")

    await segments.delete("lab", actor="admin", source="s")
    assert [s.name for s in await segments.list()] == ["servers"]
    async with engine.connect() as conn:
        assert (await conn.execute(select(enrollment_tokens.c.id))).all() == []
    assert await last_record(audit) == (
        "segment.delete",
        "admin",
        "segment:lab",
        {
            "before": {"name": "lab", "active_response": False},
            "enrollment_tokens_deleted": [issued.id],
        },
    )
    # The token had a use left: it must not enroll a host into a segment that no longer exists.
    csr, _ = make_csr("late")
    request = EnrollRequest(
        secret=EnrollmentToken.decode(issued.token).secret, csr_pem=csr, hostname="late"
    )
    with pytest.raises(Forbidden, match="unknown, used up or expired"):
        await enrollment.enroll(request, source="s")


async def test_move_host_is_audited_and_tells_the_agent_its_new_policy(
    segments: Segments, engine: AsyncEngine, presence: Presence, audit: AuditLog
) -> None:
    await segments.create("lab", active_response=True, actor="admin", source="s")
    await segments.create("quarantine", actor="admin", source="s")
    host_id = await add_host(engine, "ws", segment="lab")
    link = FakeLink(host_id)
    presence.attach(link)

    assert await segments.move_host(host_id, "quarantine", actor="admin", source="s") == (
        "lab",
        "quarantine",
    )
    assert link.policies == [Policy(segment="quarantine", active_response=False)]
    assert await last_record(audit) == (
        "host.move",
        "admin",
        f"host:{host_id}",
        {
            "hostname": "ws",
            "before": {"segment": "lab", "active_response": True},
            "after": {"segment": "quarantine", "active_response": False},
        },
    )
    assert [(s.name, s.hosts) for s in await segments.list()] == [("lab", 0), ("quarantine", 1)]

    # Moving it where it is changes nothing and records nothing.
    seqs = [r.seq async for r in audit.iter_records()]
    await segments.move_host(host_id, "quarantine", actor="admin", source="s")
    assert [r.seq async for r in audit.iter_records()] == seqs
    assert len(link.policies) == 1


async def test_move_refusals(segments: Segments, engine: AsyncEngine) -> None:
    host_id = await add_host(engine, "ws", segment="lab")
    with pytest.raises(NotFound, match=re.escape("No segment is named 'nowhere'.")):
        await segments.move_host(host_id, "nowhere", actor="admin", source="s")
    with pytest.raises(NotFound, match=re.escape("No host has the id 'ghost'.")):
        await segments.move_host("ghost", "lab", actor="admin", source="s")
