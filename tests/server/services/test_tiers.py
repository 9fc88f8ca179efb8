"""Active Response tiers: the table, the refusal sentences, submission, the team, the migration."""

import json
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import ACTIONS, Role, Tier, tier_refusal
from tether.protocol.actions import tier_needed
from tether.protocol.shell import cat_command, python_command
from tether.server.errors import Forbidden, Invalid
from tether.server.services.audit import AuditLog
from tether.server.services.checkpoints import CheckpointSigner
from tether.server.services.team import ROLE_MIGRATION, Team
from tether.server.services.users import ONE_TIER, User, Users
from tether.server.store.db import create_engine, sqlite_url, sync_url
from tether.server.store.migrate import alembic_config, upgrade
from tether.server.store.tables import audit_records, role_migrations, user_roles
from tether.server.store.tables import users as users_table

from .test_jobs import Harness
from .test_team import PASSWORD, Recorder, acting


@pytest.fixture
def h(engine: AsyncEngine, audit: AuditLog) -> Harness:
    return Harness(engine, audit)


@pytest.fixture
def lost(users: Users) -> Recorder:
    recorder = Recorder()
    users.on_access_lost(recorder)
    return recorder


def tiered(name: str, tier: Tier | None) -> User:
    roles = frozenset({tier.value}) if tier is not None else frozenset({"analyst"})
    return User(7, name, roles, False, mfa_verified=True)


async def records(engine: AsyncEngine, action: str) -> list[Any]:
    async with engine.connect() as conn:
        query = select(audit_records).where(audit_records.c.action == action)
        return list((await conn.execute(query.order_by(audit_records.c.seq))).all())


def test_every_response_action_declares_a_tier_and_a_name_for_refusals() -> None:
    for spec in ACTIONS.values():
        if spec.response:
            assert spec.label, f"{spec.name} has no label for its refusal sentence"
        if spec.library_tier is not None:
            assert spec.library_label, f"{spec.name} has no label for its library form"
    assert ACTIONS["processes.list"].tier is Tier.COLLECT
    assert ACTIONS["files.get"].tier is Tier.COLLECT
    assert ACTIONS["processes.kill"].tier is Tier.RESPOND
    assert ACTIONS["isolation.isolate"].tier is Tier.RESPOND
    assert ACTIONS["files.put"].tier is Tier.RESPOND
    assert ACTIONS["script.run"].tier is Tier.SCRIPT


def test_the_refusal_names_the_tier_held_and_the_tier_needed() -> None:
    assert tier_refusal("rita", Tier.COLLECT, Tier.RESPOND, "kill") == (
        "rita has the collect tier; kill needs respond."
    )
    assert tier_refusal("ann", None, Tier.COLLECT, "file list") == (
        "ann has no Active Response tier; file list needs collect."
    )
    assert tier_refusal("sam", Tier.SCRIPT, Tier.RESPOND, "kill") is None


def test_a_library_run_needs_respond_cat_collect_and_any_other_source_script() -> None:
    run = ACTIONS["script.run"]
    assert tier_needed(run, {"source": "print(1)"}, from_library=True) is Tier.RESPOND
    assert tier_needed(run, {"source": "print(1)"}, from_library=False) is Tier.SCRIPT
    assert tier_needed(run, cat_command("/etc/hosts").args, from_library=False) is Tier.COLLECT
    assert tier_needed(run, python_command("1").args, from_library=False) is Tier.SCRIPT


def test_a_script_dressed_as_cat_is_still_an_arbitrary_script() -> None:
    """The attacker's test: only the exact source `cat` builds counts as a read."""
    run = ACTIONS["script.run"]
    cat = cat_command("/etc/shadow").args["source"]
    for forged in (
        cat + "import os; os.system('id')\n",
        cat.replace("'rb'", "'ab'"),
        cat.replace("'/etc/shadow'", "__import__('os').system('id') or '/x'"),
        "import os\n" + cat.split("\n", 1)[1],
    ):
        assert tier_needed(run, {"source": forged}, from_library=False) is Tier.SCRIPT


async def test_a_collect_holder_lists_processes_but_is_refused_a_kill_in_the_chain(
    h: Harness, engine: AsyncEngine
) -> None:
    host = await h.host("web-1")
    rita = tiered("rita", Tier.COLLECT)
    batch = await h.submit([host], "processes.list", user=rita, args={})
    assert len(batch.jobs) == 1
    with pytest.raises(Forbidden) as refused:
        await h.submit([host], "processes.kill", user=rita, args={"pid": 4242})
    assert str(refused.value) == "rita has the collect tier; kill needs respond."
    (record,) = await records(engine, "job.refused")
    assert (record.actor, record.target, record.outcome) == ("rita", "processes.kill", "failure")
    assert json.loads(record.details)["reason"] == str(refused.value)


async def test_a_respond_holder_runs_library_scripts_but_no_arbitrary_source(h: Harness) -> None:
    host = await h.host("web-1")
    rosa = tiered("rosa", Tier.RESPOND)
    args = {"source": "print(1)", "params": {}, "name": "hello v1"}
    batch = await h.submit([host], "script.run", user=rosa, args=args, from_library=True)
    assert len(batch.jobs) == 1
    with pytest.raises(Forbidden) as refused:
        await h.submit([host], "script.run", user=rosa, args={"source": "print(1)"})
    assert str(refused.value) == "rosa has the respond tier; an arbitrary script needs script."
    with pytest.raises(Forbidden):
        await h.submit([host], "script.run", user=rosa, args=python_command("1").args)


async def test_granting_a_tier_replaces_the_one_held_and_lowering_it_ends_sessions(
    users: Users, team: Team, lost: Recorder, engine: AsyncEngine
) -> None:
    rita = await users.create("rita", PASSWORD, {Role.COLLECT})
    info = await team.grant_role("rita", Role.SCRIPT, by=acting("admin"), source="s")
    assert info.roles == ["script"]
    assert lost.calls == []
    info = await team.grant_role("rita", Role.RESPOND, by=acting("admin"), source="s")
    assert info.roles == ["respond"]
    assert lost.calls == [(rita.id, "active response tier lowered")]
    grants = await records(engine, "role.grant")
    assert json.loads(grants[-1].details) == {"role": "respond", "replaced": ["script"]}


async def test_a_new_user_holds_at_most_one_tier(users: Users) -> None:
    with pytest.raises(Invalid) as refused:
        await users.create("two", PASSWORD, {Role.COLLECT, Role.SCRIPT})
    assert str(refused.value) == ONE_TIER


async def test_nobody_grants_a_tier_to_themselves(users: Users, team: Team) -> None:
    await users.create("root", PASSWORD, {Role.ADMIN, Role.COLLECT})
    with pytest.raises(Forbidden):
        await team.grant_role("root", Role.SCRIPT, by=acting("root"), source="s")
    assert (await team.get("root")).roles == ["admin", "collect"]


async def test_responders_migrate_to_script_and_the_first_start_records_it_once(
    tmp_path: Path, signer: CheckpointSigner, users: Users
) -> None:
    url = sqlite_url(str(tmp_path / "old.db"))
    sync = create_sync_engine(sync_url(url))
    try:
        with sync.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn
            command.upgrade(config, "0010_enrollment_codes")
            for user_id, name, role in ((1, "rita", "responder"), (2, "ann", "analyst")):
                conn.execute(
                    text(
                        "INSERT INTO users (id, username, password_hash, disabled, created_at, "
                        "external) VALUES (:id, :name, 'x', false, '2026-12-01 00:00:00', false)"
                    ),
                    {"id": user_id, "name": name},
                )
                conn.execute(
                    text("INSERT INTO user_roles (user_id, role) VALUES (:id, :role)"),
                    {"id": user_id, "role": role},
                )
    finally:
        sync.dispose()
    upgrade(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            roles = (
                await conn.execute(
                    select(users_table.c.username, user_roles.c.role).join(users_table)
                )
            ).all()
        assert sorted(map(tuple, roles)) == [("ann", "analyst"), ("rita", "script")]
        audit = AuditLog(engine, signer)
        # The accounts service is only for ending access, which recording never does.
        team = Team(engine, audit, users)
        assert await team.record_role_migrations() == 1
        assert await team.record_role_migrations() == 0
        (record,) = await records(engine, ROLE_MIGRATION)
        details = json.loads(record.details)
        assert (details["from"], details["to"], details["users"]) == (
            "responder",
            "script",
            ["rita"],
        )
        async with engine.connect() as conn:
            seqs = (await conn.execute(select(role_migrations.c.record_seq))).scalars().all()
        assert seqs == [record.seq]
    finally:
        await engine.dispose()


def test_the_tier_migrations_undo_and_redo(tmp_path: Path) -> None:
    url = sqlite_url(str(tmp_path / "t.db"))
    upgrade(url)
    sync = create_sync_engine(sync_url(url))
    try:
        with sync.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn
            conn.execute(
                text(
                    "INSERT INTO users (id, username, password_hash, disabled, created_at, "
                    "external) VALUES (1, 'sam', 'x', false, '2026-12-01 00:00:00', false)"
                )
            )
            conn.execute(text("INSERT INTO user_roles (user_id, role) VALUES (1, 'script')"))
            command.downgrade(config, "0010_enrollment_codes")
            role = conn.execute(text("SELECT role FROM user_roles")).scalar()
            assert role == "responder"
            command.upgrade(config, "head")
            assert conn.execute(text("SELECT role FROM user_roles")).scalar() == "script"
            assert conn.execute(text("SELECT count(*) FROM service_tokens")).scalar() == 0
    finally:
        sync.dispose()
