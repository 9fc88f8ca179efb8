"""Every page needs a session unless public, and names the permission it needs: the web's
counterpart of tests/server/api/test_routes.py, enumerated from the application."""

import httpx
from starlette.routing import BaseRoute

from tether.server.app import API_PREFIX, PUBLIC_PATHS, create_app
from tether.server.services.platform import Platform

from ..api.test_routes import concrete, http_routes, required_permission
from .conftest import csrf_of, web_login

# Pages about the caller's own session, open to any signed-in user.
SELF_SERVICE = {
    ("POST", "/logout"),
    ("GET", "/mfa/enroll"),
    ("POST", "/mfa/enroll"),
    ("POST", "/mfa/confirm"),
    ("POST", "/mfa/cancel"),
    # Your own sessions; another user's need users.manage, checked in the handler.
    ("GET", "/sessions"),
    ("POST", "/sessions/{session_id}/end"),
    # The step-up prompt renews your own session's check.
    ("POST", "/settings/step-up"),
}


def _pages(platform: Platform) -> list[tuple[str, str, BaseRoute]]:
    routes = http_routes(create_app(platform))
    pages = [
        r for r in routes if not r[1].startswith(f"{API_PREFIX}/") and r[1] not in PUBLIC_PATHS
    ]
    pages = [r for r in pages if r[1] not in ("/metrics", "/healthz")]
    assert len(pages) >= 8, "the enumeration found too few pages to mean anything"
    return pages


async def test_every_page_sends_a_browser_without_a_session_to_login(
    platform: Platform, browser: httpx.AsyncClient
) -> None:
    for method, path, _ in _pages(platform):
        response = await browser.request(method, concrete(path))
        assert response.status_code == 303, (method, path)
        assert response.headers["location"] == "/login", (method, path)


async def test_every_page_names_a_permission_and_refuses_users_without_it(
    platform: Platform, browser: httpx.AsyncClient
) -> None:
    await platform.users.create("norole", "a long enough password", roles=set())
    await web_login(browser, platform, "norole", "a long enough password")
    token = csrf_of((await browser.get("/mfa/enroll")).text)
    for method, path, route in _pages(platform):
        if (method, path) in SELF_SERVICE:
            continue
        permission = required_permission(route)
        assert permission is not None, f"{method} {path} names no permission"
        response = await browser.request(method, concrete(path), headers={"X-CSRF-Token": token})
        assert response.status_code == 403, (method, path)
        assert f"You need the {permission.value} permission for this page." in response.text
