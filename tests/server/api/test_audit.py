import itertools
import json

import httpx
from sqlalchemy import update

from tether.server.services.platform import Platform
from tether.server.store.tables import audit_records


async def test_list_records(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.get("/api/v1/audit", headers=admin)
    assert response.status_code == 200
    records = response.json()
    actions = [r["action"] for r in records]
    assert actions[0] == "platform.init"
    assert actions[-1] == "auth.login"
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    page = await client.get("/api/v1/audit", params={"after": 1, "limit": 1}, headers=admin)
    assert [r["seq"] for r in page.json()] == [2]


async def test_verify_intact_then_broken(
    client: httpx.AsyncClient, admin: dict[str, str], platform: Platform
) -> None:
    report = (await client.get("/api/v1/audit/verify", headers=admin)).json()
    assert report["intact"] is True
    assert report["checkpoint_seq"] == report["head_seq"] == report["records"]
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(audit_records).where(audit_records.c.seq == 1).values(actor="mallory")
        )
    report = (await client.get("/api/v1/audit/verify", headers=admin)).json()
    assert report["intact"] is False
    assert report["first_bad_seq"] == 1
    assert report["problem"] == "Record 1 was altered after it was written."


async def test_export_is_json_lines_in_chain_order(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.get("/api/v1/audit/export", headers=admin)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]
    assert isinstance(records[0]["details"], dict)
    assert records[0]["details"]["admin"] == "admin"
