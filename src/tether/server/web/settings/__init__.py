"""The Settings pages, admins only: Team, Device Segments, Device Configuration, Enrollment tokens,
Service tokens.

One module per page; each needs the permission its REST API counterpart needs (docs/adr/0020).
"""

from fastapi import APIRouter

from tether.server.web.settings import (
    configuration,
    enrollment,
    segments,
    service_tokens,
    step_up,
    team,
)

ROUTERS: tuple[APIRouter, ...] = (
    team.router,
    segments.router,
    configuration.router,
    enrollment.router,
    service_tokens.router,
    step_up.router,
)

__all__ = ["ROUTERS"]
