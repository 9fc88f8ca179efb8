"""Logging in through the pages: the API's two steps, throttling and audit, in cookies."""

import html
import json
import re

import httpx
from sqlalchemy import select

from tether.protocol import Role
from tether.server.services.enrollment_codes import CODE_NEEDED
from tether.server.services.platform import Platform
from tether.server.services.users import CODE_REPLAYED
from tether.server.store.tables import audit_records
from tether.server.web.login import SIX_DIGITS

from ..api.conftest import Template
from ..support import code_after
from .conftest import csrf_of, web_login

PASSWORD = "a long enough password"


async def _logins(platform: Platform) -> list[tuple[str, str, dict[str, str]]]:
    async with platform.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_records.c.actor, audit_records.c.outcome, audit_records.c.details)
                .where(audit_records.c.action == "auth.login")
                .order_by(audit_records.c.seq)
            )
        ).all()
    return [(r.actor, r.outcome, json.loads(r.details)) for r in rows]


async def test_a_page_without_a_session_sends_the_browser_to_login(
    browser: httpx.AsyncClient,
) -> None:
    for path in ("/", "/active-response", "/session-history", "/hosts/x"):
        response = await browser.get(path)
        assert response.status_code == 303, path
        expected = "/active-response" if path == "/" else "/login"
        assert response.headers["location"] == expected, path


async def test_a_poll_after_the_session_ended_moves_the_whole_page_to_login(
    browser: httpx.AsyncClient,
) -> None:
    response = await browser.get("/active-response/hosts", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert response.headers["hx-redirect"] == "/login"
    assert response.text == ""


async def test_password_then_code_opens_a_session_and_both_steps_are_audited(
    browser: httpx.AsyncClient, platform: Platform, admin_password: str, admin_secret: str
) -> None:
    response = await web_login(browser, platform, "admin", admin_password, admin_secret)
    assert response.status_code == 303
    assert response.headers["location"] == "/active-response"
    page = await browser.get("/active-response")
    assert page.status_code == 200
    assert "Active Response" in page.text
    steps = [(a, o, d.get("factor"), d.get("client")) for a, o, d in await _logins(platform)]
    assert steps[-2:] == [
        ("admin", "success", "password", "ui"),
        ("admin", "success", "totp", "ui"),
    ]


async def test_a_wrong_password_or_code_is_one_plain_sentence_and_audited(
    browser: httpx.AsyncClient, platform: Platform, admin_password: str
) -> None:
    response = await web_login(browser, platform, "admin", "not the password")
    assert response.status_code == 401
    assert "The username or password is wrong." in response.text
    assert 'value="admin"' in response.text
    page = await browser.get("/login")
    response = await browser.post(
        "/login",
        data={"username": "admin", "password": admin_password, "csrf_token": csrf_of(page.text)},
    )
    assert response.headers["location"] == "/login/code"
    page = await browser.get("/login/code")
    response = await browser.post(
        "/login/code", data={"code": "000000", "csrf_token": csrf_of(page.text)}
    )
    assert response.status_code == 401
    assert "The code is wrong; enter the one your authenticator app shows now." in response.text
    outcomes = [(o, d.get("factor")) for _, o, d in await _logins(platform)]
    # A wrong code (the password was right) is a record of its own; a wrong password goes into
    # the per-source summary (ADR 0026).
    assert outcomes[-1] == ("failure", "totp")
    await platform.users.login_failures.flush(everything=True)
    async with platform.engine.connect() as conn:
        summary = (
            await conn.execute(
                select(audit_records.c.details).where(
                    audit_records.c.action == "auth.login.failures"
                )
            )
        ).scalar_one()
    assert json.loads(summary)["reasons"] == {"password via ui": 1}
    # The pending login is not a session.
    assert (await browser.get("/active-response")).headers["location"] == "/login"


async def test_malformed_input_is_refused_in_one_sentence(
    browser: httpx.AsyncClient, platform: Platform, admin_password: str
) -> None:
    page = await browser.get("/login")
    response = await browser.post(
        "/login", data={"username": "a" * 65, "password": "x", "csrf_token": csrf_of(page.text)}
    )
    assert response.status_code == 422
    assert "Enter your username (at most 64 characters) and your password." in response.text
    page = await browser.get("/login")
    await browser.post(
        "/login",
        data={"username": "admin", "password": admin_password, "csrf_token": csrf_of(page.text)},
    )
    page = await browser.get("/login/code")
    response = await browser.post(
        "/login/code", data={"code": "12345x", "csrf_token": csrf_of(page.text)}
    )
    assert response.status_code == 422
    assert SIX_DIGITS in response.text


async def test_logins_are_throttled_as_in_the_api(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    statuses = [
        (await web_login(browser, platform, "admin", f"wrong password {i}")).status_code
        for i in range(30)
    ]
    assert 429 in statuses
    assert statuses[0] == 401


async def test_logout_ends_the_session(admin_browser: httpx.AsyncClient) -> None:
    page = await admin_browser.get("/active-response")
    response = await admin_browser.post("/logout", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert (await admin_browser.get("/active-response")).headers["location"] == "/login"


async def test_a_responder_without_a_second_factor_must_enroll_one_first(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.users.create("newbie", PASSWORD, {Role.SCRIPT})
    response = await web_login(browser, platform, "newbie", PASSWORD)
    assert response.headers["location"] == "/mfa/enroll"
    assert (await browser.get("/active-response")).headers["location"] == "/mfa/enroll"
    page = await browser.get("/mfa/enroll")
    assert "tether user enrollment-code newbie" in page.text
    # The password alone does not enroll: the page asks for the admin's code.
    refused = await browser.post("/mfa/enroll", data={"csrf_token": csrf_of(page.text)})
    assert refused.status_code == 403
    assert CODE_NEEDED.format(username="newbie") in html.unescape(refused.text)
    issued = await platform.users.mfa.codes.issue(
        "newbie", actor="admin", actor_username="admin", source="s"
    )
    started = await browser.post(
        "/mfa/enroll",
        data={"csrf_token": csrf_of(page.text), "enrollment_code": issued.code},
    )
    assert started.status_code == 200
    assert '<svg width="' in started.text
    secret = re.search(r"Secret: <code>([A-Z2-7]+)</code>", started.text)
    assert secret is not None
    wrong = await browser.post(
        "/mfa/confirm", data={"code": "000000", "csrf_token": csrf_of(started.text)}
    )
    assert wrong.status_code == 422
    # The mistyped code kept the secret just scanned: the answer and a reload still show it.
    assert f"Secret: <code>{secret.group(1)}</code>" in wrong.text
    reload = await browser.get("/mfa/enroll")
    assert f"Secret: <code>{secret.group(1)}</code>" in reload.text
    code, _ = code_after(secret.group(1), None)
    done = await browser.post("/mfa/confirm", data={"code": code, "csrf_token": csrf_of(page.text)})
    assert done.status_code == 200, done.text
    assert "recovery codes" in done.text
    assert (await browser.get("/active-response")).status_code == 200


async def test_cancelling_an_enrollment_forgets_the_secret_and_the_code(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.users.create("newbie", PASSWORD, {Role.ADMIN})
    await web_login(browser, platform, "newbie", PASSWORD)
    page = await browser.get("/mfa/enroll")
    issued = await platform.users.mfa.codes.issue(
        "newbie", actor="admin", actor_username="admin", source="s"
    )
    started = await browser.post(
        "/mfa/enroll", data={"csrf_token": csrf_of(page.text), "enrollment_code": issued.code}
    )
    assert "Secret: <code>" in started.text
    cancelled = await browser.post("/mfa/cancel", data={"csrf_token": csrf_of(page.text)})
    assert cancelled.headers["location"] == "/mfa/enroll"
    again = await browser.get("/mfa/enroll")
    assert "Secret: <code>" not in again.text
    reused = await browser.post(
        "/mfa/enroll", data={"csrf_token": csrf_of(page.text), "enrollment_code": issued.code}
    )
    assert reused.status_code == 403
    assert "That enrollment code is wrong, used or expired" in reused.text


async def test_a_recovery_code_logs_in_through_the_page_once(
    browser: httpx.AsyncClient,
    platform: Platform,
    admin_password: str,
    platform_template: Template,
) -> None:
    recovery = platform_template.recovery_codes
    page = await browser.get("/login")
    await browser.post(
        "/login",
        data={"username": "admin", "password": admin_password, "csrf_token": csrf_of(page.text)},
    )
    code_page = await browser.get("/login/code")
    assert "Use a recovery code" in code_page.text
    done = await browser.post(
        "/login/code",
        data={"recovery_code": recovery[0].lower(), "csrf_token": csrf_of(code_page.text)},
    )
    assert done.headers["location"] == "/active-response"
    assert (await browser.get("/active-response")).status_code == 200
    # The same code again: refused with the CLI's sentence.
    await browser.post(
        "/logout", data={"csrf_token": csrf_of((await browser.get("/sessions")).text)}
    )
    page = await browser.get("/login")
    await browser.post(
        "/login",
        data={"username": "admin", "password": admin_password, "csrf_token": csrf_of(page.text)},
    )
    code_page = await browser.get("/login/code")
    again = await browser.post(
        "/login/code",
        data={"recovery_code": recovery[0], "csrf_token": csrf_of(code_page.text)},
    )
    assert again.status_code == 401
    assert CODE_REPLAYED in html.unescape(again.text)
