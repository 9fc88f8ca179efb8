"""The analyst API in process: a platform built on a fresh data directory, an httpx client."""

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tether.protocol import Role
from tether.server.app import create_app
from tether.server.auth.totp import new_secret, to_base32
from tether.server.config import Settings
from tether.server.services.bootstrap import initialise
from tether.server.services.platform import Platform
from tether.server.store.tables import users

from ..conftest import use_fast_hashing
from ..support import code_after


@dataclass(frozen=True)
class Template:
    data_dir: Path
    admin_password: str
    admin_mfa_secret: str
    recovery_codes: list[str]


def _clean_settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, hostname="tether.test")


@pytest.fixture(scope="session")
def platform_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """One initialised data directory (CA, database, admin); each test gets a copy."""
    data_dir = tmp_path_factory.mktemp("template") / "data"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("TETHER_"):
                mp.delenv(name)
        use_fast_hashing(mp)
        # initialise() runs its own event loop: this fixture is synchronous on purpose.
        result = initialise(_clean_settings(data_dir), ips=[])
    return Template(data_dir, result.admin_password, result.mfa_secret, result.recovery_codes)


@pytest.fixture
async def platform(
    platform_template: Template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Platform]:
    for name in list(os.environ):
        if name.startswith("TETHER_"):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "data"
    await asyncio.to_thread(shutil.copytree, platform_template.data_dir, data_dir)
    built = Platform.build(_clean_settings(data_dir))
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(platform))
    async with httpx.AsyncClient(transport=transport, base_url="http://tether.test") as http:
        yield http


@pytest.fixture
def admin_password(platform_template: Template) -> str:
    return platform_template.admin_password


@pytest.fixture
def admin_secret(platform_template: Template) -> str:
    return platform_template.admin_mfa_secret


PASSWORD = "a long enough password"


async def enrolled(platform: Platform, username: str, roles: set[Role]) -> str:
    """A user (password PASSWORD) with a second factor already set up; returns its secret.

    Admins and responders need one before their sessions can do anything (docs/adr/0034)."""
    user = await platform.users.create(username, PASSWORD, roles)
    secret = new_secret()
    await platform.users.mfa.enroll_directly(user.id, secret)
    return to_base32(secret)


async def unused_code(platform: Platform, username: str, secret: str) -> str:
    """A TOTP code for `username` that the platform has not accepted yet."""
    async with platform.engine.connect() as conn:
        last = (
            await conn.execute(select(users.c.mfa_last_step).where(users.c.username == username))
        ).scalar()
    code, _ = code_after(secret, last)
    return code


async def login(
    client: httpx.AsyncClient,
    username: str,
    password: str,
    *,
    platform: Platform | None = None,
    secret: str | None = None,
) -> dict[str, str]:
    """Log in (both steps when `secret` is given) and return the session's header."""
    response = await client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    if body["stage"] == "second_factor":
        assert platform is not None, f"{username} needs a second factor"
        assert secret is not None, f"{username} needs a second factor"
        response = await client.post(
            "/api/v1/auth/login/mfa",
            json={"token": body["token"], "code": await unused_code(platform, username, secret)},
        )
        assert response.status_code == 200, response.text
        body = response.json()
    return {"authorization": f"Bearer {body['token']}"}


@pytest.fixture
async def admin(
    client: httpx.AsyncClient, platform: Platform, admin_password: str, admin_secret: str
) -> dict[str, str]:
    """Headers of the logged-in first admin (admin and responder, second factor passed)."""
    return await login(client, "admin", admin_password, platform=platform, secret=admin_secret)
