"""The tiers on the web pages: the console refuses in the tier's words, the Team page names
tiers and grants one in place of another."""

import httpx

from tether.protocol import Role
from tether.server.auth.totp import new_secret, to_base32
from tether.server.services.platform import Platform

from ..support import add_host
from .conftest import csrf_of, web_login
from .test_host_session import _active_response, _jobs, _start

PASSWORD = "a long enough password"


async def test_a_collect_holder_lists_in_the_console_and_is_refused_a_kill(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-1", segment="ir")
    await _active_response(platform, "ir", True)
    rita = await platform.users.create("rita", PASSWORD, {Role.COLLECT})
    secret = new_secret()
    await platform.users.mfa.enroll_directly(rita.id, secret)
    await web_login(browser, platform, "rita", PASSWORD, to_base32(secret))
    assert (await _start(browser, host)).status_code == 303
    token = csrf_of((await browser.get(f"/hosts/{host}")).text)
    listed = await browser.post(
        f"/hosts/{host}/session/commands", data={"line": "ps"}, headers={"X-CSRF-Token": token}
    )
    assert listed.status_code == 201, listed.text
    for line, sentence in (
        ("kill 42", "rita has the collect tier; kill needs respond."),
        ("py 1 + 1", "rita has the collect tier; an arbitrary script needs script."),
        ("run triage", "No script is named 'triage'."),
    ):
        refused = await browser.post(
            f"/hosts/{host}/session/commands", data={"line": line}, headers={"X-CSRF-Token": token}
        )
        assert refused.status_code in (403, 404), line
        assert sentence in refused.json()["error"], refused.text
    killed = await browser.post(
        f"/hosts/{host}/session/processes/kill",
        data={"pid": "42", "confirmed": "yes", "csrf_token": token},
    )
    assert killed.status_code == 403
    assert "rita has the collect tier; kill needs respond." in killed.text
    assert await _jobs(platform) == ["processes.list"]


async def test_the_team_page_names_tiers_and_a_grant_replaces_the_tier(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.users.create("rosa", PASSWORD, {Role.COLLECT})
    page = await admin_browser.get("/settings/team")
    assert "Active Response: collect" in page.text
    assert "Grant Active Response: respond" in page.text
    granted = await admin_browser.post(
        "/settings/team/rosa/roles",
        data={"role": "respond", "grant": "yes", "csrf_token": csrf_of(page.text)},
    )
    assert granted.status_code in (200, 303), granted.text[-500:]
    assert (await platform.team.get("rosa")).roles == ["respond"]
