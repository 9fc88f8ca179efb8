"""The web UI in process: the API tests' platform, a browser-like client over HTTPS (the
session cookie is Secure, so plain http would never send it back), and a page login."""

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from tether.server.app import create_app
from tether.server.services.platform import Platform

from ..api.conftest import (  # noqa: F401 (fixtures)
    admin_password,
    admin_secret,
    platform,
    platform_template,
    unused_code,
)

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def browser(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    transport = httpx.ASGITransport(app=create_app(platform))
    async with httpx.AsyncClient(transport=transport, base_url="https://tether.test") as http:
        yield http


def csrf_of(html: str) -> str:
    found = CSRF_FIELD.search(html)
    assert found is not None, "the page has no CSRF field"
    return found.group(1)


async def web_login(
    browser: httpx.AsyncClient,
    platform: Platform,  # noqa: F811
    username: str,
    password: str,
    secret: str | None = None,
) -> httpx.Response:
    """Both login steps through the pages; returns the last answer (a redirect when it worked)."""
    page = await browser.get("/login")
    response = await browser.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(page.text)},
    )
    if response.headers.get("location") == "/login/code":
        assert secret is not None, f"{username} needs a second factor"
        page = await browser.get("/login/code")
        code = await unused_code(platform, username, secret)
        response = await browser.post(
            "/login/code", data={"code": code, "csrf_token": csrf_of(page.text)}
        )
    return response


@pytest.fixture
async def admin_browser(
    browser: httpx.AsyncClient,
    platform: Platform,  # noqa: F811
    admin_password: str,  # noqa: F811
    admin_secret: str,  # noqa: F811
) -> httpx.AsyncClient:
    """The browser, logged in as the first admin (admin and responder, second factor passed)."""
    response = await web_login(browser, platform, "admin", admin_password, admin_secret)
    assert response.headers.get("location") == "/active-response", response.text
    return browser
