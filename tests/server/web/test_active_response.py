"""The Active Response and Host pages: the table, its filters, and the isolation actions."""

import json

import httpx
from sqlalchemy import select, update

from tether.protocol import Role
from tether.server.services.nodes import ALIVE_WITHIN, Nodes
from tether.server.services.platform import Platform
from tether.server.store.tables import audit_records, hosts, segments

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


async def _ask(
    browser: httpx.AsyncClient, form: dict[str, str], **confirmation: str
) -> httpx.Response:
    """Press an Actions button, then (with `confirmation`) the confirmation's button."""
    page = await browser.get("/active-response")
    data = {**form, "csrf_token": csrf_of(page.text)}
    asked = await browser.post("/active-response/actions", data=data)
    if not confirmation:
        return asked
    return await browser.post(
        "/active-response/actions", data={**data, "confirm": "yes", **confirmation}
    )


async def _submissions(platform: Platform) -> list[dict[str, object]]:
    async with platform.engine.connect() as conn:
        texts = (
            await conn.execute(
                select(audit_records.c.details).where(audit_records.c.action == "job.submit")
            )
        ).scalars()
        return [json.loads(t) for t in texts]


async def test_isolating_an_offline_host_asks_for_a_reason_then_leaves_it_pending(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-offline", segment="ir")
    await _active_response(platform, "ir")
    form = {"host": host, "action": "isolate-full", "q": "web-offline"}
    # The first press only asks: the hosts are named, a reason is asked for, nothing is sent.
    asked = await _ask(admin_browser, form)
    assert asked.status_code == 200, asked.text
    assert "Isolation (full) of 1 host(s): web-offline?" in asked.text
    assert 'name="reason"' in asked.text
    assert '<button type="submit" class="danger">Isolate (full), with this reason</button>' in (
        asked.text
    )
    assert await _submissions(platform) == []
    assert (await platform.hosts.get(host)).isolation.state == "not isolated"
    # Confirmed without a reason: one sentence, the question again, still nothing sent.
    blank = await _ask(admin_browser, form, reason="   ")
    assert blank.status_code == 422
    assert "Give a reason (a ticket, a detection): it goes into the audit record." in blank.text
    assert 'id="isolation-confirm"' in blank.text
    assert await _submissions(platform) == []

    response = await _ask(admin_browser, form, reason="IR-7: beacon to a known C2")
    # Post/redirect/get, with the filters kept: a reload does not ask again.
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/active-response?q=web-offline&batch=")
    shown = await admin_browser.get(location)
    assert "Isolation requested for 1 host(s)" in shown.text
    (record,) = await _submissions(platform)
    assert record["action"] == "isolation.isolate"
    assert record["reason"] == "IR-7: beacon to a known C2"
    view = (await platform.hosts.get(host)).isolation
    assert view.state == "isolation pending"
    assert view.mode == "full"
    rows = (await admin_browser.get("/active-response/hosts")).text
    assert 'data-state="isolation pending"' in rows
    host_page = (await admin_browser.get(f"/hosts/{host}")).text
    assert "isolation pending" in host_page
    assert "queued" in host_page


async def test_a_reason_with_control_characters_is_refused_in_one_sentence(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-forged", segment="ir")
    await _active_response(platform, "ir")
    # A forged second line would read as a record of its own in a plain-text export.
    forged = await _ask(
        admin_browser, {"host": host, "action": "isolate-outbound"}, reason="ok\nadmin: approved"
    )
    assert forged.status_code == 422
    assert "A reason is one line of text without control characters." in forged.text
    assert 'id="isolation-confirm"' in forged.text  # asked again, not started over
    too_long = await _ask(admin_browser, {"host": host, "action": "unisolate"}, reason="x" * 501)
    assert too_long.status_code == 422
    assert "A reason is at most 500 characters." in too_long.text
    assert await _submissions(platform) == []


async def test_the_page_offers_select_all_and_marks_destructive_actions(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await add_host(platform.engine, "web-many", segment="ir")
    page = (await admin_browser.get("/active-response")).text
    assert '<input type="checkbox" id="select-all" aria-label="Select all shown hosts">' in page
    assert '<script src="/static/select-all.js" defer></script>' in page
    assert 'value="isolate-full" class="danger"' in page
    assert 'value="isolate-outbound" class="danger"' in page
    assert 'value="unisolate">' in page  # releasing harms nothing: styled as the others
    assert '<link rel="icon" href="/static/favicon.svg"' in page
    for asset in ("/static/select-all.js", "/static/favicon.svg"):
        assert (await admin_browser.get(asset)).status_code == 200, asset


async def test_the_service_refusal_is_shown_in_its_own_words(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    host = await add_host(platform.engine, "web-refused", segment="ir")
    await _active_response(platform, "ir")
    await web_login(browser, platform, "reader", PASSWORD)
    response = await _ask(browser, {"host": host, "action": "unisolate"}, reason="test")
    assert response.status_code == 403
    assert 'role="alert"' in response.text
    assert (await platform.hosts.get(host)).isolation.state == "not isolated"


async def test_an_unknown_host_is_a_404_page(admin_browser: httpx.AsyncClient) -> None:
    response = await admin_browser.get("/hosts/no-such-host")
    assert response.status_code == 404
    assert "No host has the id or hostname &#39;no-such-host&#39;." in response.text


async def test_on_a_platform_of_several_nodes_the_table_names_the_node_holding_each_host(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    # docs/adr/0050. One process shows no Node column at all.
    held = await add_host(platform.engine, "held-elsewhere", segment="ir")
    assert "<th>Node</th>" not in (await admin_browser.get("/active-response")).text
    other = Nodes(platform.engine, "all", name="node-b")
    await other.join()
    async with platform.engine.begin() as conn:
        await conn.execute(update(hosts).where(hosts.c.id == held).values(node_id=other.id))
    await platform.presence.refresh_remote(ALIVE_WITHIN)
    platform.nodes = Nodes(platform.engine, "all", name="node-a")
    page = (await admin_browser.get("/active-response")).text
    assert "<th>Node</th>" in page
    assert '<td class="node">node-b</td>' in page
    assert "(node node-b)" in (await admin_browser.get(f"/hosts/{held}")).text
