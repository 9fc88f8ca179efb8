"""The script library: versions, identical saves, refusals, soft delete, audit, run parameters."""

import asyncio
import hashlib
import re
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import Role
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound
from tether.server.services.audit import AuditLog
from tether.server.services.script_params import check_params, check_schema
from tether.server.services.scripts import (
    EDIT_NO_PERMISSION,
    EDIT_NO_SECOND_FACTOR,
    ScriptLibrary,
    editor_refusal,
)
from tether.server.services.users import User
from tether.server.store.tables import script_versions, scripts

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pid": {"type": "integer", "description": "Process id"},
        "signal": {"type": "string", "enum": ["TERM", "KILL"], "default": "TERM"},
        "ratio": {"type": "number"},
        "dry_run": {"type": "boolean", "default": False},
        "paths": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["pid"],
    "additionalProperties": False,
}
SOURCE = "from tether import script\nprint('hello')\n"


@pytest.fixture
def library(engine: AsyncEngine, audit: AuditLog) -> ScriptLibrary:
    return ScriptLibrary(engine, audit)


async def save(
    library: ScriptLibrary,
    name: str = "kill",
    source: str = SOURCE,
    description: str = "Kill a process",
    parameters: dict[str, Any] | None = SCHEMA,
    actor: str = "alice",
) -> tuple[int, bool]:
    saved, created = await library.save(
        name, source, description, parameters, actor=actor, source_addr="10.0.0.1 test"
    )
    return saved.version, created


async def records(audit: AuditLog, action: str) -> list[dict[str, Any]]:
    return [r.to_json() async for r in audit.iter_records() if r.action == action]


async def test_saves_make_versions_and_the_latest_is_listed(library: ScriptLibrary) -> None:
    assert await save(library) == (1, True)
    assert await save(library, source=SOURCE + "print(2)\n", actor="bob") == (2, True)
    assert await save(library, description="Kill it") == (3, True)
    assert await save(library, parameters={"type": "object", "properties": {}}) == (4, True)
    await save(library, name="other")

    latest = await library.get("kill")
    assert (latest.version, latest.description, latest.parameters) == (
        4,
        "Kill a process",
        {"type": "object", "properties": {}},
    )
    assert (await library.get("kill", 3)).description == "Kill it"
    first = await library.get("kill", 1)
    assert (first.source, first.created_by) == (SOURCE, "alice")
    assert first.sha256 == hashlib.sha256(SOURCE.encode()).hexdigest()
    assert (await library.get("kill", 2)).created_by == "bob"
    assert [(s.name, s.version) for s in await library.list()] == [("kill", 4), ("other", 1)]
    assert [v.version for v in await library.history("kill")] == [1, 2, 3, 4]
    with pytest.raises(NotFound, match=re.escape("Script 'kill' has no version 9.")):
        await library.get("kill", 9)
    with pytest.raises(NotFound, match=re.escape("No script is named 'ghost'.")):
        await library.history("ghost")


async def test_identical_save_returns_the_latest_without_a_new_version(
    library: ScriptLibrary, engine: AsyncEngine, audit: AuditLog
) -> None:
    await save(library)
    assert await save(library, actor="bob") == (1, False)
    # No schema given: the latest one is kept, so this is identical too.
    assert await save(library, parameters=None) == (1, False)
    async with engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(script_versions))).scalar()
    assert count == 1
    assert len(await records(audit, "script.save")) == 1
    assert (await library.get("kill")).created_by == "alice"


async def test_a_new_script_without_a_schema_takes_no_parameters(library: ScriptLibrary) -> None:
    await save(library, parameters=None)
    assert (await library.get("kill")).parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(:\n    pass\n", "The script has a syntax error on line 1: invalid syntax."),
        ("x = 1\nif x\n    pass\n", "The script has a syntax error on line 2: expected ':'."),
        ("return 5\n", "The script has a syntax error on line 1: 'return' outside function."),
        ("x = 1\0\n", "The script has a syntax error"),
        ("x = 1\n" + "#" * (1024 * 1024), "The script is larger than 1 MiB."),
    ],
)
async def test_sources_that_do_not_compile_are_refused(
    library: ScriptLibrary, audit: AuditLog, source: str, message: str
) -> None:
    with pytest.raises(Invalid, match=re.escape(message)):
        await save(library, source=source)
    assert await library.list() == []
    assert await records(audit, "script.save") == []


async def test_compiling_never_runs_the_source(library: ScriptLibrary, tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    await save(library, source=f"open({str(marker)!r}, 'w').close()\n")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ([], 'must be a JSON object with "type": "object"'),
        ({"type": "array", "properties": {}}, 'must be a JSON object with "type": "object"'),
        ({"type": "object"}, 'needs "properties"'),
        ({"type": "object", "properties": {"a": {}}}, "Parameter 'a' needs a type"),
        ({"type": "object", "properties": {"a": {"type": "object"}}}, "needs a type"),
        (
            {"type": "object", "properties": {"a": {"type": "array"}}},
            "Parameter 'a' is an array, so it needs",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "string", "format": "x"}}},
            "Parameter 'a' uses 'format', which the library does not check",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "pattern": "x"}}},
            "Parameter 'a' uses pattern, which applies to strings only.",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}},
            "The pattern of parameter 'a' is not a valid regular expression.",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "enum": ["x"]}}},
            "Every enum value of parameter 'a' must be an integer.",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "default": "1"}}},
            "The default of parameter 'a' must be an integer.",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "enum": ["x"], "default": "y"}},
            },
            "The default of parameter 'a' must be one of its enum values.",
        ),
        (
            {"type": "object", "properties": {}, "required": ["a"]},
            "Required parameter 'a' is not among the properties.",
        ),
        (
            {"type": "object", "properties": {}, "additionalProperties": {}},
            '"additionalProperties" must be true or false.',
        ),
        ({"type": "object", "properties": {}, "oneOf": []}, "uses 'oneOf'"),
    ],
)
async def test_schemas_the_library_cannot_check_are_refused(
    library: ScriptLibrary, schema: Any, message: str
) -> None:
    with pytest.raises(Invalid, match=re.escape(message)):
        await save(library, parameters=schema)
    assert await library.list() == []


@pytest.mark.parametrize(
    "name", ["", "../x", "a/b", "a\\b", "\x1b[2J", "tab\there", "x" * 129, " x", "x ", ".", ".."]
)
async def test_bad_names_are_refused_in_one_sentence(library: ScriptLibrary, name: str) -> None:
    with pytest.raises(Invalid) as refused:
        await save(library, name=name)
    assert str(refused.value) == (
        "A script name is 1 to 128 printable characters, with no slash, backslash or "
        "surrounding spaces, and not only dots."
    )


async def test_names_may_hold_spaces_dots_and_letters_of_any_script(
    library: ScriptLibrary,
) -> None:
    for name in ("Process control", "v1.2 triage", "Prozessübersicht", "x" * 128):
        await save(library, name=name)
    assert len(await library.list()) == 4


async def test_long_descriptions_are_refused(library: ScriptLibrary) -> None:
    with pytest.raises(Invalid, match="at most 2000 characters"):
        await save(library, description="d" * 2001)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"pid": 42}, {"pid": 42, "signal": "TERM", "dry_run": False}),
        ({"pid": 42.0, "signal": "KILL"}, {"pid": 42, "signal": "KILL", "dry_run": False}),
        (
            {"pid": 1, "ratio": 0.5, "dry_run": True, "paths": ["/tmp", "/var"]},
            {"pid": 1, "signal": "TERM", "ratio": 0.5, "dry_run": True, "paths": ["/tmp", "/var"]},
        ),
        ({"pid": 1, "ratio": 3}, {"pid": 1, "signal": "TERM", "ratio": 3, "dry_run": False}),
    ],
)
async def test_valid_params_come_back_with_defaults(
    library: ScriptLibrary, params: dict[str, Any], expected: dict[str, Any]
) -> None:
    await save(library)
    assert await library.validate_params("kill", None, params) == expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "Parameter 'pid' is required."),
        ({"pid": "42"}, "Parameter 'pid' must be an integer."),
        ({"pid": True}, "Parameter 'pid' must be an integer."),
        ({"pid": 4.5}, "Parameter 'pid' must be an integer."),
        ({"pid": 1, "signal": "HUP"}, 'Parameter \'signal\' must be one of "TERM", "KILL".'),
        ({"pid": 1, "ratio": "fast"}, "Parameter 'ratio' must be a number."),
        ({"pid": 1, "ratio": False}, "Parameter 'ratio' must be a number."),
        ({"pid": 1, "dry_run": 1}, "Parameter 'dry_run' must be true or false."),
        ({"pid": 1, "paths": "/tmp"}, "Parameter 'paths' must be a list of strings."),
        ({"pid": 1, "paths": ["/tmp", 3]}, "Parameter 'paths' must be a list of strings."),
        ({"pid": 1, "extra": 1}, "Parameter 'extra' is not one this script takes."),
        ([1], "The parameters must be a JSON object of names and values."),
    ],
)
async def test_bad_params_are_refused_in_one_sentence(
    library: ScriptLibrary, params: Any, message: str
) -> None:
    await save(library)
    with pytest.raises(Invalid) as refused:
        await library.validate_params("kill", 1, params)
    assert str(refused.value) == message


async def test_params_are_checked_against_the_version_asked_for(library: ScriptLibrary) -> None:
    await save(library)
    await save(library, parameters={"type": "object", "properties": {"path": {"type": "string"}}})
    assert await library.validate_params("kill", 2, {"path": "/x", "more": 1}) == {
        "path": "/x",
        "more": 1,
    }
    with pytest.raises(Invalid, match="'path' is not one this script takes"):
        await library.validate_params("kill", 1, {"path": "/x"})
    with pytest.raises(Invalid, match="'pid' is required"):
        await library.validate_params("kill", 1, {})


async def test_delete_hides_the_script_keeps_its_versions_and_is_audited(
    library: ScriptLibrary, engine: AsyncEngine, audit: AuditLog
) -> None:
    await save(library)
    await save(library, source="print(2)\n")
    await library.delete("kill", actor="bob", source_addr="10.0.0.2 test")
    assert await library.list() == []
    for read in (library.get("kill"), library.history("kill"), library.get("kill", 1)):
        with pytest.raises(NotFound, match=re.escape("No script is named 'kill'.")):
            await read
    with pytest.raises(NotFound):
        await library.delete("kill", actor="bob", source_addr="s")
    async with engine.connect() as conn:
        row = (await conn.execute(select(scripts))).one()
        kept = (await conn.execute(select(func.count()).select_from(script_versions))).scalar()
    assert row.deleted_at is not None
    assert kept == 2
    assert await library.exists("kill")
    (record,) = await records(audit, "script.delete")
    assert (record["actor"], record["target"], record["source"]) == (
        "bob",
        "script:kill",
        "10.0.0.2 test",
    )
    assert record["details"] == {
        "name": "kill",
        "latest_version": 2,
        "sha256": hashlib.sha256(b"print(2)\n").hexdigest(),
    }


async def test_saving_a_deleted_name_restores_it_with_the_next_version(
    library: ScriptLibrary, audit: AuditLog
) -> None:
    await save(library)
    await library.delete("kill", actor="bob", source_addr="s")
    # Identical to the last version, yet a new one: the restore is a change on record.
    assert await save(library, actor="carol") == (2, True)
    assert [v.version for v in await library.history("kill")] == [1, 2]
    assert (await library.get("kill")).created_by == "carol"
    assert (await records(audit, "script.save"))[-1]["details"]["restored"] is True


async def test_every_save_is_audited_with_the_full_source(
    library: ScriptLibrary, audit: AuditLog
) -> None:
    big = "x = 1\n" + "# padding\n" * 20_000
    await save(library, source=big)
    await save(library, source=SOURCE)
    first, second = await records(audit, "script.save")
    assert (first["actor"], first["target"], first["source"]) == (
        "alice",
        "script:kill",
        "10.0.0.1 test",
    )
    assert first["details"] == {
        "name": "kill",
        "version": 1,
        "sha256": hashlib.sha256(big.encode()).hexdigest(),
        "description": "Kill a process",
        "parameters": SCHEMA,
        "source": big,
        "restored": False,
    }
    assert (second["details"]["version"], second["details"]["source"]) == (2, SOURCE)
    assert (await audit.verify()).intact


def _user(roles: set[str], mfa_verified: bool) -> User:
    return User(
        id=1, username="u", roles=frozenset(roles), disabled=False, mfa_verified=mfa_verified
    )


def test_only_responders_with_a_second_factor_may_edit() -> None:
    assert editor_refusal(_user({Role.SCRIPT}, True)) is None
    assert editor_refusal(_user({Role.SCRIPT}, False)) == EDIT_NO_SECOND_FACTOR
    assert editor_refusal(_user({Role.ANALYST}, True)) == EDIT_NO_PERMISSION
    assert editor_refusal(_user({Role.ADMIN}, True)) == EDIT_NO_PERMISSION


async def test_run_args_carry_the_library_source_and_checked_params(
    library: ScriptLibrary,
) -> None:
    await save(library)
    await save(library, source="print('v2')\n")
    responder = _user({Role.SCRIPT}, True)
    args = await library.run_args(responder, "script.run", "kill", 1, {"params": {"pid": 7}})
    assert args == {
        "source": SOURCE,
        "params": {"pid": 7, "signal": "TERM", "dry_run": False},
        "name": "kill v1",
    }
    latest = await library.run_args(responder, "script.run", "kill", None, {"params": {"pid": 7}})
    assert (latest["source"], latest["name"]) == ("print('v2')\n", "kill v2")


async def test_run_args_refusals(library: ScriptLibrary) -> None:
    await save(library)
    responder = _user({Role.SCRIPT}, True)
    with pytest.raises(Invalid, match=re.escape("only be submitted with the script.run action")):
        await library.run_args(responder, "system.noop", "kill", None, {})
    with pytest.raises(Forbidden, match="Active Response tier"):
        await library.run_args(_user({Role.ANALYST}, True), "script.run", "kill", None, {})
    with pytest.raises(Forbidden, match="second factor"):
        await library.run_args(_user({Role.SCRIPT}, False), "script.run", "kill", None, {})
    with pytest.raises(Invalid, match="not both"):
        await library.run_args(responder, "script.run", "kill", None, {"source": "x"})
    with pytest.raises(Invalid, match="'pid' is required"):
        await library.run_args(responder, "script.run", "kill", None, {})
    with pytest.raises(NotFound):
        await library.run_args(responder, "script.run", "ghost", None, {})


async def test_concurrent_saves_of_a_new_name_get_distinct_versions(
    library: ScriptLibrary,
) -> None:
    outcomes = await asyncio.gather(
        *(save(library, source=f"print({i})\n") for i in range(4)), return_exceptions=True
    )
    versions = sorted(o[0] for o in outcomes if isinstance(o, tuple))
    assert versions == list(range(1, len(versions) + 1))
    assert [v.version for v in await library.history("kill")] == versions
    assert all(isinstance(o, tuple | Conflict) for o in outcomes), outcomes


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"name": ""}, "Parameter 'name' must be at least 1 characters."),
        ({"name": "x" * 9}, "Parameter 'name' must be at most 8 characters."),
        ({"sha": "zz"}, "Parameter 'sha' does not have the expected form."),
        ({"pid": 0}, "Parameter 'pid' must be at least 1."),
        ({"pid": 70000}, "Parameter 'pid' must be at most 65535."),
    ],
)
def test_bounds_are_checked(params: dict[str, object], message: str) -> None:
    schema = check_schema(
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 8},
                "sha": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "pid": {"type": "integer", "minimum": 1, "maximum": 65535},
            },
        }
    )
    with pytest.raises(Invalid) as caught:
        check_params(schema, params)
    assert str(caught.value) == message
    assert check_params(schema, {"name": "sshd", "pid": 22}) == {"name": "sshd", "pid": 22}
