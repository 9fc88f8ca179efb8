"""Pages: the Settings step-up prompt (a stale session's sensitive change is refused with the
sentence and the prompt; a fresh code opens changes for 5 minutes) and the Sessions page."""

import html
import re

import httpx
from sqlalchemy import select

from tether.protocol import Role
from tether.server.services.platform import Platform
from tether.server.services.step_up import FRESH_CODE_NEEDED
from tether.server.store.tables import segments

from ..api.conftest import PASSWORD, enrolled, unused_code
from ..api.test_step_up_and_sessions import make_stale
from .conftest import csrf_of, web_login


async def _switched_on(platform: Platform) -> bool:
    async with platform.engine.connect() as conn:
        return bool(
            (
                await conn.execute(
                    select(segments.c.active_response).where(segments.c.name == "default")
                )
            ).scalar()
        )


async def test_a_stale_session_must_confirm_with_a_code_before_switching_active_response_on(
    admin_browser: httpx.AsyncClient, platform: Platform, admin_secret: str
) -> None:
    fresh_page = await admin_browser.get("/settings/segments")
    assert "Confirm it&#39;s you" not in fresh_page.text
    await make_stale(platform, "admin")
    page = await admin_browser.get("/settings/segments")
    assert 'action="/settings/step-up"' in page.text
    token = csrf_of(page.text)
    refused = await admin_browser.post(
        "/settings/segments/default/active-response",
        data={"enabled": "on", "csrf_token": token},
    )
    assert refused.status_code == 403
    assert FRESH_CODE_NEEDED in html.unescape(refused.text)
    assert not await _switched_on(platform)
    wrong = await admin_browser.post(
        "/settings/step-up", data={"code": "12", "back": "/settings/segments", "csrf_token": token}
    )
    assert wrong.status_code == 403
    code = await unused_code(platform, "admin", admin_secret)
    confirmed = await admin_browser.post(
        "/settings/step-up",
        data={"code": code, "back": "https://evil.example/", "csrf_token": token},
    )
    # Back to a Settings page only, whatever the form said.
    assert confirmed.headers["location"] == "/settings/team"
    switched = await admin_browser.post(
        "/settings/segments/default/active-response",
        data={"enabled": "on", "csrf_token": token},
    )
    assert switched.status_code == 303
    assert await _switched_on(platform)


async def test_the_sessions_page_lists_and_ends_other_sessions(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    # The API answers bearer tokens only, never the cookie: one client serves both here.
    client = browser
    secret = await enrolled(platform, "ops", {Role.ADMIN})
    # A CLI session of the same user, then the browser's.
    other = (
        await client.post("/api/v1/auth/login", json={"username": "ops", "password": PASSWORD})
    ).json()
    code = await unused_code(platform, "ops", secret)
    cli = await client.post("/api/v1/auth/login/mfa", json={"token": other["token"], "code": code})
    cli_headers = {"authorization": f"Bearer {cli.json()['token']}"}
    await web_login(browser, platform, "ops", PASSWORD, secret)
    page = await browser.get("/sessions")
    assert page.status_code == 200
    ids = re.findall(r'data-session="([0-9a-f]{16})"', page.text)
    assert len(ids) == 2
    assert page.text.count("this session") == 1
    listed = (await client.get("/api/v1/auth/sessions", headers=cli_headers)).json()
    cli_id = next(entry["id"] for entry in listed if entry["current"])
    assert cli_id in ids
    ended = await browser.post(
        f"/sessions/{cli_id}/end", data={"csrf_token": csrf_of(page.text), "username": "ops"}
    )
    assert ended.status_code == 303
    assert (await client.get("/api/v1/auth/whoami", headers=cli_headers)).status_code == 401
    nosy = await browser.get("/sessions?user=admin")
    assert nosy.status_code == 200  # ops is an admin: another user's sessions are open to them
    await platform.users.create("ann", PASSWORD, {Role.ANALYST})
    await browser.post("/logout", data={"csrf_token": csrf_of(page.text)})
    await web_login(browser, platform, "ann", PASSWORD)
    refused = await browser.get("/sessions?user=ops")
    assert refused.status_code == 403
    assert "Only admins can see another user&#39;s sessions." in refused.text
