"""The Files page in a real browser against a real platform and a real agent: a file with a
hostile name retrieved from the endpoint is shown as text, its chain of custody holds the
retrieval and the browser's download, the download is byte-exact, and an upload through the
page lands in the deployment library."""

import hashlib
import os
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .browser import browser_page, log_in, screenshot
from .harness import Agent, Children, Cli, Platform

pytestmark = pytest.mark.e2e

# A valid Linux file name, and markup if anything ever rendered it as such.
HOSTILE = "<img src=x onerror=alert(1)>"


def test_retrieve_see_custody_download_and_upload(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    platform, admin, _ = responding
    evidence = tmp_path / HOSTILE
    evidence.write_bytes(os.urandom(256 * 1024 + 3))
    expected = hashlib.sha256(evidence.read_bytes()).hexdigest()
    out = tmp_path / "cli-out"
    out.mkdir()
    got = admin.json("get", endpoint.host_id, str(evidence), "-o", str(out))
    file_id = got["file"]["id"]
    assert got["file"]["sha256"] == expected

    started = time.monotonic()
    with browser_page() as page:
        log_in(page, platform.url, platform.admin_password, platform.admin_code())
        page.get_by_role("link", name="Files", exact=True).click()
        page.wait_for_url(f"{platform.url}/files")
        row = page.locator(f'tr[data-file="{file_id}"]')
        expect(row.get_by_role("link", name=HOSTILE)).to_have_text(HOSTILE)
        expect(row).to_contain_text(str(evidence))
        expect(row).to_contain_text(expected)
        assert page.locator('img[src="x"]').count() == 0
        screenshot(page, "files")

        row.get_by_role("link", name=HOSTILE).click()
        page.wait_for_url(f"{platform.url}/files/{file_id}")
        expect(page.locator("h1")).to_have_text(HOSTILE)
        custody = page.locator("table.custody tbody tr")
        # The retrieval, then the CLI's own download of it (`tether get` saves the file).
        expect(custody).to_have_count(2)
        expect(custody.first).to_contain_text("Retrieved")
        expect(custody.first).to_contain_text(expected)
        expect(custody.nth(1)).to_contain_text("Downloaded")

        with page.expect_download() as info:
            page.get_by_role("link", name="Download").click()
        saved = tmp_path / "browser-download"
        info.value.save_as(saved)
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == expected
        assert info.value.suggested_filename != ""

        page.reload()
        expect(custody).to_have_count(3)
        expect(custody.nth(2)).to_contain_text("Downloaded")
        expect(custody.nth(2)).to_contain_text("admin")
        assert page.locator('img[src="x"]').count() == 0
        screenshot(page, "file-custody")

        tool = tmp_path / "contain.sh"
        tool.write_bytes(b"#!/bin/sh\necho contained\n")
        page.goto(f"{platform.url}/files#library")
        page.get_by_label("File", exact=True).set_input_files(str(tool))
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url(f"{platform.url}/files/*")
        expect(page.locator("h1")).to_have_text("contain.sh")
        expect(page.locator("table.custody tbody tr").first).to_contain_text("Uploaded")
    print(f"browser test took {time.monotonic() - started:.1f} s")

    uploads = admin.json("files", "list", "--kind", "upload")
    tool_sha = hashlib.sha256(tool.read_bytes()).hexdigest()
    assert [(e["name"], e["sha256"]) for e in uploads] == [("contain.sh", tool_sha)]
