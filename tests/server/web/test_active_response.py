"""The Active Response and Host pages: the table, its filters, and the isolation actions."""

import httpx
from sqlalchemy import update

from tether.protocol import Role
from tether.server.services.platform import Platform
from tether.server.store.tables import hosts, segments

from ..support import add_host
from .conftest import csrf_of, web_login

HOSTILE = "<img src=x onerror=alert(1)>"
PASSWORD = "a long enough password"


async def _active_response(platform: Platform, segment: str, on: bool = True) -> None:
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == segment).values(active_response=on)
        )


async def test_endpoint_data_is_shown_as_text(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, HOSTILE, segment="ir")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(hosts)
            .where(hosts.c.id == host)
            .values(
                os_name=HOSTILE, os_version="<script>alert(2)</script>", addresses=f'["{HOSTILE}"]'
            )
        )
    for path in ("/active-response", "/active-response/hosts", f"/hosts/{host}"):
        page = await admin_browser.get(path)
        assert page.status_code == 200
        assert "<img src=x" not in page.text, path
        assert "<script>alert" not in page.text, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text, path


async def test_filters_and_search_narrow_the_table(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await add_host(platform.engine, "web-alpha", segment="ir")
    await add_host(platform.engine, "web-beta", segment="office")
    both = (await admin_browser.get("/active-response")).text
    assert "web-alpha" in both
    assert "web-beta" in both
    by_segment = (await admin_browser.get("/active-response/hosts?segment=office")).text
    assert "web-beta" in by_segment
    assert "web-alpha" not in by_segment
    by_search = (await admin_browser.get("/active-response?q=ALPHA")).text
    assert "web-alpha" in by_search
    assert "web-beta" not in by_search
    online = (await admin_browser.get("/active-response/hosts?online=yes")).text
    assert "No hosts match (2 in all)." in online
    state = (await admin_browser.get("/active-response/hosts?state=isolated")).text
    assert "web-alpha" not in state
    not_isolated = (await admin_browser.get("/active-response/hosts?state=not+isolated")).text
    assert "web-alpha" in not_isolated


async def test_hosts_sharing_a_name_show_their_ids_and_a_revoked_one_is_gone(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    first = await add_host(platform.engine, "reimaged")
    second = await add_host(platform.engine, "reimaged")
    single = await add_host(platform.engine, "unique")
    rows = (await admin_browser.get("/active-response/hosts")).text
    assert f'<small class="host-id" title="{first}">{first[:8]}</small>' in rows
    assert f'<small class="host-id" title="{second}">{second[:8]}</small>' in rows
    assert f'title="{single}"' not in rows  # a name of its own needs no id

    await platform.hosts.revoke(first, actor="admin", source="test")
    rows = (await admin_browser.get("/active-response/hosts")).text
    assert first not in rows
    assert f'title="{second}"' not in rows  # the name is no longer shared


async def test_isolating_an_offline_host_leaves_it_pending(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-offline", segment="ir")
    await _active_response(platform, "ir")
    page = await admin_browser.get("/active-response")
    response = await admin_browser.post(
        "/active-response/actions",
        data={
            "host": host,
            "action": "isolate-full",
            "q": "web-offline",
            "csrf_token": csrf_of(page.text),
        },
    )
    # Post/redirect/get, with the filters kept: a reload does not ask again.
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/active-response?q=web-offline&batch=")
    shown = await admin_browser.get(location)
    assert "Isolation requested for 1 host(s)" in shown.text
    view = (await platform.hosts.get(host)).isolation
    assert view.state == "isolation pending"
    assert view.mode == "full"
    rows = (await admin_browser.get("/active-response/hosts")).text
    assert 'data-state="isolation pending"' in rows
    host_page = (await admin_browser.get(f"/hosts/{host}")).text
    assert "isolation pending" in host_page
    assert "queued" in host_page


async def test_the_service_refusal_is_shown_in_its_own_words(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    host = await add_host(platform.engine, "web-refused", segment="ir")
    await _active_response(platform, "ir")
    await web_login(browser, platform, "reader", PASSWORD)
    page = await browser.get("/active-response")
    response = await browser.post(
        "/active-response/actions",
        data={"host": host, "action": "unisolate", "csrf_token": csrf_of(page.text)},
    )
    assert response.status_code == 403
    assert 'role="alert"' in response.text
    assert (await platform.hosts.get(host)).isolation.state == "not isolated"


async def test_an_unknown_host_is_a_404_page(admin_browser: httpx.AsyncClient) -> None:
    response = await admin_browser.get("/hosts/no-such-host")
    assert response.status_code == 404
    assert "No host has the id or hostname &#39;no-such-host&#39;." in response.text
