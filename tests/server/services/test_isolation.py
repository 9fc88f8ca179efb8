"""Isolation on the platform: a host's state read from its isolation jobs, pending requests for
offline hosts, a newer request replacing an older one, the allowlist, and the reserved actions."""

import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import IsolationReport, JobStatus
from tether.protocol.isolation import AllowRule, IsolationMode, IsolationStatus
from tether.server.errors import Forbidden, Invalid
from tether.server.services.audit import AuditLog
from tether.server.services.hosts import Hosts
from tether.server.services.isolation import Isolation
from tether.server.services.jobs import Selection
from tether.server.services.policy import PolicyDelivery
from tether.server.store.tables import audit_records

from .test_jobs import ANALYST, RESPONDER, Harness, frames


class World(Harness):
    def __init__(self, engine: AsyncEngine, audit: AuditLog) -> None:
        super().__init__(engine, audit)
        self.isolation = Isolation(engine, audit, self.jobs, PolicyDelivery(engine, self.presence))
        self.hosts = Hosts(engine, audit, self.presence)

    async def state(self, host_id: str) -> Any:
        return (await self.hosts.get(host_id)).isolation

    async def report(self, host_id: str, job_id: str, state: str, **extra: Any) -> None:
        for step in ("delivered", "running", state):
            await self.dispatcher.on_status(
                host_id, JobStatus(job_id=job_id, state=step, **(extra if step == state else {}))
            )


@pytest.fixture
def w(engine: AsyncEngine, audit: AuditLog) -> World:
    return World(engine, audit)


def result(mode: str) -> dict[str, Any]:
    return {"isolated": True, "mode": mode, "backend": "nftables", "platform": ["192.0.2.1"]}


async def test_an_offline_host_is_pending_then_isolated_then_released(w: World) -> None:
    host = await w.host("web-1")
    assert (await w.state(host)).state == "not isolated"
    batch = await w.isolation.isolate(
        RESPONDER, Selection(host_ids=[host]), IsolationMode.FULL, source="test"
    )
    (job,) = batch.jobs
    pending = await w.state(host)
    assert (pending.state, pending.mode, pending.by) == ("isolation pending", "full", "rita")
    # Delivered when the host returns, carrying the mode and the allowlist.
    link = await w.connect(host)
    (sent,) = frames(link, "job")
    assert sent["args"] == {"mode": "full", "allow": []}
    await w.report(host, job.id, "succeeded", result=result("full"))
    held = await w.state(host)
    assert (held.state, held.mode, held.by, held.failed) == ("isolated", "full", "rita", None)
    assert held.since is not None

    release = await w.isolation.release(RESPONDER, Selection(host_ids=[host]), source="test")
    assert (await w.state(host)).state == "unisolation pending"
    await w.report(
        host, release.jobs[0].id, "succeeded", result={"isolated": False, "backend": "nftables"}
    )
    assert (await w.state(host)).state == "not isolated"


async def test_a_failed_request_shows_its_reason_beside_the_state_that_holds(w: World) -> None:
    host = await w.host("web-1")
    await w.connect(host)
    first = await w.isolation.isolate(
        RESPONDER, Selection(host_ids=[host]), IsolationMode.OUTBOUND, source="test"
    )
    await w.report(host, first.jobs[0].id, "succeeded", result=result("outbound"))
    release = await w.isolation.release(RESPONDER, Selection(host_ids=[host]), source="test")
    await w.report(host, release.jobs[0].id, "failed", error="nft refused the change.")
    shown = await w.state(host)
    assert (shown.state, shown.mode) == ("isolated", "outbound")
    assert shown.failed == "The request to release the host failed: nft refused the change."


async def test_a_newer_request_withdraws_an_older_one_still_waiting(w: World) -> None:
    host = await w.host("web-1")
    older = await w.isolation.isolate(
        RESPONDER, Selection(host_ids=[host]), IsolationMode.OUTBOUND, source="test"
    )
    newer = await w.isolation.release(RESPONDER, Selection(host_ids=[host]), source="test")
    withdrawn = await w.jobs.get(older.jobs[0].id)
    assert withdrawn.state == "cancelled"
    assert newer.id in (withdrawn.error or "")
    assert (await w.state(host)).state == "unisolation pending"
    # Only the newest is delivered.
    link = await w.connect(host)
    assert [f["job_id"] for f in frames(link, "job")] == [newer.jobs[0].id]


async def test_the_allowlist_goes_with_each_isolation_and_changes_are_audited(
    w: World, engine: AsyncEngine
) -> None:
    rules = [AllowRule(cidr="10.1.0.0/16"), AllowRule(cidr="2001:db8::/32", ports=(443, 53))]
    host = await w.host("web-1")
    link = await w.connect(host)
    await w.isolation.set_allowlist(rules, actor="adam", source="test")
    assert await w.isolation.allowlist() == rules
    # Connected agents are told at once, for the isolation their scripts may ask for.
    assert link.policies[-1].isolation_allow == tuple(rules)
    batch = await w.isolation.isolate(
        RESPONDER, Selection(host_ids=[host]), IsolationMode.OUTBOUND, source="test"
    )
    job = await w.jobs.get(batch.jobs[0].id)
    assert job.args is not None
    assert job.args["allow"] == [
        {"cidr": "10.1.0.0/16", "ports": []},
        {"cidr": "2001:db8::/32", "ports": [53, 443]},
    ]
    async with engine.connect() as conn:
        records = (await conn.execute(select(audit_records))).all()
    by_action = {r.action: json.loads(r.details) for r in records}
    assert by_action["isolation.allowlist"]["after"][1]["ports"] == [53, 443]
    assert by_action["job.submit"]["args"]["mode"] == "outbound"
    assert by_action["job.submit"]["hosts"] == [host]


async def test_isolation_is_refused_without_the_role_or_through_the_generic_route(
    w: World,
) -> None:
    host = await w.host("web-1")
    with pytest.raises(Forbidden):
        await w.isolation.isolate(
            ANALYST, Selection(host_ids=[host]), IsolationMode.OUTBOUND, source="test"
        )
    with pytest.raises(Invalid, match="tether isolate"):
        await w.submit([host], "isolation.isolate", args={"mode": "outbound"})
    disabled = await w.host("db-1", segment="off", enabled=False)
    with pytest.raises(Forbidden, match="Active Response"):
        await w.isolation.isolate(
            RESPONDER, Selection(host_ids=[disabled]), IsolationMode.OUTBOUND, source="test"
        )


async def test_what_the_endpoint_reports_after_the_last_job_is_shown(w: World) -> None:
    host = await w.host("web-1")
    await w.connect(host)
    first = await w.isolation.isolate(
        RESPONDER, Selection(host_ids=[host]), IsolationMode.OUTBOUND, source="test"
    )
    await w.report(host, first.jobs[0].id, "succeeded", result=result("outbound"))
    # The endpoint owner released it locally: the agent says so, and the inventory believes it.
    await w.hosts.record_isolation(
        host,
        IsolationReport(status=IsolationStatus(isolated=False), cause="local"),
    )
    shown = await w.state(host)
    assert (shown.state, shown.reported_by_endpoint) == ("not isolated", True)
    # A script isolated it again, in full mode.
    await w.hosts.record_isolation(
        host,
        IsolationReport(
            status=IsolationStatus(isolated=True, mode=IsolationMode.FULL, backend="nftables"),
            cause="script",
            job_id="j1",
        ),
    )
    shown = await w.state(host)
    assert (shown.state, shown.mode, shown.by) == ("isolated", "full", "endpoint")
    # A report that agrees with the jobs changes nothing; a newer job decides again.
    release = await w.isolation.release(RESPONDER, Selection(host_ids=[host]), source="test")
    await w.report(host, release.jobs[0].id, "succeeded", result={"isolated": False})
    shown = await w.state(host)
    assert (shown.state, shown.reported_by_endpoint) == ("not isolated", False)


async def test_a_request_cancelled_before_it_was_sent_leaves_the_state_as_it_was(w: World) -> None:
    host = await w.host("web-1")
    batch = await w.isolation.isolate(
        RESPONDER, Selection(host_ids=[host]), IsolationMode.OUTBOUND, source="test"
    )
    await w.jobs.cancel(batch.jobs[0].id, RESPONDER, source="test")
    shown = await w.state(host)
    assert (shown.state, shown.failed) == ("not isolated", None)


async def test_the_reason_given_goes_into_the_record_and_never_to_the_agent(
    w: World, engine: AsyncEngine
) -> None:
    host = await w.host("web-1")
    link = await w.connect(host)
    with pytest.raises(Invalid, match=r"A reason is one line of text without control characters\."):
        await w.isolation.release(
            RESPONDER, Selection(host_ids=[host]), source="test", reason="ok\r\nforged"
        )
    await w.isolation.isolate(
        RESPONDER,
        Selection(host_ids=[host]),
        IsolationMode.FULL,
        source="test",
        reason="  IR-7: beacon  ",
    )
    (sent,) = frames(link, "job")
    assert "reason" not in sent["args"]
    async with engine.connect() as conn:
        details = (
            await conn.execute(
                select(audit_records.c.details).where(audit_records.c.action == "job.submit")
            )
        ).scalar_one()
    assert json.loads(details)["reason"] == "IR-7: beacon"
