"""The second factor in a real browser: a recovery code logs in through the page, and web
enrollment (with the admin's enrollment code) keeps the scanned secret through a mistyped code
and a reload."""

import re
import time
from pathlib import Path

from playwright.sync_api import Page, expect

from tether.server.auth.totp import from_base32, totp

from .browser import browser_page, screenshot
from .harness import Cli, Platform

PASSWORD = "web identity password"


def _add(admin: Cli, name: str, role: str) -> str:
    """A new user; returns the enrollment code the admin issued for them."""
    admin.ok("user", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
    code: str = admin.json("user", "enrollment-code", name)["code"]
    return code


def _password_step(page: Page, base_url: str, name: str) -> None:
    page.goto(f"{base_url}/login")
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()


def test_a_recovery_code_logs_in_at_the_web_login_once(
    platform: Platform, admin: Cli, tmp_path: Path
) -> None:
    enrollment_code = _add(admin, "rosa", "script")
    rosa = Cli(tmp_path / "rosa", platform.env)
    rosa.ok(
        "login",
        "--server",
        platform.url,
        "--ca",
        str(platform.ca),
        "-u",
        "rosa",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    secret = rosa.json("mfa", "enroll", "--enrollment-code", enrollment_code)["secret"]
    confirmed = rosa.ok("mfa", "confirm", "--code", totp(from_base32(secret), time.time()))
    recovery = [line.strip() for line in confirmed.splitlines() if line.startswith("  ")]
    assert len(recovery) == 10

    with browser_page() as page:
        _password_step(page, platform.url, "rosa")
        page.wait_for_url(f"{platform.url}/login/code")
        page.get_by_text("Lost your authenticator? Use a recovery code").click()
        page.get_by_label("Recovery code").fill(recovery[0])
        screenshot(page, "login-recovery-code")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{platform.url}/active-response")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{platform.url}/login")

        # The same code a second time is refused with the CLI's sentence.
        _password_step(page, platform.url, "rosa")
        page.wait_for_url(f"{platform.url}/login/code")
        page.get_by_text("Lost your authenticator? Use a recovery code").click()
        page.get_by_label("Recovery code").fill(recovery[0])
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_have_text(
            "That code was already used; wait for the next one."
        )
    logins = [
        (r["outcome"], r["details"].get("factor"))
        for r in admin.json("audit", "list", "--limit", "1000")
        if r["action"] == "auth.login" and r["actor"] == "rosa"
    ]
    assert ("success", "recovery_code") in logins
    assert ("failure", "recovery_code") in logins


def test_web_enrollment_asks_for_the_code_and_keeps_the_scanned_secret(
    platform: Platform, admin: Cli
) -> None:
    enrollment_code = _add(admin, "wendy", "admin")
    with browser_page() as page:
        _password_step(page, platform.url, "wendy")
        page.wait_for_url(f"{platform.url}/mfa/enroll")
        # Without the admin's code the password alone gets no secret.
        page.get_by_label("Enrollment code from an admin").fill("AAAAA-AAAAA-AAAAA-AAAAA")
        page.get_by_role("button", name="Show my QR code").click()
        expect(page.get_by_role("alert")).to_have_text(
            "That enrollment code is wrong, used or expired; ask an admin for a new one "
            "('tether user enrollment-code wendy')."
        )
        page.get_by_label("Enrollment code from an admin").fill(enrollment_code)
        page.get_by_role("button", name="Show my QR code").click()
        shown = page.locator("p", has_text="Secret:").locator("code")
        secret = shown.inner_text()
        assert re.fullmatch(r"[A-Z2-7]{32}", secret)
        screenshot(page, "enroll-secret")

        wrong = next(c for c in ("000000", "111111") if c != totp(from_base32(secret), time.time()))
        page.get_by_label("Code").fill(wrong)
        page.get_by_role("button", name="Activate").click()
        expect(page.get_by_role("alert")).to_contain_text("That code does not match")
        # The mistyped code kept the secret the user just scanned, and so does a reload.
        expect(shown).to_have_text(secret)
        page.goto(f"{platform.url}/mfa/enroll")
        expect(page.locator("p", has_text="Secret:").locator("code")).to_have_text(secret)

        page.get_by_label("Code").fill(totp(from_base32(secret), time.time()))
        page.get_by_role("button", name="Activate").click()
        expect(page.locator("pre.codes")).to_be_visible()
        page.get_by_role("link", name="Continue").click()
        page.wait_for_url(f"{platform.url}/active-response")
    users = {u["username"]: u for u in admin.json("user", "list")}
    assert users["wendy"]["mfa_enabled"] is True
