"""The script library: read by analysts and responders, changed by responders only.

Library scripts run as root on endpoints, so changing one needs what running one needs: the
Active Response role and a session that passed the second factor (docs/adr/0015).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, require, source_of
from tether.server.api.script_schemas import (
    ScriptOut,
    ScriptSave,
    ScriptSavedOut,
    ScriptSummaryOut,
    ScriptVersionOut,
)
from tether.server.errors import Forbidden
from tether.server.services.scripts import editor_refusal
from tether.server.services.users import User

router = APIRouter(tags=["scripts"])

Reader = Annotated[User, Depends(require(Permission.RESULTS_READ))]
Version = Annotated[int, Path(ge=1)]


async def _editor(user: Annotated[User, Depends(require(Permission.ACTIVE_RESPONSE))]) -> User:
    if (refusal := editor_refusal(user)) is not None:
        raise Forbidden(refusal)
    return user


Editor = Annotated[User, Depends(_editor)]


@router.get("/scripts", response_model=list[ScriptSummaryOut])
async def list_scripts(platform: PlatformDep, _user: Reader) -> list[ScriptSummaryOut]:
    """The latest version of every script, without the source."""
    return [ScriptSummaryOut.of(s) for s in await platform.scripts.list()]


@router.get("/scripts/{name}", response_model=ScriptOut)
async def get_script(name: str, platform: PlatformDep, _user: Reader) -> ScriptOut:
    """The latest version, with its source."""
    return ScriptOut.of(await platform.scripts.get(name))


@router.get("/scripts/{name}/versions", response_model=list[ScriptVersionOut])
async def list_versions(name: str, platform: PlatformDep, _user: Reader) -> list[ScriptVersionOut]:
    """Every version, oldest first, without the sources."""
    return [
        ScriptVersionOut(
            version=v.version,
            description=v.description,
            sha256=v.sha256,
            created_by=v.created_by,
            created_at=v.created_at,
        )
        for v in await platform.scripts.history(name)
    ]


@router.get("/scripts/{name}/versions/{version}", response_model=ScriptOut)
async def get_version(
    name: str, version: Version, platform: PlatformDep, _user: Reader
) -> ScriptOut:
    return ScriptOut.of(await platform.scripts.get(name, version))


@router.put(
    "/scripts/{name}",
    response_model=ScriptSavedOut,
    status_code=201,
    responses={200: {"model": ScriptSavedOut, "description": "Unchanged: no new version"}},
)
async def save_script(
    name: str,
    body: ScriptSave,
    request: Request,
    response: Response,
    platform: PlatformDep,
    user: Editor,
) -> ScriptSavedOut:
    """Save a new version (201); saving what the latest version holds changes nothing (200)."""
    saved, created = await platform.scripts.save(
        name,
        body.source,
        body.description,
        body.parameters,
        actor=user.actor,
        source_addr=source_of(request),
    )
    if not created:
        response.status_code = 200
    return ScriptSavedOut.of(saved, new_version=created)


@router.delete("/scripts/{name}", status_code=204, response_class=Response)
async def delete_script(
    name: str, request: Request, platform: PlatformDep, user: Editor
) -> Response:
    """Hide the script from the library; its versions stay on record."""
    await platform.scripts.delete(name, actor=user.actor, source_addr=source_of(request))
    return Response(status_code=204)
