"""The web UI in a real browser against a real platform and a real agent: log in with a TOTP
code, the Active Response table, hostile endpoint data shown as text, the Host page, Session
History with its chain check. Isolating from the Actions button needs a network namespace:
tests/netns/test_web_isolation.py."""

import sqlite3
import time

from playwright.sync_api import Route, expect

from .browser import browser_page, log_in, screenshot
from .harness import Agent, Children, Cli, Platform

HOSTILE = "<img src=x onerror=alert(1)>"


def _rename_host(platform: Platform, host_id: str, hostname: str) -> None:
    """What an agent's hello would store: the hostname is whatever the endpoint says (the
    agent takes it from the system, so the test writes it where the hello would)."""
    with sqlite3.connect(platform.db, timeout=10) as db:
        db.execute("UPDATE hosts SET hostname = ? WHERE id = ?", (hostname, host_id))


def test_responder_logs_in_and_sees_the_host_as_text(
    responding: tuple[Platform, Cli, Children], endpoint: Agent
) -> None:
    platform, _admin, _ = responding
    started = time.monotonic()
    with browser_page() as page:
        log_in(page, platform.url, platform.admin_password, platform.admin_code(), shot=True)
        row = page.locator(f'tr[data-host="{endpoint.host_id}"]')
        expect(row).to_contain_text("online")
        expect(row).to_contain_text("not isolated")
        expect(row).to_contain_text("ir")
        screenshot(page, "active-response")

        _rename_host(platform, endpoint.host_id, HOSTILE)
        # The 2-second poll brings the new name without a reload; it must arrive as text.
        expect(row.get_by_role("link")).to_have_text(HOSTILE, timeout=10_000)
        page.reload()
        expect(row.get_by_role("link")).to_have_text(HOSTILE)
        assert page.locator('img[src="x"]').count() == 0

        page.get_by_label("Search").fill("no such host anywhere")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("#host-rows")).to_contain_text("No hosts match")
        page.get_by_label("Search").fill(endpoint.host_id[:8])
        page.get_by_role("button", name="Filter").click()
        expect(row).to_be_visible()

        row.get_by_role("link").click()
        page.wait_for_url(f"{platform.url}/hosts/{endpoint.host_id}")
        expect(page.locator("h1")).to_have_text(HOSTILE)
        expect(page.locator("dl.facts")).to_contain_text(endpoint.host_id)
        assert page.locator('img[src="x"]').count() == 0
        screenshot(page, "host")

        page.get_by_role("link", name="Session History").click()
        page.wait_for_url(f"{platform.url}/session-history")
        page.get_by_placeholder("Action, e.g. job. or auth.").fill("auth.login")
        page.get_by_role("button", name="Filter").click()
        first = page.locator("table.audit tbody tr").first
        expect(first).to_contain_text("auth.login")
        first.locator("summary").click()
        expect(first.locator("dl.record")).to_contain_text("ui")
        page.get_by_role("button", name="Verify chain").click()
        expect(page.locator("#verify-result")).to_contain_text("Chain intact")
        screenshot(page, "session-history")
    print(f"browser test took {time.monotonic() - started:.1f} s")


def test_a_tick_survives_a_table_refresh_that_was_already_on_its_way(
    responding: tuple[Platform, Cli, Children], endpoint: Agent
) -> None:
    """The 2-second poll answers with the rows as they were when it was sent: a host ticked while
    that answer travels must stay ticked (under load it did not: the tick vanished)."""
    platform, _admin, _ = responding
    with browser_page() as page:
        log_in(page, platform.url, platform.admin_password, platform.admin_code())
        box = page.locator(f'input[name="host"][value="{endpoint.host_id}"]')
        expect(box).not_to_be_checked()
        held: list[Route] = []
        holding = [True]

        def hold(route: Route) -> None:
            if holding[0]:
                held.append(route)
            else:
                route.continue_()

        page.route("**/active-response/hosts*", hold)
        deadline = time.monotonic() + 10
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert held, "the table's poll was not sent within 10 s"
        assert "host=" not in held[0].request.url  # sent with nothing ticked

        box.check()
        holding[0] = False
        with page.expect_response("**/active-response/hosts*"):
            for route in held:
                route.continue_()
        page.wait_for_timeout(300)  # htmx swaps the stale rows in right after the answer
        expect(box).to_be_checked()
        # And the refresh after it, which carries the tick, keeps it too.
        with page.expect_response("**/active-response/hosts*") as answer:
            pass
        assert f"host={endpoint.host_id}" in answer.value.request.url
        expect(box).to_be_checked()
