"""The admins' host operations in the pages: move to a segment and revoke on the Host page, ping
from Active Response (docs/adr/0025). The services do the work; these tests check the pages ask
for the right permission and the CSRF token, confirm before revoking, and say what happened."""

import httpx
from sqlalchemy import select

from tether.protocol import CloseCode, Role
from tether.server.services.platform import Platform
from tether.server.store.tables import audit_records

from ..support import FakeLink, add_host
from .conftest import csrf_of, web_login

PASSWORD = "a long enough password"
HOSTILE = "<img src=x onerror=alert(1)>"


async def _post(browser: httpx.AsyncClient, page: str, action: str, **data: str) -> httpx.Response:
    """POST `data` to `action` with the CSRF token of `page`, as its form would."""
    token = csrf_of((await browser.get(page)).text)
    return await browser.post(action, data={**data, "csrf_token": token})


async def _audited(platform: Platform, action: str) -> list[tuple[str, str, str]]:
    async with platform.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_records.c.actor, audit_records.c.target, audit_records.c.details)
                .where(audit_records.c.action == action)
                .order_by(audit_records.c.seq)
            )
        ).all()
    return [tuple(r) for r in rows]


async def test_move_to_a_segment_is_audited_and_confirmed_once(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.segments.create("servers", active_response=True, actor="admin", source="")
    host = await add_host(platform.engine, "web-mover", segment="default")
    # The agent is connected: it is told the new segment's switch at once.
    link = FakeLink(host)
    platform.presence.attach(link)
    page = (await admin_browser.get(f"/hosts/{host}")).text
    assert "Move to segment" in page
    assert '<option value="servers" >servers</option>' in page
    response = await _post(
        admin_browser, f"/hosts/{host}", f"/hosts/{host}/move", segment="servers"
    )
    # Post/redirect/get: a reload shows the page, it does not move the host again.
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/hosts/{host}"
    assert (await platform.hosts.get(host)).segment == "servers"
    assert [p.active_response for p in link.policies] == [True]
    moves = await _audited(platform, "host.move")
    assert [(actor, target) for actor, target, _ in moves] == [("admin", f"host:{host}")]
    assert '"segment":"servers"' in moves[0][2]
    shown = await admin_browser.get(f"/hosts/{host}")
    sentence = (
        "web-mover moved from segment default to servers, where Active Response is on; "
        "its agent was told at once."
    )
    assert sentence in shown.text
    # Shown once: the next visit has no confirmation.
    assert sentence not in (await admin_browser.get(f"/hosts/{host}")).text


async def test_a_move_the_service_refuses_shows_its_sentence(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-stays", segment="default")
    response = await _post(
        admin_browser, f"/hosts/{host}", f"/hosts/{host}/move", segment="no-such-segment"
    )
    assert response.status_code == 404
    assert 'role="alert"' in response.text
    assert "no-such-segment" in response.text
    assert (await platform.hosts.get(host)).segment == "default"
    assert await _audited(platform, "host.move") == []


async def test_revoke_asks_first_then_closes_that_host_alone(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, HOSTILE)
    other = await add_host(platform.engine, "web-bystander")
    link, bystander = FakeLink(host), FakeLink(other)
    platform.presence.attach(link)
    platform.presence.attach(bystander)
    # The first POST only asks, on the page; nothing is revoked yet.
    asked = await _post(admin_browser, f"/hosts/{host}", f"/hosts/{host}/revoke")
    assert asked.status_code == 200
    assert (
        "Revoke &lt;img src=x onerror=alert(1)&gt;? "
        "Its certificate is refused and its connection closed."
    ) in asked.text
    assert "<img src=x" not in asked.text
    assert not (await platform.hosts.get(host)).revoked
    assert link.closed == []
    assert await _audited(platform, "host.revoke") == []
    # The confirm button posts again with confirm=yes.
    assert 'name="confirm" value="yes"' in asked.text
    done = await admin_browser.post(
        f"/hosts/{host}/revoke", data={"confirm": "yes", "csrf_token": csrf_of(asked.text)}
    )
    assert done.status_code == 303, done.text
    assert (await platform.hosts.get(host)).revoked
    assert link.closed == [(CloseCode.REVOKED, "This host's certificate was revoked.")]
    assert bystander.closed == []
    assert not (await platform.hosts.get(other)).revoked
    revokes = await _audited(platform, "host.revoke")
    assert [(actor, target) for actor, target, _ in revokes] == [("admin", f"host:{host}")]
    shown = (await admin_browser.get(done.headers["location"])).text
    assert (
        "&lt;img src=x onerror=alert(1)&gt; revoked: its certificate is refused from now on; "
        "its connection was closed."
    ) in shown
    # A revoked host offers no second revocation; sending one anyway is the service's conflict.
    assert 'action="/hosts/' + host + '/revoke"' not in shown
    again = await admin_browser.post(
        f"/hosts/{host}/revoke", data={"confirm": "yes", "csrf_token": csrf_of(shown)}
    )
    assert again.status_code == 409
    assert "is already revoked" in again.text
    unconfirmed = await admin_browser.post(
        f"/hosts/{host}/revoke", data={"csrf_token": csrf_of(shown)}
    )
    assert unconfirmed.status_code == 409
    assert "is already revoked" in unconfirmed.text


async def test_non_admins_get_403_and_see_no_admin_forms(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    host = await add_host(platform.engine, "web-guarded")
    await web_login(browser, platform, "reader", PASSWORD)
    page = (await browser.get(f"/hosts/{host}")).text
    assert "Move to segment" not in page
    assert "/revoke" not in page
    assert "/active-response/ping" not in (await browser.get("/active-response")).text
    for action, data in (
        (f"/hosts/{host}/move", {"segment": "default"}),
        (f"/hosts/{host}/revoke", {"confirm": "yes"}),
        ("/active-response/ping", {"host": host}),
    ):
        response = await _post(browser, f"/hosts/{host}", action, **data)
        assert response.status_code == 403, action
        assert "You need the hosts.manage permission for this page." in response.text
    assert not (await platform.hosts.get(host)).revoked
    assert await _audited(platform, "hosts.ping") == []


async def test_changes_without_the_csrf_token_are_refused(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.segments.create("elsewhere", active_response=False, actor="admin", source="")
    host = await add_host(platform.engine, "web-forged")
    for action, data in (
        (f"/hosts/{host}/move", {"segment": "elsewhere"}),
        (f"/hosts/{host}/revoke", {"confirm": "yes"}),
        ("/active-response/ping", {"host": host}),
    ):
        for token in (None, "forged"):
            sent = data if token is None else {**data, "csrf_token": token}
            response = await admin_browser.post(action, data=sent)
            assert response.status_code == 403, (action, token)
    found = await platform.hosts.get(host)
    assert (found.segment, found.revoked) == ("default", False)
    assert await _audited(platform, "hosts.ping") == []


async def test_ping_reports_who_answered_and_why_not(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    online = await add_host(platform.engine, "web-answers")
    offline = await add_host(platform.engine, "web-silent")
    platform.presence.attach(FakeLink(online))
    page = (await admin_browser.get("/active-response")).text
    assert 'formaction="/active-response/ping"' in page
    response = await admin_browser.post(
        "/active-response/ping",
        data={"host": [online, offline], "q": "web-", "csrf_token": csrf_of(page)},
    )
    assert response.status_code == 200, response.text
    assert "Ping: 1 of 2 host(s) answered in " in response.text
    assert "round trip p50 " in response.text
    # The offline host is named, with the service's reason.
    assert "<li>web-silent: offline</li>" in response.text
    # The ticks and the filter stay, to ping again or act on the same hosts.
    assert 'aria-label="Select web-answers" checked' in response.text
    assert 'aria-label="Select web-silent" checked' in response.text
    assert 'name="q" value="web-"' in response.text
    pings = await _audited(platform, "hosts.ping")
    assert [(actor, target) for actor, target, _ in pings] == [("admin", "2 hosts")]


async def test_ping_needs_a_ticked_host(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    response = await _post(admin_browser, "/active-response", "/active-response/ping")
    assert response.status_code == 422
    assert "Select at least one host first." in response.text
    assert await _audited(platform, "hosts.ping") == []
