"""The Host page's "Upgrade the agent" form (docs/adr/0051): the library's bundle archives are
offered, the service signs and sends, and a caller it refuses reads its sentence."""

import io
import tarfile
from collections.abc import AsyncIterator

import httpx
from sqlalchemy import select, update

from tether.protocol import Role
from tether.server.auth.totp import new_secret, to_base32
from tether.server.services.platform import Platform
from tether.server.store.tables import audit_records, jobs, segments

from ..support import add_host
from .conftest import csrf_of, web_login

PASSWORD = "a long enough password"


def _bundle(version: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (
            ("tether-agent/tether-agent", b"#!/bin/sh\n"),
            ("tether-agent/VERSION", version.encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def _library_bundle(platform: Platform, name: str = "agent-2.0.tar.gz") -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield _bundle("2.0")

    entry = await platform.files.upload(name, chunks(), actor="admin", source="test")
    return entry.sha256


async def _host(platform: Platform) -> str:
    host = await add_host(platform.engine, "web-upgraded", segment="default")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "default").values(active_response=True)
        )
    return host


async def test_an_admin_with_the_script_tier_upgrades_from_the_host_page(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await _host(platform)
    sha256 = await _library_bundle(platform)
    page = (await admin_browser.get(f"/hosts/{host}")).text
    assert "Upgrade the agent" in page
    assert f'<option value="{sha256}">agent-2.0.tar.gz' in page
    response = await admin_browser.post(
        f"/hosts/{host}/upgrade", data={"sha256": sha256, "csrf_token": csrf_of(page)}
    )
    assert response.status_code == 303, response.text
    shown = (await admin_browser.get(f"/hosts/{host}")).text
    assert "Upgrade of web-upgraded to version 2.0 sent" in shown
    async with platform.engine.connect() as conn:
        sent = (
            (await conn.execute(select(jobs.c.action).where(jobs.c.host_id == host)))
            .scalars()
            .all()
        )
        recorded = (
            (
                await conn.execute(
                    select(audit_records.c.actor).where(
                        audit_records.c.action == "agent.upgrade.request"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert list(sent) == ["agent.upgrade"]
    assert list(recorded) == ["admin"]


async def test_a_plain_admin_is_refused_on_the_page_and_nothing_is_sent(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await _host(platform)
    sha256 = await _library_bundle(platform)
    admin = await platform.users.create("plain-admin", PASSWORD, {Role.ADMIN})
    secret = new_secret()
    await platform.users.mfa.enroll_directly(admin.id, secret)
    await web_login(browser, platform, "plain-admin", PASSWORD, to_base32(secret))
    page = (await browser.get(f"/hosts/{host}")).text
    response = await browser.post(
        f"/hosts/{host}/upgrade", data={"sha256": sha256, "csrf_token": csrf_of(page)}
    )
    assert response.status_code == 403
    assert "You need an Active Response tier" in response.text
    async with platform.engine.connect() as conn:
        sent = (await conn.execute(select(jobs.c.id).where(jobs.c.host_id == host))).all()
    assert sent == []


async def test_no_bundle_chosen_is_refused_in_one_sentence(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await _host(platform)
    page = (await admin_browser.get(f"/hosts/{host}")).text
    assert "no .tar.gz in the file library" in page
    response = await admin_browser.post(
        f"/hosts/{host}/upgrade", data={"sha256": "", "csrf_token": csrf_of(page)}
    )
    assert response.status_code == 422
    assert "Choose an agent bundle" in response.text
