"""Service tokens: bounds at creation, the checks at every call, revocation, the audit trail."""

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Tier
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from tether.server.services.audit import AuditLog
from tether.server.services.service_tokens import NOT_VALID, ServiceTokens
from tether.server.store.tables import audit_records, service_tokens

from .test_jobs import Harness
from .test_team import acting

ADMIN = acting("admin")
DAY = timedelta(days=1)


@pytest.fixture
def h(engine: AsyncEngine, audit: AuditLog) -> Harness:
    return Harness(engine, audit)


@pytest.fixture
def tokens(engine: AsyncEngine, audit: AuditLog, h: Harness) -> ServiceTokens:
    return ServiceTokens(engine, audit, h.jobs.withdraw_for_user)


async def records(engine: AsyncEngine, action: str) -> list[Any]:
    async with engine.connect() as conn:
        query = select(audit_records).where(audit_records.c.action == action)
        return list((await conn.execute(query.order_by(audit_records.c.seq))).all())


async def call(tokens: ServiceTokens, token: str, address: str = "10.1.2.3") -> Any:
    return await tokens.authenticate(token, address, method="POST", path="/api/v1/jobs")


async def test_a_token_is_shown_once_stored_hashed_and_acts_under_its_name(
    tokens: ServiceTokens, h: Harness, engine: AsyncEngine
) -> None:
    await h.host("web-1", segment="ir")
    issued = await tokens.create("soar", Tier.RESPOND, ["ir"], DAY, [], by=ADMIN, source="s")
    assert issued.token.startswith("tts_")
    async with engine.connect() as conn:
        stored = (await conn.execute(select(service_tokens))).one()
    assert issued.token not in json.dumps([str(v) for v in stored])
    principal = await call(tokens, issued.token)
    assert (principal.username, principal.tier, principal.segments) == (
        "service:soar",
        Tier.RESPOND,
        frozenset({"ir"}),
    )
    assert principal.id < 0
    assert principal.service
    assert principal.mfa_verified
    (listed,) = await tokens.list()
    assert (listed.last_used_from, listed.last_used_at is not None) == ("10.1.2.3", True)
    (created,) = await records(engine, "service_token.create")
    assert (created.actor, created.target) == ("admin", "service:soar")
    (called,) = await records(engine, "service_token.call")
    assert (called.actor, called.target, called.outcome) == (
        "service:soar",
        "/api/v1/jobs",
        "success",
    )


async def test_a_token_acts_only_in_its_segments_and_tier(
    tokens: ServiceTokens, h: Harness, engine: AsyncEngine
) -> None:
    inside = await h.host("web-1", segment="ir")
    outside = await h.host("db-1", segment="prod")
    issued = await tokens.create("soar", Tier.RESPOND, ["ir"], DAY, [], by=ADMIN, source="s")
    soar = await call(tokens, issued.token)
    batch = await h.submit([inside], "processes.kill", user=soar, args={"pid": 4242})
    assert batch.jobs[0].created_by == "service:soar"
    with pytest.raises(Forbidden) as refused:
        await h.submit([outside], "processes.kill", user=soar, args={"pid": 4242})
    assert (
        str(refused.value) == "service:soar may act only in segments ir; db-1 is in segment prod."
    )
    with pytest.raises(Forbidden) as refused:
        await h.submit([inside], "script.run", user=soar, args={"source": "print(1)"})
    assert (
        str(refused.value) == "service:soar has the respond tier; an arbitrary script needs script."
    )
    reasons = [json.loads(r.details)["reason"] for r in await records(engine, "job.refused")]
    assert reasons == [
        "service:soar may act only in segments ir; db-1 is in segment prod.",
        "service:soar has the respond tier; an arbitrary script needs script.",
    ]


async def test_revoked_expired_foreign_address_and_unknown_tokens_are_refused(
    tokens: ServiceTokens, h: Harness, engine: AsyncEngine
) -> None:
    await h.host("web-1", segment="ir")
    issued = await tokens.create(
        "soar", Tier.COLLECT, ["ir"], DAY, ["10.0.0.0/8"], by=ADMIN, source="s"
    )
    with pytest.raises(Unauthenticated) as refused:
        await call(tokens, issued.token, "192.0.2.7")
    assert str(refused.value) == "Service token soar may not be used from 192.0.2.7."
    with pytest.raises(Unauthenticated) as refused:
        await call(tokens, issued.token + "x")
    assert str(refused.value) == NOT_VALID
    async with engine.begin() as conn:
        await conn.execute(update(service_tokens).values(expires_at=service_tokens.c.created_at))
    with pytest.raises(Unauthenticated) as refused:
        await call(tokens, issued.token)
    assert str(refused.value) == "Service token soar has expired; ask an admin for a new one."
    await tokens.revoke("soar", by=ADMIN, source="s")
    with pytest.raises(Unauthenticated) as refused:
        await call(tokens, issued.token)
    assert str(refused.value) == "Service token soar was revoked; ask an admin for a new one."
    outcomes = [r.outcome for r in await records(engine, "service_token.call")]
    assert outcomes == ["failure", "failure", "failure"]
    (revoked,) = await records(engine, "service_token.revoke")
    assert (revoked.actor, revoked.target) == ("admin", "service:soar")


async def test_revoking_withdraws_the_jobs_the_token_queued(
    tokens: ServiceTokens, h: Harness
) -> None:
    host = await h.host("web-1", segment="ir")
    issued = await tokens.create("soar", Tier.RESPOND, ["ir"], DAY, [], by=ADMIN, source="s")
    batch = await h.submit(
        [host], "processes.kill", user=await call(tokens, issued.token), args={"pid": 7}
    )
    await tokens.revoke("soar", by=ADMIN, source="s")
    job = await h.jobs.get(batch.jobs[0].id)
    assert job.state == "cancelled"


async def test_creation_bounds(tokens: ServiceTokens, h: Harness) -> None:
    await h.host("web-1", segment="ir")
    with pytest.raises(NotFound, match=r"There is no segment named 'nope'\."):
        await tokens.create("a", Tier.COLLECT, ["nope"], DAY, [], by=ADMIN, source="s")
    with pytest.raises(Invalid, match="lives between 5 minutes and 365 days"):
        await tokens.create(
            "a", Tier.COLLECT, ["ir"], timedelta(days=400), [], by=ADMIN, source="s"
        )
    with pytest.raises(Invalid, match="is not an address or network"):
        await tokens.create("a", Tier.COLLECT, ["ir"], DAY, ["10.0.0.0/33"], by=ADMIN, source="s")
    with pytest.raises(Invalid, match="Name 1 to 64 segments"):
        await tokens.create("a", Tier.COLLECT, [], DAY, [], by=ADMIN, source="s")
    await tokens.create("a", Tier.COLLECT, ["ir"], DAY, [], by=ADMIN, source="s")
    with pytest.raises(Conflict):
        await tokens.create("a", Tier.COLLECT, ["ir"], DAY, [], by=ADMIN, source="s")
