"""Headers, cookie flags and CSRF: what keeps the pages safe in a browser."""

import re

import httpx
from sqlalchemy import select

from tether.server.services.platform import Platform
from tether.server.store.tables import audit_records
from tether.server.web.security import CONTENT_SECURITY_POLICY
from tether.server.web.templating import ENVIRONMENT, STATIC, TEMPLATES

from ..support import add_host
from .conftest import csrf_of

PAGES = ["/active-response", "/active-response/hosts", "/session-history", "/mfa/enroll"]


def test_the_policy_is_strict() -> None:
    directives = {d.split()[0]: d.split()[1:] for d in CONTENT_SECURITY_POLICY.split("; ")}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert "data:" not in CONTENT_SECURITY_POLICY


async def test_every_web_response_carries_the_security_headers(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-host")
    paths = [*PAGES, "/login", f"/hosts/{host}", "/static/tether.css", "/static/nothing"]
    for path in paths:
        response = await admin_browser.get(path)
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
        assert response.headers["x-frame-options"] == "DENY", path


async def test_pages_are_never_cached_and_vendored_files_forever(
    admin_browser: httpx.AsyncClient,
) -> None:
    assert (await admin_browser.get("/active-response")).headers["cache-control"] == "no-store"
    css = await admin_browser.get("/static/tether.css")
    assert css.status_code == 200
    assert css.headers["cache-control"] == "public, max-age=3600"
    htmx = await admin_browser.get(f"/static/{ENVIRONMENT.globals['htmx']}")
    assert htmx.status_code == 200
    assert htmx.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "javascript" in htmx.headers["content-type"]


async def test_the_api_keeps_its_own_headers(admin_browser: httpx.AsyncClient) -> None:
    # The Swagger page loads its own assets; the pages' policy would break it.
    response = await admin_browser.get("/api/v1/openapi.json")
    assert "content-security-policy" not in response.headers


async def test_the_api_never_takes_the_pages_cookie(admin_browser: httpx.AsyncClient) -> None:
    # A browser attaches the cookie to any request, also one a form elsewhere on the same site
    # sends; the API has no CSRF check, so it must take only the Authorization header.
    assert admin_browser.cookies.get("tether_session")
    whoami = await admin_browser.get("/api/v1/auth/whoami")
    assert whoami.status_code == 401
    assert whoami.json()["detail"] == "Log in first: this request carries no session."
    assert (await admin_browser.post("/api/v1/auth/logout")).status_code == 401
    # The session itself still works, for the pages and with the token as a bearer.
    assert (await admin_browser.get("/active-response")).status_code == 200
    token = admin_browser.cookies["tether_session"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await admin_browser.get("/api/v1/auth/whoami", headers=bearer)).status_code == 200


async def test_the_session_cookie_is_httponly_secure_and_strict(
    browser: httpx.AsyncClient, platform: Platform, admin_password: str, admin_secret: str
) -> None:
    from .conftest import web_login

    response = await web_login(browser, platform, "admin", admin_password, admin_secret)
    cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    session = [c for c in cookies if c.startswith("tether_session=")]
    assert len(session) == 1, cookies
    flags = {f.strip().lower() for f in session[0].split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags
    # The pending-login and login-form cookies carry the same flags.
    for cookie in cookies:
        lowered = cookie.lower()
        assert "httponly" in lowered
        assert "secure" in lowered
        assert "samesite=strict" in lowered


async def _isolation_requests(platform: Platform) -> int:
    async with platform.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_records.c.seq).where(audit_records.c.action.like("job.%"))
            )
        ).all()
    return len(rows)


async def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "csrf-host")
    before = await _isolation_requests(platform)
    form = {"host": host, "action": "isolate-outbound"}
    for extra in ({}, {"csrf_token": "0" * 64}):
        response = await admin_browser.post("/active-response/actions", data={**form, **extra})
        assert response.status_code == 403
        assert "This form has expired; reload the page and try again." in response.text
    for path in ("/logout", "/mfa/enroll", "/mfa/confirm"):
        assert (await admin_browser.post(path)).status_code == 403, path
    assert await _isolation_requests(platform) == before
    assert (await platform.hosts.get(host)).isolation.state == "not isolated"
    # Still logged in: the refused logout did not end the session.
    assert (await admin_browser.get("/active-response")).status_code == 200


async def test_the_csrf_token_is_accepted_as_field_and_as_htmx_header(
    admin_browser: httpx.AsyncClient,
) -> None:
    page = await admin_browser.get("/active-response")
    token = csrf_of(page.text)
    # The token htmx sends comes from <body hx-headers>; the same one as the forms'.
    assert f'hx-headers=\'{{"X-CSRF-Token": "{token}"}}\'' in page.text
    by_field = await admin_browser.post(
        "/active-response/actions", data={"action": "isolate-outbound", "csrf_token": token}
    )
    by_header = await admin_browser.post(
        "/active-response/actions",
        data={"action": "isolate-outbound"},
        headers={"X-CSRF-Token": token},
    )
    for response in (by_field, by_header):
        assert response.status_code == 422
        assert "Select at least one host first." in response.text


async def test_the_login_form_is_csrf_protected_too(
    browser: httpx.AsyncClient, admin_password: str
) -> None:
    response = await browser.post(
        "/login", data={"username": "admin", "password": admin_password, "csrf_token": "x"}
    )
    assert response.status_code == 403
    assert "tether_session" not in response.headers.get("set-cookie", "")


def test_templates_hold_no_inline_script_style_or_handlers() -> None:
    inline_script = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
    handler = re.compile(r"\son[a-z]+\s*=", re.I)
    for template in TEMPLATES.rglob("*.html"):
        text = template.read_text()
        assert not inline_script.search(text), template.name
        assert not handler.search(text), template.name
        assert not re.search(r"\sstyle\s*=|<style", text, re.I), template.name
        assert "javascript:" not in text.lower(), template.name


def test_our_scripts_never_turn_text_into_markup() -> None:
    # Endpoint data reaches the page through these files only as text (textContent, xterm).
    markup = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", re.I
    )
    scripts = list(STATIC.glob("*.js"))
    assert scripts, "no scripts found"
    for script in scripts:
        assert not markup.search(script.read_text()), script.name


def test_only_the_platform_drawn_qr_code_is_marked_safe() -> None:
    uses = {t.name: len(re.findall(r"\|\s*safe", t.read_text())) for t in TEMPLATES.rglob("*.html")}
    assert {name: n for name, n in uses.items() if n} == {"enroll.html": 1}
