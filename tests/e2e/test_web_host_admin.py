"""The admins' host operations in a real browser against a real platform and a real agent: ping
the agent from Active Response, move its host to another segment and revoke it on the Host page
(the agent's connection is closed and it is refused), then download the Session History export
and find the revocation in it (docs/adr/0025)."""

import json
from pathlib import Path

from playwright.sync_api import expect

from .browser import browser_page, log_in, screenshot
from .harness import Agent, Children, Cli, Platform, host_by_id, wait_online

# The agent's exit status when the platform refuses it for good (a revoked certificate).
EXIT_REFUSED = 78


def test_an_admin_pings_moves_and_revokes_a_host_then_exports_the_record(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    platform, admin, _ = responding
    admin.ok("segment", "create", "quarantine")
    with admin.api() as api:
        found = host_by_id(api, endpoint.host_id)
    assert found is not None
    hostname = found["hostname"]
    host_url = f"{platform.url}/hosts/{endpoint.host_id}"

    with browser_page() as page:
        log_in(page, platform.url, platform.admin_password, platform.admin_code())

        # Active Response -> Actions -> Ping: the real agent answers the round trip.
        page.goto(f"{platform.url}/active-response")
        page.get_by_label(f"Select {hostname}").check()
        page.locator("summary", has_text="Actions").click()
        page.get_by_role("button", name="Ping").click()
        result = page.locator(".ping-result")
        expect(result).to_contain_text("Ping: 1 of 1 host(s) answered in ")
        expect(result).to_contain_text("round trip p50 ")
        expect(page.get_by_label(f"Select {hostname}")).to_be_checked()

        # Host page: move to another segment; the page and the API both say where it is now.
        page.goto(host_url)
        admin_section = page.locator("#host-admin")
        admin_section.get_by_label("Segment").select_option("quarantine")
        admin_section.get_by_role("button", name="Move to segment").click()
        page.wait_for_url(host_url)
        expect(admin_section.get_by_role("status")).to_have_text(
            f"{hostname} moved from segment ir to quarantine, where Active Response is off; "
            "its agent was told at once."
        )
        expect(page.locator("dl.facts")).to_contain_text("Segmentquarantine")
        with admin.api() as api:
            moved = host_by_id(api, endpoint.host_id)
        assert moved is not None
        assert moved["segment"] == "quarantine"

        # Revoke: the first click only asks, on the page; the host is untouched until confirmed.
        admin_section.get_by_role("button", name="Revoke").click()
        question = admin_section.get_by_role("alert")
        expect(question).to_have_text(
            f"Revoke {hostname}? Its certificate is refused and its connection closed."
        )
        with admin.api() as api:
            asked = host_by_id(api, endpoint.host_id)
        assert asked is not None
        assert (asked["revoked"], asked["online"]) == (False, True)
        screenshot(page, "host-admin")
        admin_section.get_by_role("button", name=f"Revoke {hostname}").click()
        page.wait_for_url(host_url)
        expect(admin_section.get_by_role("status")).to_have_text(
            f"{hostname} revoked: its certificate is refused from now on; "
            "its connection was closed."
        )
        expect(page.locator("dl.facts")).to_contain_text("Certificaterevoked")
        expect(page.locator("dl.facts")).to_contain_text("Onlineoffline")
        # The real agent's connection was closed and it is refused: it exits for good.
        with admin.api() as api:
            wait_online(api, endpoint.host_id, online=False, timeout=5)
            gone = host_by_id(api, endpoint.host_id)
        assert gone is not None
        assert gone["revoked"] is True
        assert endpoint.proc is not None
        assert endpoint.proc.wait(timeout=15) == EXIT_REFUSED
        assert "The platform refused this agent" in endpoint.proc.output()

        # Settings -> Device Segments counts it apart from the live hosts, marked revoked.
        page.goto(f"{platform.url}/settings/segments")
        counted = page.locator('tr[data-segment="quarantine"] td.host-count')
        expect(counted).to_have_text("0 + 1 revoked")

        # Session History -> Export: the download holds the revocation, as JSON lines.
        page.goto(f"{platform.url}/session-history?action=host.")
        with page.expect_download() as download_info:
            page.get_by_role("link", name="Export (JSON Lines)").click()
        download = download_info.value
        assert download.suggested_filename == "tether-audit.jsonl"
        saved = tmp_path / "audit.jsonl"
        download.save_as(saved)
        records = [json.loads(line) for line in saved.read_text().splitlines()]
        assert {r["action"] for r in records} == {"host.move", "host.revoke"}
        revokes = [r for r in records if r["action"] == "host.revoke"]
        assert [(r["actor"], r["target"]) for r in revokes] == [
            ("admin", f"host:{endpoint.host_id}")
        ]
        assert revokes[0]["details"] == {"hostname": hostname, "was_online": True}
        # The same lines as `tether audit export` gives for the same filter, through the API.
        with admin.api() as api:
            from_api = api.get("/audit/export", params={"action": "host."})
        assert from_api.status_code == 200
        assert saved.read_bytes() == from_api.content
