"""The Host page: one host's facts, isolation state and latest jobs."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tether.protocol import Permission
from tether.server.api.deps import PlatformDep
from tether.server.errors import NotFound
from tether.server.services.users import User
from tether.server.web.access import page_require
from tether.server.web.templating import render

router = APIRouter()
Reader = Annotated[User, Depends(page_require(Permission.HOSTS_READ))]
LATEST_JOBS = 50


@router.get("/hosts/{ref}")
async def host_page(ref: str, request: Request, platform: PlatformDep, _user: Reader) -> Response:
    try:
        host = await platform.hosts.get(ref)
    except NotFound as e:
        return render(request, "message.html", 404, heading="Host not found", message=str(e))
    jobs = await platform.jobs.find(host_id=host.id, limit=LATEST_JOBS)
    return render(request, "host.html", h=host, jobs=jobs)
