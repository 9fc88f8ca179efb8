"""A real browser for the web UI tests: Debian's Chromium driven by Playwright.

Never `playwright install` (it downloads); .ci/run installs the `chromium` package. Without it the
tests are skipped with the reason, except under CI=true, where they fail.
"""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import (
    ConsoleMessage,
    Dialog,
    Page,
    Response,
    expect,
    sync_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CSP_VIOLATION = re.compile(r"Content Security Policy|Refused to (execute|apply|load)", re.I)


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true: the browser tests must run.", pytrace=False)
    pytest.skip(reason)


@contextmanager
def browser_page() -> Iterator[Page]:
    """A fresh page; any JavaScript dialog or CSP violation fails the test when it ends."""
    require_chromium()
    # A shared CI machine can take seconds over a page that holds a request while an agent
    # lists a folder (up to 20 s): assertions wait as long as actions do, not expect's 5 s.
    expect.set_options(timeout=25_000)
    dialogs: list[str] = []
    violations: list[str] = []
    # A missing icon is a console error on every first page (issue 18): the pages name theirs.
    missing_icons: list[str] = []

    def on_response(response: Response) -> None:
        if "favicon" in response.url and response.status >= 400:
            missing_icons.append(response.url)

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        if CSP_VIOLATION.search(message.text):
            violations.append(message.text)

    with sync_playwright() as playwright:
        # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            # The platform's certificate comes from its own private CA, which this throwaway
            # browser profile does not know; the tests talk to the platform they just started.
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 800}
            )
            page = context.new_page()
            page.set_default_timeout(25_000)
            page.on("dialog", on_dialog)
            page.on("console", on_console)
            page.on("response", on_response)
            yield page
        finally:
            browser.close()
    assert not dialogs, f"a dialog fired: {dialogs}"
    assert not violations, f"the Content-Security-Policy blocked something: {violations}"
    assert not missing_icons, f"the page icon is missing: {missing_icons}"


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page, base_url: str, password: str, code: str, *, shot: bool = False) -> None:
    """Log in as the admin through the login page's two steps."""
    page.goto(f"{base_url}/active-response")
    page.wait_for_url(f"{base_url}/login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    if shot:
        screenshot(page, "login")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{base_url}/login/code")
    page.get_by_label("Code from your authenticator app").fill(code)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/active-response")
