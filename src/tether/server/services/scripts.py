"""The script library: named Python scripts with a description, a parameter schema and versions.

Versions are immutable: a save that changes the source, the description or the schema adds the
next version; saving what the latest version already holds adds nothing. Deleting hides the
script (its row and versions stay), and saving the name again brings it back with a new version.
Every change is audited, a save with the whole source text (docs/adr/0015).

Sources are compiled with `compile()` to refuse syntax errors early; nothing here ever runs them.
"""

import builtins
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.protocol import Permission, Tier, tier_refusal
from tether.protocol.action_names import SCRIPT_RUN
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound
from tether.server.services.access import user_refusal
from tether.server.services.audit import AuditLog
from tether.server.services.script_params import check_params, check_schema
from tether.server.services.users import User
from tether.server.store.db import as_utc, utcnow
from tether.server.store.tables import script_versions, scripts

MAX_NAME = 128
MAX_SOURCE_BYTES = 1024 * 1024
MAX_DESCRIPTION = 2000
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
RUN_ACTION = SCRIPT_RUN

NAME_RULE = (
    "A script name is 1 to 128 printable characters, with no slash, backslash or surrounding "
    "spaces, and not only dots."
)
EDIT_NO_PERMISSION = (
    "You need an Active Response tier (the script tier) to change the script "
    "library, because its scripts run as root on endpoints."
)
LIBRARY_CHANGE = "changing the script library"
EDIT_NO_SECOND_FACTOR = (
    "Your session has not passed the second factor; log in with your authenticator code "
    "to change the script library."
)


def check_script_name(name: str) -> str:
    """`name` if it can name a script; Invalid otherwise.

    Names appear in URLs, file names and terminals: no path separators, no control or other
    unprintable characters, nothing a URL would normalise away ("." and "..").
    """
    if (
        not 1 <= len(name) <= MAX_NAME
        or not name.isprintable()
        or "/" in name
        or "\\" in name
        or name != name.strip()
        or set(name) == {"."}
    ):
        raise Invalid(NAME_RULE)
    return name


def check_source(source: str) -> None:
    """Refuse a source that is too large or does not compile (compiled only, never run)."""
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise Invalid("The script is larger than 1 MiB.")
    try:
        compile(source, "<script>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        message = (exc.msg or "invalid syntax").rstrip(".")
        if exc.lineno:
            raise Invalid(
                f"The script has a syntax error on line {exc.lineno}: {message}."
            ) from exc
        raise Invalid(f"The script has a syntax error: {message}.") from exc
    except ValueError as exc:  # a NUL character, on Python 3.11
        raise Invalid("The script has a syntax error: it contains a null character.") from exc
    except (RecursionError, MemoryError) as exc:
        raise Invalid("The script is nested too deeply to compile.") from exc


def check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise Invalid("A script description is at most 2000 characters.")
    return description


def editor_refusal(user: User) -> str | None:
    """Why `user` may not change the library, or None: the bar of running a script."""
    if Permission.ACTIVE_RESPONSE not in user.permissions:
        return EDIT_NO_PERMISSION
    # Respond-tier holders run library scripts as root: what they run is what a script-tier
    # holder wrote, so writing the library is the script tier's.
    if (refusal := tier_refusal(user.username, user.tier, Tier.SCRIPT, LIBRARY_CHANGE)) is not None:
        return refusal
    if not user.mfa_verified:
        return EDIT_NO_SECOND_FACTOR
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ScriptVersion:
    """One version of a script, whole."""

    name: str
    version: int
    description: str
    parameters: dict[str, Any]
    source: str
    sha256: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class ScriptSummary:
    """A version without its source, for listings."""

    name: str
    version: int
    description: str
    parameters: dict[str, Any]
    sha256: str
    created_by: str
    created_at: datetime


def _summary(name: str, row: Any) -> ScriptSummary:
    return ScriptSummary(
        name=name,
        version=int(row.version),
        description=row.description,
        parameters=json.loads(row.parameters),
        sha256=row.sha256,
        created_by=row.created_by,
        created_at=as_utc(row.created_at),  # type: ignore[arg-type]
    )


def _version(name: str, row: Any) -> ScriptVersion:
    return ScriptVersion(**_summary(name, row).__dict__, source=row.source)


async def _latest_row(conn: AsyncConnection, script_id: int) -> Any:
    return (
        await conn.execute(
            select(script_versions)
            .where(script_versions.c.script_id == script_id)
            .order_by(script_versions.c.version.desc())
            .limit(1)
        )
    ).first()


class ScriptLibrary:
    """Lists, reads, saves and deletes library scripts; checks run parameters."""

    def __init__(self, engine: AsyncEngine, audit: AuditLog) -> None:
        self._engine = engine
        self._audit = audit

    async def _live_id(self, conn: AsyncConnection, name: str) -> int:
        found = (
            await conn.execute(
                select(scripts.c.id).where(scripts.c.name == name, scripts.c.deleted_at.is_(None))
            )
        ).scalar()
        if found is None:
            raise NotFound(f"No script is named {name!r}.")
        return int(found)

    async def exists(self, name: str) -> bool:
        """Whether the name was ever taken, deleted scripts included."""
        async with self._engine.connect() as conn:
            found = (await conn.execute(select(scripts.c.id).where(scripts.c.name == name))).first()
        return found is not None

    async def list(self) -> list[ScriptSummary]:
        """The latest version of every script that is not deleted, by name."""
        latest = (
            select(
                script_versions.c.script_id, func.max(script_versions.c.version).label("version")
            )
            .group_by(script_versions.c.script_id)
            .subquery()
        )
        query = (
            select(scripts.c.name, script_versions)
            .join(latest, latest.c.script_id == scripts.c.id)
            .join(
                script_versions,
                (script_versions.c.script_id == latest.c.script_id)
                & (script_versions.c.version == latest.c.version),
            )
            .where(scripts.c.deleted_at.is_(None))
            .order_by(scripts.c.name)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_summary(r.name, r) for r in rows]

    async def get(self, name: str, version: int | None = None) -> ScriptVersion:
        """Version `version` of the script, or its latest one."""
        async with self._engine.connect() as conn:
            script_id = await self._live_id(conn, name)
            if version is None:
                row = await _latest_row(conn, script_id)
            else:
                row = (
                    await conn.execute(
                        select(script_versions).where(
                            script_versions.c.script_id == script_id,
                            script_versions.c.version == version,
                        )
                    )
                ).first()
        if row is None:
            raise NotFound(f"Script {name!r} has no version {version}.")
        return _version(name, row)

    async def history(self, name: str) -> "builtins.list[ScriptSummary]":
        """Every version of the script, oldest first."""
        async with self._engine.connect() as conn:
            script_id = await self._live_id(conn, name)
            rows = (
                await conn.execute(
                    select(script_versions)
                    .where(script_versions.c.script_id == script_id)
                    .order_by(script_versions.c.version)
                )
            ).all()
        return [_summary(name, r) for r in rows]

    async def _claim(self, conn: AsyncConnection, name: str, actor: str) -> tuple[int, bool]:
        """The script's id, row-locked, creating the row when the name is new; the flag says
        the script was deleted."""
        query = (
            select(scripts.c.id, scripts.c.deleted_at)
            .where(scripts.c.name == name)
            .with_for_update()
        )
        row = (await conn.execute(query)).first()
        if row is not None:
            return int(row.id), row.deleted_at is not None
        try:
            async with conn.begin_nested():
                result = await conn.execute(
                    insert(scripts).values(name=name, created_by=actor, created_at=utcnow())
                )
            return int(result.inserted_primary_key[0]), False  # type: ignore[index]
        except IntegrityError:
            # Another process created it between the read and the insert: use theirs.
            row = (await conn.execute(query)).one()
            return int(row.id), row.deleted_at is not None

    async def save(
        self,
        name: str,
        source: str,
        description: str,
        parameters: dict[str, Any] | None,
        *,
        actor: str,
        source_addr: str,
    ) -> tuple[ScriptVersion, bool]:
        """Store a new version; returns it and True, or the latest and False when it already
        holds this source, description and schema.

        `parameters` None keeps the latest version's schema (an empty one for a new script).
        """
        check_script_name(name)
        check_description(description)
        schema_text = None if parameters is None else _canonical(check_schema(parameters))
        check_source(source)
        digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        try:
            async with self._audit.transaction() as tx:
                conn = tx.conn
                script_id, deleted = await self._claim(conn, name, actor)
                latest = await _latest_row(conn, script_id)
                if schema_text is None:
                    schema_text = latest.parameters if latest else _canonical(EMPTY_SCHEMA)
                if (
                    latest is not None
                    and not deleted
                    and (latest.sha256, latest.description, latest.parameters)
                    == (digest, description, schema_text)
                ):
                    return _version(name, latest), False
                number = latest.version + 1 if latest is not None else 1
                await conn.execute(
                    insert(script_versions).values(
                        script_id=script_id,
                        version=number,
                        source=source,
                        description=description,
                        parameters=schema_text,
                        sha256=digest,
                        created_by=actor,
                        created_at=utcnow(),
                    )
                )
                if deleted:
                    await conn.execute(
                        update(scripts).where(scripts.c.id == script_id).values(deleted_at=None)
                    )
                await tx.record(
                    "script.save",
                    actor=actor,
                    target=f"script:{name}",
                    source=source_addr,
                    details={
                        "name": name,
                        "version": number,
                        "sha256": digest,
                        "description": description,
                        "parameters": json.loads(schema_text),
                        "source": source,
                        "restored": deleted,
                    },
                )
        except IntegrityError as exc:
            raise Conflict(
                f"Script {name!r} was saved by someone else at the same moment; save again."
            ) from exc
        return await self.get(name, number), True

    async def delete(self, name: str, *, actor: str, source_addr: str) -> None:
        """Hide the script; its versions stay in the database and in the audit log."""
        async with self._audit.transaction() as tx:
            script_id = await self._live_id(tx.conn, name)
            latest = await _latest_row(tx.conn, script_id)
            await tx.conn.execute(
                update(scripts).where(scripts.c.id == script_id).values(deleted_at=utcnow())
            )
            await tx.record(
                "script.delete",
                actor=actor,
                target=f"script:{name}",
                source=source_addr,
                details={
                    "name": name,
                    "latest_version": int(latest.version) if latest else None,
                    "sha256": latest.sha256 if latest else None,
                },
            )

    async def validate_params(self, name: str, version: int | None, params: Any) -> dict[str, Any]:
        """`params` checked against the schema of that version, defaults filled in."""
        script = await self.get(name, version)
        return check_params(script.parameters, params)

    async def run_args(
        self, user: User, action: str, name: str, version: int | None, args: dict[str, Any]
    ) -> dict[str, Any]:
        """The `script.run` arguments for a library script: its source, the checked parameters
        and "Name vN", resolved now so the submission's audit record holds the text that runs."""
        if action != RUN_ACTION:
            raise Invalid(f"A library script can only be submitted with the {RUN_ACTION} action.")
        if (refusal := user_refusal(user)) is not None:
            raise Forbidden(refusal)
        if "source" in args:
            raise Invalid("Give either a library script or args.source, not both.")
        script = await self.get(name, version)
        params = check_params(script.parameters, args.get("params", {}))
        return {
            **args,
            "source": script.source,
            "params": params,
            "name": f"{script.name} v{script.version}",
        }
