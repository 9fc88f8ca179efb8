"""Scripts in a real browser against a real platform and a real agent: write a script in the
editor, tick the host on Active Response, Actions -> Run script, fill a parameter, watch the
output stream in and the rows table appear (endpoint text shown as text), download the CSV, and
find the submission with the whole script in Session History."""

import csv
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .browser import browser_page, log_in, screenshot
from .harness import Agent, Children, Cli, Platform

pytestmark = pytest.mark.e2e

HOSTILE = "<img src=x onerror=alert(1)>"
NAME = "Web Greeting"
# Prints at once, then waits (at most a minute) for the test to create GATE once it has seen the
# page follow a running job; the rows come after. One row carries the hostile text as a key and
# a value, one a spreadsheet formula.
GATE = "{gate}"
SOURCE = f"""import os, time
from tether import script

print("hello", script.params["greeting"], flush=True)
# Wait (at most a minute) for the go-ahead, so that the page shows the job running.
deadline = time.monotonic() + 60
while not os.path.exists({GATE!r}) and time.monotonic() < deadline:
    time.sleep(0.1)
for number in range(script.params["count"]):
    script.row(number=number, square=number * number)
script.row(**{{"{HOSTILE}": "{HOSTILE}", "number": "=1+2", "square": script.params["greeting"]}})
print("{HOSTILE}", flush=True)
print("done", flush=True)
"""
SCHEMA = """{
  "type": "object",
  "properties": {
    "greeting": {"type": "string", "minLength": 1, "description": "What to say"},
    "count": {"type": "integer", "minimum": 0, "maximum": 10, "default": 2}
  },
  "required": ["greeting"]
}"""
# As long and unbroken as a process's command line: the pages wrap it, never widen (issue 18).
GREETING = "from the browser " + "/opt/collector/bin/collector_config=/etc/collector/" * 12
VIEWPORT_WIDTH = 1280


def _fits_the_viewport(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORT_WIDTH, f"{page.url} is {width} px wide"


def _aligned_with_its_header(page: Page, table: str, column: int) -> None:
    """A column's numbers sit under their header: both aligned the same way."""
    align = "e => getComputedStyle(e).textAlign"
    header = page.locator(f"{table} thead th").nth(column).evaluate(align)
    cell = page.locator(f"{table} tbody tr").first.locator("td").nth(column).evaluate(align)
    assert header == cell, (table, column, header, cell)


def test_a_responder_writes_runs_and_exports_a_script(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    platform, admin, _ = responding
    with admin.api() as api:
        hostname = api.get(f"/hosts/{endpoint.host_id}").json()["hostname"]
    started = time.monotonic()
    with browser_page() as page:
        log_in(page, platform.url, platform.admin_password, platform.admin_code())
        nav = page.get_by_role("navigation")

        # The library and a new script written in the editor.
        nav.get_by_role("link", name="Scripts").click()
        page.wait_for_url(f"{platform.url}/scripts")
        page.get_by_role("link", name="New script").click()
        page.get_by_label("Name").fill(NAME)
        page.get_by_label("Description").fill("Greets, then counts squares")
        gate = tmp_path / "gate"
        page.get_by_label("Source", exact=True).fill(SOURCE.replace(GATE, str(gate)))
        page.get_by_label("Parameters schema").fill(SCHEMA)
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status")).to_have_text("Saved as version 1.")
        expect(page.locator(".versions tbody tr")).to_have_count(1)
        screenshot(page, "script-editor")
        nav.get_by_role("link", name="Scripts").click()
        expect(page.locator(f'tr[data-script="{NAME}"]')).to_contain_text("v1")
        screenshot(page, "scripts")

        # Active Response: tick the host, Actions -> Run script, pick the script there.
        nav.get_by_role("link", name="Active Response").click()
        page.locator(f'tr[data-host="{endpoint.host_id}"] input[type="checkbox"]').check()
        page.locator("details.menu summary").click()
        page.get_by_role("button", name="Run script").click()
        page.wait_for_url(f"{platform.url}/scripts/-/run?host={endpoint.host_id}")
        expect(page.locator(".chosen-hosts")).to_have_text(f"for {hostname}")
        page.get_by_label("Script").select_option(NAME)
        page.get_by_role("button", name="Choose").click()
        box = page.get_by_label(f"{hostname}")
        expect(box).to_be_checked()
        # The form lines up: a host's box on its name's line, the segment list under its choice.
        ticked, label = box.bounding_box(), page.locator("label.host").first.bounding_box()
        assert ticked is not None
        assert label is not None
        assert ticked["width"] < 40, ticked
        bottom = label["y"] + label["height"]
        assert label["y"] <= ticked["y"], (ticked, label)
        assert ticked["y"] + ticked["height"] <= bottom, (ticked, label)
        chooser = page.locator('input[name="target"][value="segment"]').bounding_box()
        segments = page.get_by_label("Segment", exact=True).bounding_box()
        assert chooser is not None
        assert segments is not None
        assert segments["x"] > chooser["x"] + 10, (chooser, segments)
        expect(page.get_by_label("count")).to_have_value("2")
        page.get_by_label("greeting").fill(GREETING)
        page.get_by_role("button", name="Run", exact=True).click()

        # The results: output streams in while the job runs, then the rows table.
        page.wait_for_url(f"{platform.url}/scripts/-/runs/*")
        section = page.locator(f'section.run-host[data-host="{endpoint.host_id}"]')
        expect(section.locator("pre.output")).to_contain_text(
            "hello from the browser", timeout=20_000
        )
        expect(section).to_have_attribute("data-state", "running")
        expect(section.locator("table.rows")).to_have_count(0)

        # The summary view (what a run on many hosts shows): one line per host, its poll
        # bringing the changed line when the job goes on, then stopping.
        results = page.url
        page.get_by_role("link", name="Summary").click()
        line = page.locator(f'tr.run-row[data-host="{endpoint.host_id}"]')
        expect(line).to_have_attribute("data-state", "running")
        expect(page.locator("#run-poll")).to_have_attribute("data-running", "yes")
        gate.touch()  # the agent runs on this machine: the script may go on
        expect(line).to_have_attribute("data-state", "succeeded", timeout=30_000)
        # Pieces as the agent sent them (it may join lines printed together), rows one each.
        expect(line.locator("td").nth(0)).to_have_text(hostname)
        expect(line.locator("td").nth(2)).not_to_have_text("0")
        expect(line.locator("td").nth(3)).to_have_text("3")
        expect(page.locator("#run-poll")).to_have_attribute("data-running", "no")
        expect(page.locator("#run-poll .run-counts")).to_contain_text("succeeded 1")
        _aligned_with_its_header(page, "table.run-summary", 2)
        _aligned_with_its_header(page, "table.run-summary", 3)
        _fits_the_viewport(page)
        assert page.locator('img[src="x"]').count() == 0
        screenshot(page, "script-run-summary")
        page.goto(results)
        expect(section).to_have_attribute("data-state", "succeeded")
        expect(section.locator("pre.output")).to_contain_text("done")
        expect(page.locator("#run-hosts")).to_have_attribute("data-running", "no")
        rows = section.locator("table.rows")
        expect(rows.locator("thead th")).to_have_text(["number", "square", HOSTILE])
        expect(rows.locator("tbody tr")).to_have_count(3)
        expect(rows.locator("tbody tr").nth(1).locator("td")).to_have_text(["1", "1", ""])
        expect(rows.locator("tbody tr").nth(2).locator("td")).to_have_text(
            ["=1+2", GREETING, HOSTILE]
        )
        _fits_the_viewport(page)
        expect(section.locator("pre.output")).to_contain_text(HOSTILE)
        assert page.locator('img[src="x"]').count() == 0
        screenshot(page, "script-results")

        # The CSV: a host column first, every row, the formula made inert.
        with page.expect_download() as download:
            page.get_by_role("link", name="Export rows (CSV)").click()
        saved = tmp_path / "rows.csv"
        download.value.save_as(saved)
        with saved.open(newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
        assert table == [
            ["host", "number", "square", HOSTILE],
            [hostname, "0", "0", ""],
            [hostname, "1", "1", ""],
            [hostname, "'=1+2", GREETING, HOSTILE],
        ]

        # Session History: the submission, with the whole script text that ran.
        nav.get_by_role("link", name="Session History").click()
        page.get_by_placeholder("Action, e.g. job. or auth.").fill("job.submit")
        page.get_by_role("button", name="Filter").click()
        record = page.locator("table.audit tbody tr").first
        expect(record).to_contain_text("job.submit")
        record.locator("summary").click()
        details = record.locator("dl.record")
        expect(details).to_contain_text("script.run")
        expect(details).to_contain_text(f"{NAME} v1")
        expect(details).to_contain_text("time.sleep(0.1)")
        expect(details).to_contain_text("from the browser")
        assert page.locator('img[src="x"]').count() == 0
    print(f"browser test took {time.monotonic() - started:.1f} s")
