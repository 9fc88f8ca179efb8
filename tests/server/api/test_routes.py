"""Every route is authenticated unless listed in PUBLIC_PATHS; permissions refuse with 403.

Routes are enumerated from the application, so a new route added without authentication, or
without a permission check, fails here.
"""

import re

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from tether.protocol import Permission
from tether.server.app import API_PREFIX, PUBLIC_PATHS, create_app
from tether.server.services.platform import Platform

from .conftest import login

# Routes any logged-in user may call: they concern only the caller's own session.
SELF_SERVICE = {
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/api/v1/auth/whoami"),
    ("POST", "/api/v1/auth/mfa/enroll"),
    ("POST", "/api/v1/auth/mfa/confirm"),
    ("POST", "/api/v1/auth/mfa/cancel"),
    # Your own sessions: every signed-in user may list them and end the others.
    ("GET", "/api/v1/auth/sessions"),
    ("DELETE", "/api/v1/auth/sessions/{session_id}"),
}


def flattened(app: FastAPI) -> list[tuple[str | None, set[str] | None, BaseRoute]]:
    """(full path, methods, route) of every route, through included routers."""
    # FastAPI >= 0.130 keeps included routers as lazy entries in `app.routes`.
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    if iterate is None:
        return [(getattr(r, "path", None), getattr(r, "methods", None), r) for r in app.routes]
    return [(c.path, c.methods, c.original_route) for c in iterate(app.routes)]


def http_routes(app: FastAPI) -> list[tuple[str, str, BaseRoute]]:
    found: list[tuple[str, str, BaseRoute]] = []
    for path, methods, route in flattened(app):
        if path is None or methods is None:
            # A WebSocket route or a mount would escape the checks below: refuse to guess.
            assert path in PUBLIC_PATHS, f"unchecked route {route!r}"
            continue
        for method in sorted(methods):
            if method != "HEAD":
                found.append((method, path, route))
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def required_permission(route: BaseRoute) -> Permission | None:
    if not isinstance(route, APIRoute):
        return None
    pending = list(route.dependant.dependencies)
    while pending:
        dep = pending.pop()
        permission = getattr(dep.call, "permission", None)
        if isinstance(permission, Permission):
            return permission
        pending.extend(dep.dependencies)
    return None


def protected(platform: Platform) -> list[tuple[str, str, BaseRoute]]:
    """The API's non-public routes. The web pages answer a browser with redirects and HTML
    instead of 401/403 JSON; tests/server/web/test_access.py holds them to the same rules."""
    routes = [
        r
        for r in http_routes(create_app(platform))
        if r[1] not in PUBLIC_PATHS and r[1].startswith(f"{API_PREFIX}/")
    ]
    assert len(routes) >= 9, "the enumeration found too few routes to mean anything"
    return routes


async def test_every_non_public_route_needs_a_session(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    for method, path, _ in protected(platform):
        response = await client.request(method, concrete(path))
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers.get("www-authenticate") == "Bearer"
        assert response.json() == {"detail": "Log in first: this request carries no session."}


async def test_every_non_public_route_refuses_a_made_up_token(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    headers = {"authorization": "Bearer not-a-real-session"}
    for method, path, _ in protected(platform):
        response = await client.request(method, concrete(path), headers=headers)
        assert response.status_code == 401, (method, path, response.text)


async def test_every_route_names_a_permission_and_refuses_users_without_it(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    await platform.users.create("norole", "a long enough password", roles=set())
    headers = await login(client, "norole", "a long enough password")
    for method, path, route in protected(platform):
        permission = required_permission(route)
        if (method, path) in SELF_SERVICE:
            continue
        assert permission is not None, f"{method} {path} names no permission"
        response = await client.request(method, concrete(path), headers=headers)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json() == {
            "detail": f"You need the {permission.value} permission for this."
        }


async def test_self_service_routes_need_no_permission(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    await platform.users.create("norole", "a long enough password", roles=set())
    headers = await login(client, "norole", "a long enough password")
    response = await client.get("/api/v1/auth/whoami", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert (body["username"], body["roles"], body["permissions"]) == ("norole", [], [])


@pytest.mark.parametrize(
    "path", ["/healthz", "/metrics", "/api/v1/enroll/ca", "/api/v1/openapi.json"]
)
async def test_public_paths_answer_without_a_session(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200, response.text


async def test_public_paths_all_exist(platform: Platform) -> None:
    # Mounts (the web UI's /static) count: they are paths too.
    paths = {path for path, _, _ in flattened(create_app(platform))}
    assert paths >= PUBLIC_PATHS


async def test_metrics_count_connected_agents(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert "tether_agents_connected 0.0" in response.text
