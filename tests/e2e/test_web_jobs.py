"""Jobs in a real browser against a real platform and real agents: a job queued for a host that is
offline shows as pending on the Jobs page and is cancelled from there; a long script run from the
Scripts run form is cancelled from its results page and its agent stops it. Endpoint text planted
as markup stays text: browser_page fails on any dialog or CSP violation."""

import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Page, expect

from .browser import browser_page, log_in, screenshot
from .conftest import enrolled_agent
from .harness import Agent, Children, Cli, Platform

pytestmark = pytest.mark.e2e

HOSTILE = "<img src=x onerror=alert(1)>"
NAME = "Web Long Wait"
# Prints and reports a row at once, then waits far longer than the test: only a cancel ends it.
SOURCE = f"""import time
from tether import script

print("waiting for a cancel", flush=True)
print({HOSTILE!r}, flush=True)
script.row(step=1, note={HOSTILE!r})
time.sleep(300)
"""


def _no_planted_image(page: Page) -> None:
    assert page.locator('img[src="x"]').count() == 0


def test_a_pending_job_and_a_running_script_are_cancelled_from_the_pages(
    responding: tuple[Platform, Cli, Children],
    endpoint: Agent,
    tmp_path: Path,
) -> None:
    platform, admin, children = responding
    started = time.monotonic()
    # An endpoint that is enrolled but not running: its job waits in the queue.
    offline = enrolled_agent(platform, admin, children, tmp_path / "offline", segment="ir")
    with admin.api() as api:
        offline_name = api.get(f"/hosts/{offline.host_id}").json()["hostname"]
        online_name = api.get(f"/hosts/{endpoint.host_id}").json()["hostname"]
        queued = api.post(
            "/jobs", json={"action": "system.noop", "args": {}, "hosts": [offline.host_id]}
        )
        assert queued.status_code == 201, queued.text
        (pending,) = queued.json()["jobs"]
        saved = api.put(f"/scripts/{quote(NAME)}", json={"source": SOURCE, "description": "Waits"})
        assert saved.status_code in (200, 201), saved.text

    with browser_page() as page:
        log_in(page, platform.url, platform.admin_password, platform.admin_code())
        nav = page.get_by_role("navigation")

        # The Jobs page: the pending job, its host linked, filtered to what still waits.
        nav.get_by_role("link", name="Jobs").click()
        page.wait_for_url(f"{platform.url}/jobs")
        page.get_by_label("State").select_option("pending")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url(f"{platform.url}/jobs?state=pending*")
        row = page.locator(f'tr[data-job="{pending["id"]}"]')
        expect(row).to_have_attribute("data-state", "queued")
        expect(row.get_by_role("link", name=offline_name)).to_have_attribute(
            "href", f"/hosts/{offline.host_id}"
        )
        expect(row).to_contain_text("system.noop")
        expect(row).to_contain_text("admin")
        screenshot(page, "jobs")

        # Cancel from the table: back on the same filtered list, where it no longer waits.
        row.get_by_role("button", name="Cancel").click()
        page.wait_for_url(f"{platform.url}/jobs?state=pending*")
        expect(row).to_have_count(0)
        page.get_by_label("State").select_option("all")
        page.get_by_role("button", name="Filter").click()
        expect(row).to_have_attribute("data-state", "cancelled")
        row.get_by_role("link", name=pending["id"][:12]).click()
        page.wait_for_url(f"{platform.url}/jobs/{pending['id']}")
        expect(page.locator("#job-detail")).to_have_attribute("data-state", "cancelled")
        expect(page.locator("pre.job-error")).to_have_text(
            "Cancelled by admin before it was delivered."
        )

        # A long script from the Scripts run form, on the running endpoint.
        page.goto(f"{platform.url}/scripts/-/run?host={endpoint.host_id}")
        page.get_by_label("Script").select_option(NAME)
        page.get_by_role("button", name="Choose").click()
        expect(page.get_by_label(online_name)).to_be_checked()
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_url(f"{platform.url}/scripts/-/runs/*")
        results_url = page.url
        section = page.locator(f'section.run-host[data-host="{endpoint.host_id}"]')
        expect(section).to_have_attribute("data-state", "running", timeout=20_000)

        # Its job page follows it: the script as text, output and the row as they arrive.
        section.get_by_role("link", name="job").click()
        page.wait_for_url(f"{platform.url}/jobs/*")
        job_url = page.url
        detail = page.locator("#job-detail")
        expect(detail.locator("pre.output")).to_contain_text("waiting for a cancel", timeout=20_000)
        expect(detail.locator("table.rows tbody tr td")).to_have_text(["1", HOSTILE])
        expect(detail.locator("pre.script-source")).to_contain_text("time.sleep(300)")
        expect(detail).to_have_attribute("data-state", "running")
        expect(detail.get_by_role("button", name="Cancel")).to_be_visible()
        _no_planted_image(page)
        screenshot(page, "job")

        # Cancel the run from its results page: the agent is asked and stops the script.
        page.goto(results_url)
        page.get_by_role("button", name="Cancel the run").click()
        # Back on the same address: the outcome came in the notice cookie, not the link.
        expect(page.get_by_role("status")).to_contain_text("Cancelled 1 job(s) of this run.")
        assert page.url == results_url
        expect(section).to_have_attribute("data-state", "cancelled", timeout=30_000)
        expect(page.locator("#run-hosts")).to_have_attribute("data-running", "no")
        expect(page.get_by_role("button", name="Cancel the run")).to_have_count(0)
        page.goto(job_url)
        expect(detail).to_have_attribute("data-state", "cancelled")
        expect(detail).to_contain_text("Cancelled by admin.")
        expect(detail.get_by_role("button", name="Cancel")).to_have_count(0)
        _no_planted_image(page)

        # Both agents run on this machine and report its hostname, as a re-imaged machine and its
        # old record would: the Jobs page shows the start of each one's id beside the name.
        assert offline_name == online_name
        page.goto(f"{platform.url}/jobs")
        for host_id in (offline.host_id, endpoint.host_id):
            expect(page.locator(f'#job-rows small.host-id[title="{host_id}"]').first).to_have_text(
                host_id[:8]
            )

        # The list follows its jobs without a reload: two more jobs wait for the offline host; one
        # is cancelled elsewhere (the API) and its row changes in place, then the other is
        # cancelled from the refreshed rows, and with every shown job ended the polling stops.
        with admin.api() as api:
            waiting = api.post(
                "/jobs",
                json={"action": "system.noop", "args": {}, "hosts": [offline.host_id]},
            )
            assert waiting.status_code == 201, waiting.text
            again = api.post(
                "/jobs", json={"action": "system.noop", "args": {}, "hosts": [offline.host_id]}
            )
            assert again.status_code == 201, again.text
        (elsewhere,) = waiting.json()["jobs"]
        (here,) = again.json()["jobs"]
        page.goto(f"{platform.url}/jobs?host={offline.host_id}")
        rows = page.locator("#job-rows")
        expect(rows).to_have_attribute("hx-trigger", "every 2s")
        far = page.locator(f'tr[data-job="{elsewhere["id"]}"]')
        expect(far).to_have_attribute("data-state", "queued")
        with admin.api() as api:
            gone = api.post(f"/jobs/{elsewhere['id']}/cancel")
            assert gone.status_code == 200, gone.text
        expect(far).to_have_attribute("data-state", "cancelled", timeout=10_000)
        expect(far.get_by_role("button", name="Cancel")).to_have_count(0)
        near = page.locator(f'tr[data-job="{here["id"]}"]')
        near.get_by_role("button", name="Cancel").click()
        page.wait_for_url(f"{platform.url}/jobs?host={offline.host_id}")
        expect(near).to_have_attribute("data-state", "cancelled")
        expect(rows).not_to_have_attribute("hx-trigger", "every 2s")

    with admin.api() as api:
        audit = api.get("/audit", params={"limit": 1000}).json()
        targets = {r["target"] for r in audit if r["action"] == "job.cancel"}
        assert f"job:{pending['id']}" in targets
        assert f"job:{job_url.rsplit('/', 1)[1]}" in targets
        assert f"job:{here['id']}" in targets
    print(f"browser test took {time.monotonic() - started:.1f} s")


def test_a_pending_isolation_is_approved_from_the_jobs_page(
    responding: tuple[Platform, Cli, Children], tmp_path: Path
) -> None:
    """A SOAR playbook's token asks to isolate a host of a segment that needs four eyes; the
    admin sees the request counted on the nav, approves it on the Jobs page with a reason, and
    the job page names who asked, who approved and why. The host is offline, so the approved
    isolation waits in the offline queue (and nothing isolates the machine running the test)."""
    platform, admin, children = responding
    started = time.monotonic()
    admin.ok(
        "segment", "create", "guarded", "--active-response", "on", "--code", platform.admin_code()
    )
    admin.ok("segment", "set", "guarded", "--approval", "respond")
    host = enrolled_agent(platform, admin, children, tmp_path / "guarded", segment="guarded")
    # Within the step-up window of the code above, so no second code is spent.
    soar = admin.json(
        "service-token", "create", "playbook", "--tier", "respond", "--segment", "guarded",
        "--expires", "1d",
    )  # fmt: skip
    with admin.api() as api:
        base = str(api.base_url)
    with httpx.Client(
        base_url=base,
        verify=platform.ssl_context(),
        headers={"authorization": f"Bearer {soar['token']}"},
        timeout=10.0,
    ) as api:
        asked = api.post("/isolation/isolate", json={"hosts": [host.host_id]})
        assert asked.status_code == 201, asked.text
        (job,) = asked.json()["jobs"]
        assert job["state"] == "awaiting_approval"
        # A token never decides, its own request or any other.
        refused = api.post(f"/jobs/{job['id']}/approve", json={})
        assert refused.status_code == 403

    with browser_page() as page:
        log_in(page, platform.url, platform.admin_password, platform.admin_code())
        expect(page.locator("#approvals-waiting")).to_have_text("1")
        page.get_by_role("navigation").get_by_role("link", name="Jobs").click()
        request = page.locator("#approvals tr[data-batch]")
        expect(request).to_contain_text("isolation.isolate")
        expect(request).to_contain_text("service:playbook")
        page.get_by_label(f"Reason for approving {job['id']}").fill("ticket IR-7, confirmed")
        screenshot(page, "approvals")
        page.get_by_role("button", name=f"Approve job {job['id']}").click()
        page.wait_for_url(f"{platform.url}/jobs")
        expect(page.locator("p.notice.ok")).to_have_text(
            "Approved isolation.isolate requested by service:playbook."
        )
        expect(page.locator("#approvals")).to_have_count(0)
        expect(page.locator("#approvals-waiting")).to_have_count(0)
        page.goto(f"{platform.url}/jobs/{job['id']}")
        expect(page.locator("#job-detail")).to_have_attribute("data-state", "queued")
        expect(page.locator(".decided-by")).to_contain_text("admin")
        expect(page.locator(".decision-reason")).to_have_text("ticket IR-7, confirmed")
        expect(page.locator("section.approval")).to_contain_text("service:playbook")

    with admin.api() as api:
        actions = [r["action"] for r in api.get("/audit", params={"limit": 1000}).json()]
        assert "job.approval.request" in actions
        assert "job.approve" in actions
        state = api.get(f"/hosts/{host.host_id}").json()["isolation"]["state"]
        assert state == "isolation pending"
    print(f"approval browser test took {time.monotonic() - started:.1f} s")
