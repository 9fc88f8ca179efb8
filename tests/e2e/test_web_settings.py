"""The Settings pages in a real browser against a real platform: an admin creates a user and
grants them Active Response from the row menu, flips a segment's Active Response switch off and
on, and issues an enrollment token whose command line a real agent then enrolls with; and
creates a service token on its page, which then works against the real API in its segment only,
until it is revoked on the page."""

import ssl
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from .browser import browser_page, log_in, screenshot
from .harness import Agent, Children, Cli, Platform

PASSWORD = "a long enough password"
COMMAND = "tether agent enroll --token "


def _segment(admin: Cli, name: str) -> dict[str, Any]:
    with admin.api() as api:
        found: list[dict[str, Any]] = [s for s in api.get("/segments").json() if s["name"] == name]
    assert found, f"no segment {name}"
    return found[0]


def _team_page(page: Page, admin: Cli) -> None:
    page.get_by_role("link", name="Settings").click()
    page.wait_for_url("**/settings/team")
    page.get_by_label("Username").fill("mdr-ana")
    page.get_by_label("Password").fill(PASSWORD)
    page.locator("form.new-user").get_by_label("Analyst").check()
    page.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("status")).to_have_text("User mdr-ana created (Analyst).")

    row = page.locator('tr[data-user="mdr-ana"]')
    row.locator("summary").click()
    row.get_by_role("button", name="Grant Active Response: script").click()
    expect(page.get_by_role("status")).to_have_text(
        "mdr-ana now holds the script tier of Active Response."
    )
    expect(row.locator("td.roles")).to_contain_text("Active Response: script")
    with admin.api() as api:
        users = {u["username"]: u for u in api.get("/users").json()}
    assert users["mdr-ana"]["roles"] == ["analyst", "script"]
    # The row menu open, as an admin sees it.
    row.locator("summary").click()
    screenshot(page, "settings-team")
    row.locator("summary").click()


def _segments_page(page: Page, admin: Cli) -> None:
    page.get_by_role("link", name="Device Segments").click()
    page.wait_for_url("**/settings/segments")
    row = page.locator('tr[data-segment="ir"]')
    expect(row.locator(".ar-state")).to_have_text("On")
    row.get_by_role("button", name="Turn off").click()
    expect(page.get_by_role("status")).to_have_text("Active Response is off for ir.")
    expect(row.locator(".ar-state")).to_have_text("Off")
    assert _segment(admin, "ir")["active_response"] is False
    row.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("status")).to_have_text("Active Response is on for ir.")
    expect(row.locator(".ar-state")).to_have_text("On")
    assert _segment(admin, "ir")["active_response"] is True
    screenshot(page, "settings-segments")


def _configuration_page(page: Page, admin: Cli) -> None:
    page.get_by_role("link", name="Device Configuration").click()
    page.wait_for_url("**/settings/configuration")
    page.get_by_label("Allowlist").fill("10.20.0.0/16\n192.0.2.10/32 443,8443")
    page.get_by_role("button", name="Save allowlist").click()
    expect(page.get_by_role("status")).to_contain_text("Isolation allowlist saved (2 entries)")
    with admin.api() as api:
        rules = api.get("/isolation/allowlist").json()
    assert rules == [
        {"cidr": "10.20.0.0/16", "ports": []},
        {"cidr": "192.0.2.10/32", "ports": [443, 8443]},
    ]
    expect(page.locator('tr[data-segment="ir"] .ar-state')).to_have_text("On")
    screenshot(page, "settings-configuration")


def _enrollment_page(page: Page) -> str:
    page.get_by_role("link", name="Enrollment tokens").click()
    page.wait_for_url("**/settings/enrollment")
    # Chosen from the segments that exist: nothing to mistype into a new segment.
    page.locator("form.new-token").get_by_label("Segment").select_option("ir")
    page.get_by_role("button", name="Create token").click()
    command = page.locator("#enroll-command")
    expect(command).to_contain_text(COMMAND)
    text = command.inner_text().strip()
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == text
    screenshot(page, "settings-enrollment")
    return text.removeprefix(COMMAND)


def _jobs_call(platform: Platform, token: str, host: str) -> httpx.Response:
    """A process list on `host`, submitted with a service token straight to the REST API."""
    return httpx.post(
        f"{platform.url}/api/v1/jobs",
        json={"action": "processes.list", "args": {}, "hosts": [host]},
        headers={"authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(platform.ca)),
        timeout=10.0,
    )


def _service_tokens_page(page: Page, platform: Platform, admin: Cli, host: str) -> None:
    """A token made on the page works against the real API in its segment only, is never shown
    again, and is refused once revoked there; revoking withdraws the job it queued."""
    page.get_by_role("link", name="Service tokens").click()
    page.wait_for_url("**/settings/service-tokens")
    expect(page.locator("dl.tiers")).to_contain_text("kill")
    page.get_by_label("Name").fill("soar")
    page.get_by_label("Tier").select_option("collect")
    page.locator("fieldset.token-segments").get_by_label("ir").check()
    page.get_by_label("Valid for").fill("1")
    page.get_by_label("Unit").select_option("days")
    page.get_by_role("button", name="Create service token").click()
    shown = page.locator("#service-token")
    expect(shown).to_contain_text("tts_")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).to_have_text("Copied.")
    token: str = page.evaluate("navigator.clipboard.readText()")
    assert token == shown.inner_text().strip()
    screenshot(page, "settings-service-tokens")

    # The copied token queues a process list on the (offline) host of its segment ...
    queued = _jobs_call(platform, token, host)
    assert queued.status_code == 201, queued.text
    [job] = queued.json()["jobs"]
    assert (job["created_by"], job["state"]) == ("service:soar", "queued")
    # ... and is refused the same host once it has left the segment.
    with admin.api() as api:
        moved = api.post(f"/hosts/{host}/move", json={"segment": "default"})
        assert moved.status_code == 200, moved.text
    refused = _jobs_call(platform, token, host)
    assert refused.status_code == 403, refused.text
    assert "service:soar may act only in segments ir;" in refused.json()["detail"]

    # Back by the tab (a reload would send the form again): used, and never shown again.
    page.get_by_role("link", name="Service tokens").click()
    row = page.locator('tr[data-token="soar"]')
    expect(row).to_contain_text("from 127.0.0.1")
    assert token not in page.content()
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("alert")).to_contain_text("Revoke service token soar?")
    page.get_by_role("button", name="Revoke soar").click()
    expect(page.get_by_role("status")).to_contain_text("Service token soar revoked")
    expect(row.locator(".token-state")).to_contain_text("revoked")

    gone = _jobs_call(platform, token, host)
    assert (gone.status_code, gone.json()["detail"]) == (
        401,
        "Service token soar was revoked; ask an admin for a new one.",
    )
    with admin.api() as api:
        assert api.get(f"/jobs/{job['id']}").json()["state"] == "cancelled"


def test_an_admin_manages_team_segments_configuration_enrollment_and_service_tokens(
    responding: tuple[Platform, Cli, Children], tmp_path: Path
) -> None:
    platform, admin, children = responding
    started = time.monotonic()
    with browser_page() as page:
        # The Copy button writes to the clipboard; the test reads it back.
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=platform.url)
        log_in(page, platform.url, platform.admin_password, platform.admin_code())
        _team_page(page, admin)
        _segments_page(page, admin)
        _configuration_page(page, admin)
        token = _enrollment_page(page)

        # The command line the page showed enrolls a real endpoint into the segment.
        agent = Agent(tmp_path / "ep", children, platform.env)
        result = agent.enroll(token)
        assert result.returncode == 0, result.stderr
        with admin.api() as api:
            host = api.get(f"/hosts/{agent.host_id}").json()
        assert host["segment"] == "ir"
        # Back to the page by its link (a reload would send the form again).
        page.get_by_role("link", name="Enrollment tokens").click()
        page.wait_for_load_state()
        expect(page.locator("table.tokens tbody tr").last).to_contain_text("1 of 1")
        assert token not in page.content()

        # A token that leaked is revoked from its row, at once.
        spare = admin.json("enroll-token", "create", "--segment", "ir", "--uses", "5")
        page.get_by_role("link", name="Enrollment tokens").click()
        row = page.locator(f'tr[data-token="{spare["id"]}"]')
        row.get_by_role("button", name="Revoke").click()
        expect(page.get_by_role("status")).to_have_text(
            f"Enrollment token {spare['id']} is revoked; it enrolls nothing more."
        )
        expect(page.locator(f'tr[data-token="{spare["id"]}"]')).to_contain_text("revoked by admin")
        _service_tokens_page(page, platform, admin, agent.host_id)
    print(f"settings browser test took {time.monotonic() - started:.1f} s")
