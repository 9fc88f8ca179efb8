"""Isolating a host from the web UI's Actions button, in a real browser, with a real platform and
a real agent inside a network namespace, and watching the state change without a reload.

Root only (skipped with the reason elsewhere; CI runs as root and must run it). The agent runs in
the endpoint namespace: isolating an agent in the root namespace would firewall this machine.
"""

from playwright.sync_api import Page, expect

from tests.e2e.browser import browser_page, log_in, screenshot
from tests.netns.world import TABLE, World


def _act(page: Page, host_id: str, action: str, reason: str) -> None:
    """Tick the host (by the header's select-all: it is the only one), press the action, then
    confirm it with a reason: the first press only asks."""
    page.get_by_label("Select all shown hosts").check()
    expect(page.locator(f'input[name="host"][value="{host_id}"]')).to_be_checked()
    page.get_by_text("Actions", exact=True).click()
    page.get_by_role("button", name=action, exact=True).click()
    page.wait_for_load_state()
    question = page.locator("#isolation-confirm")
    expect(question.get_by_role("alert")).to_contain_text("of 1 host(s)")
    question.get_by_label("Reason (kept in the audit record)").fill(reason)
    question.get_by_role("button", name=f"{action}, with this reason").click()
    page.wait_for_load_state()


def test_isolate_from_the_actions_button_pending_then_isolated_live(endpoint: World) -> None:
    w = endpoint
    net = w.net
    outside = net.listen(net.outside, net.outside_v4)
    port = outside.getsockname()[1]
    # Offline first, so "isolation pending" is on screen for sure before the agent applies it.
    w.stop_agent()
    with browser_page() as page:
        log_in(page, w.platform.url, w.platform.admin_password, w.platform.admin_code())
        state = page.locator(f'tr[data-host="{w.host_id}"] .state')
        expect(state).to_have_text("not isolated")

        _act(page, w.host_id, "Isolate (full)", "IR-7: beacon to a known C2")
        expect(page.get_by_role("status")).to_contain_text("Isolation requested for 1 host(s)")
        expect(state).to_have_text("isolation pending")
        screenshot(page, "active-response-pending")
        assert w.outbound_works(port)

        w.start_agent()
        # No reload: the table's 2-second poll brings the agent's answer.
        expect(state).to_have_text("isolated", timeout=20_000)
        expect(page.locator(f'tr[data-host="{w.host_id}"] .isolation')).to_contain_text("(full)")
        assert not w.outbound_works(port)
        assert net.run(net.endpoint, "nft", "list", "table", "inet", TABLE).returncode == 0
        screenshot(page, "active-response-isolated")

        _act(page, w.host_id, "Unisolate", "IR-7: reimaged")
        expect(state).to_have_text("not isolated", timeout=20_000)
        assert w.outbound_works(port)

        page.get_by_role("link", name="Session History").click()
        page.get_by_placeholder("Action, e.g. job. or auth.").fill("job.submit")
        page.get_by_role("button", name="Filter").click()
        rows = page.locator("table.audit tbody tr")
        expect(rows).to_have_count(2)
        isolate = rows.nth(1)
        isolate.locator("summary").click()
        expect(isolate.locator("dl.record")).to_contain_text("isolation.isolate")
        expect(isolate.locator("dl.record")).to_contain_text(w.host_id)
        expect(isolate.locator("dl.record")).to_contain_text("IR-7: beacon to a known C2")
