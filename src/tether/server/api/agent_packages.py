"""Agent packages served by the platform (docs/adr/0052): admins build one (step-up, audited);
an endpoint fetches it by its unguessable link, without a session (the link is the key)."""

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, require_fresh, source_of
from tether.server.api.view_out import ViewOut
from tether.server.services.users import User

public = APIRouter(tags=["agent packages"])
router = APIRouter(tags=["agent packages"])

MEDIA_TYPES = {
    "deb": "application/vnd.debian.binary-package",
    "rpm": "application/x-rpm",
    "tar": "application/gzip",
}


class PackageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["deb", "rpm", "tar"]
    segment: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    uses: Annotated[int, Field(ge=1, le=100_000)] = 1
    expires_in_seconds: Annotated[int, Field(ge=60, le=365 * 86400)] = 86400


class PackageCreated(ViewOut):
    id: int
    token_id: int
    format: str
    segment: str
    uses: int
    url: str
    sha256: str
    size: int
    expires_at: datetime
    command: str


@router.post("/agent-packages", response_model=PackageCreated, status_code=201)
async def create_package(
    body: PackageCreate,
    request: Request,
    platform: PlatformDep,
    user: Annotated[User, Depends(require_fresh(Permission.ENROLLMENT_MANAGE, "agent packages"))],
) -> PackageCreated:
    """Build a package that enrolls into SEGMENT and serve it; the answer holds its secret link
    and the one-line install command, shown only this once."""
    served = await platform.agent_packages.create(
        fmt=body.format,
        segment=body.segment,
        uses=body.uses,
        lifetime=timedelta(seconds=body.expires_in_seconds),
        actor=user.actor,
        source=source_of(request),
    )
    return PackageCreated.of(served)


@public.get("/agent-packages/{link}/{filename}", response_class=FileResponse)
async def download_package(
    link: str, filename: str, request: Request, platform: PlatformDep
) -> FileResponse:
    """The package file, to whoever holds the link, while its token can still enroll."""
    found = await platform.agent_packages.fetch(link, filename, source=source_of(request))
    return FileResponse(
        found.path,
        media_type=MEDIA_TYPES[found.format],
        filename=found.filename,
        headers={"cache-control": "no-store"},
    )
