"""The Host page's live session in a real browser against a real platform and a real agent:
start a session, run commands in the xterm.js console and see their streamed output, browse the
file system and retrieve a file into the library, list processes and kill one the test started,
then find it all in Session History. Endpoint text planted as markup (a process name, a file name,
console output) stays text: browser_page fails on any dialog or CSP violation."""

import hashlib
import shutil
import time
from pathlib import Path

from playwright.sync_api import Page, expect

from .browser import browser_page, log_in, screenshot
from .harness import Agent, Children, Cli, Platform, clean_env, wait_for

HOSTILE = "<img src=x onerror=alert(1)>"
EVIDENCE = b"tether web retrieval evidence\n" * 100
TOOL = b"#!/bin/sh\necho deployed from the web\n"


def _no_planted_image(page: Page) -> None:
    assert page.locator('img[src="x"]').count() == 0


def test_a_responder_works_a_host_through_the_live_session(
    responding: tuple[Platform, Cli, Children],
    endpoint: Agent,
    children: Children,
    tmp_path: Path,
) -> None:
    platform, admin, _ = responding
    started = time.monotonic()
    # A directory the agent will list: a hostile file name and a file to retrieve.
    workdir = tmp_path / "case"
    workdir.mkdir()
    (workdir / "evidence.txt").write_bytes(EVIDENCE)
    # A process whose name is markup: a copy of sleep under the hostile name, run with that
    # path as argv[0] (psutil takes the full name from there when the kernel's is cut short).
    hostile_binary = workdir / HOSTILE
    shutil.copy("/bin/sleep", hostile_binary)
    victim = children.spawn("hostile-sleep", [str(hostile_binary), "300"], clean_env())
    host_url = f"{platform.url}/hosts/{endpoint.host_id}"

    with browser_page() as page:
        log_in(page, platform.url, platform.admin_password, platform.admin_code())
        page.goto(host_url)
        page.get_by_role("button", name="Start live session").click()
        page.wait_for_url(host_url)
        expect(page.get_by_role("button", name="End session")).to_be_visible()

        # The console: commands stream their output into xterm.js (its screen-reader rows hold
        # the text), endpoint output that looks like markup stays characters.
        terminal = page.locator("#terminal .xterm-accessibility-tree")
        command = page.get_by_label("Command in")
        command.fill(f"cd {workdir}")
        command.press("Enter")
        expect(page.locator("#console-cwd")).to_have_text(str(workdir))
        command.fill("ls")
        command.press("Enter")
        expect(terminal).to_contain_text("evidence.txt", timeout=20_000)
        command.fill(f"py print({HOSTILE!r}); print('console-' + 'done')")
        command.press("Enter")
        expect(terminal).to_contain_text("console-done", timeout=20_000)
        expect(terminal).to_contain_text(HOSTILE)
        # The jobs table below follows the console's jobs without a reload (polled rows).
        newest = page.locator("#host-job-rows tr[data-job]").first
        expect(newest).to_have_attribute("data-state", "succeeded", timeout=10_000)
        _no_planted_image(page)
        screenshot(page, "host-console")
        # The working directory is the console's own; a reload keeps it for this session.
        page.reload()
        expect(page.locator("#console-cwd")).to_have_text(str(workdir))
        command.fill("kill abc")
        command.press("Enter")
        expect(page.locator("#console-error")).to_have_text("kill: 'abc' is not a process id.")
        # A file that is not there: one sentence from the endpoint, no Python traceback; the
        # jobs table names the command, not script.run.
        command.fill("cat no-such-file")
        command.press("Enter")
        expect(terminal).to_contain_text("No such file or directory.", timeout=20_000)
        expect(terminal).not_to_contain_text("Traceback")
        # That sentence is the whole story: once the command is done (the input is back), no
        # second line says "failed: The script exited with code 1.".
        expect(command).to_be_enabled(timeout=20_000)
        expect(terminal).not_to_contain_text("exited with code")
        expect(page.locator("#console-error")).to_be_hidden()
        expect(newest.locator("td.what-ran")).to_have_text(f"cat {workdir}/no-such-file")

        # Files: browse to the directory, see the hostile name as text, retrieve a file.
        page.locator("#live").get_by_role("link", name="Files").click()
        page.get_by_label("Directory").fill(str(workdir))
        page.get_by_role("button", name="List").click()
        expect(page.locator("span.where")).to_have_text(str(workdir))
        expect(page.locator(f'tr[data-name="{HOSTILE}"]')).to_contain_text(HOSTILE)
        _no_planted_image(page)
        page.locator('tr[data-name="evidence.txt"]').get_by_role("button", name="Retrieve").click()
        expect(page.locator("p.notice")).to_contain_text("started")
        screenshot(page, "host-files")
        with admin.api() as api:

            def retrieved() -> bool:
                found = api.get("/files", params={"kind": "retrieved"}).json()
                return any(f["source_path"] == str(workdir / "evidence.txt") for f in found)

            wait_for(retrieved, timeout=30)
            (entry,) = [
                f
                for f in api.get("/files", params={"kind": "retrieved"}).json()
                if f["source_path"] == str(workdir / "evidence.txt")
            ]
        assert entry["sha256"] == hashlib.sha256(EVIDENCE).hexdigest()
        assert entry["host_id"] == endpoint.host_id

        # Deploy: a file uploaded to the deployment library lands in the directory shown.
        with admin.api() as api:
            uploaded = api.post("/files", params={"name": "tool.sh"}, content=TOOL)
            assert uploaded.status_code == 201, uploaded.text
        page.get_by_label("Directory").fill(str(workdir))
        page.get_by_role("button", name="List").click()
        page.get_by_label("Deployment library file").select_option(
            label=f"tool.sh ({len(TOOL)} bytes, {hashlib.sha256(TOOL).hexdigest()[:12]})"
        )
        page.get_by_role("button", name="Deploy").click()
        expect(page.locator("p.notice")).to_contain_text("started")
        wait_for(lambda: (workdir / "tool.sh").exists(), timeout=30, what="the deployed file")
        assert (workdir / "tool.sh").read_bytes() == TOOL

        # Processes: the hostile name is text; Kill asks on the page, then the process is gone.
        page.locator("#live").get_by_role("link", name="Processes").click()
        # Narrowed to the planted process (the whole list of a busy machine is long).
        page.get_by_label("Name contains").fill("onerror")
        page.get_by_role("button", name="List processes").click()
        row = page.locator(f'tr[data-pid="{victim.pid}"]')
        expect(row).to_contain_text(HOSTILE)
        assert page.locator("table.processes tbody tr").count() == 1
        _no_planted_image(page)
        screenshot(page, "host-processes")
        row.get_by_role("button", name="Kill").click()
        confirm = page.locator("#kill-confirm")
        expect(confirm).to_contain_text(f"Kill process {victim.pid} ({HOSTILE})")
        assert victim.alive(), "asking must not kill"
        confirm.get_by_role("button", name=f"Kill process {victim.pid}").click()
        expect(page.locator("p.notice")).to_contain_text(f"{victim.pid} killed")
        # Gone from the list without listing again.
        expect(row).to_have_count(0)
        victim.wait(timeout=10)
        assert not victim.alive()
        _no_planted_image(page)

        page.get_by_role("button", name="End session").click()
        expect(page.get_by_role("button", name="Start live session")).to_be_visible()

        # Session History has the session's start and stop and the retrieval.
        page.get_by_role("link", name="Session History").click()
        page.get_by_placeholder("Action, e.g. job. or auth.").fill("live_session.")
        page.get_by_role("button", name="Filter").click()
        records = page.locator("table.audit tbody")
        expect(records).to_contain_text("live_session.start")
        expect(records).to_contain_text("live_session.stop")
        page.get_by_placeholder("Action, e.g. job. or auth.").fill("file.retrieve")
        page.get_by_role("button", name="Filter").click()
        expect(records.locator("tr").first).to_contain_text("file.retrieve")
        expect(records.locator("tr").first).to_contain_text(endpoint.host_id)
    print(f"browser test took {time.monotonic() - started:.1f} s")
