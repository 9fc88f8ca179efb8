"""Agent upgrades: the public upgrade key enrolling agents pin, and signed rollouts."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep, require, require_fresh, source_of
from tether.server.api.job_schemas import HostSelection
from tether.server.api.jobs import selection_of
from tether.server.api.view_out import ViewOut
from tether.server.services.upgrades import MAX_PARALLEL, Rollout
from tether.server.services.users import User

public = APIRouter(tags=["upgrades"])
router = APIRouter(tags=["upgrades"])

Reader = Annotated[User, Depends(require(Permission.HOSTS_READ))]
# Code execution as root on each host: admin, and a second factor passed within 5 minutes; the
# service also asks for the script tier (tether.server.services.upgrades.check_requester).
Upgrader = Annotated[User, Depends(require_fresh(Permission.HOSTS_MANAGE, "upgrading agents"))]


class UpgradeStart(HostSelection):
    """A bundle archive of the file library (by SHA-256) for hosts, a segment, or all hosts."""

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    max_parallel: Annotated[int, Field(ge=1, le=MAX_PARALLEL)] = 1


class RolloutHostOut(ViewOut):
    host_id: str
    hostname: str
    position: int
    job_id: str | None
    outcome: str | None
    error: str | None
    ended_at: datetime | None


class RolloutOut(BaseModel):
    id: str
    version: str
    sha256: str
    size: int
    max_parallel: int
    selection: str
    created_by: str
    created_at: datetime
    counts: dict[str, int]
    hosts: list[RolloutHostOut]


def rollout_out(view: Rollout) -> RolloutOut:
    return RolloutOut(
        id=view.id,
        version=view.version,
        sha256=view.sha256,
        size=view.size,
        max_parallel=view.max_parallel,
        selection=view.selection,
        created_by=view.created_by,
        created_at=view.created_at,
        counts=view.counts,
        hosts=[RolloutHostOut.of(h) for h in view.hosts],
    )


@public.get("/enroll/upgrade-key", response_class=PlainTextResponse)
async def upgrade_key(platform: PlatformDep) -> str:
    """The Ed25519 public key (hex) an enrolling agent pins to check upgrades with."""
    return platform.upgrades.signer.public_hex()


@router.post("/agent-upgrades", response_model=RolloutOut, status_code=201)
async def start_upgrade(
    body: UpgradeStart, request: Request, platform: PlatformDep, user: Upgrader
) -> RolloutOut:
    """Sign the bundle, record the request, send it at most `max_parallel` hosts at a time."""
    view = await platform.upgrades.start(
        user,
        sha256=body.sha256,
        selection=await selection_of(platform, body),
        max_parallel=body.max_parallel,
        source=source_of(request),
    )
    return rollout_out(view)


@router.get("/agent-upgrades", response_model=list[RolloutOut])
async def list_upgrades(
    platform: PlatformDep,
    _user: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[RolloutOut]:
    return [rollout_out(v) for v in await platform.upgrades.find(limit)]


@router.get("/agent-upgrades/{rollout_id}", response_model=RolloutOut)
async def get_upgrade(rollout_id: str, platform: PlatformDep, _user: Reader) -> RolloutOut:
    return rollout_out(await platform.upgrades.get(rollout_id))
