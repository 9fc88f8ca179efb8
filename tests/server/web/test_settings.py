"""The Settings pages: Team, Device Segments, Device Configuration, Enrollment tokens.

Each change goes through the service the API uses, so it is checked against the service's state
and the audit log; refusals show the service's sentence and change nothing.
"""

import html
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from markupsafe import escape

from tether.protocol import EnrollmentToken, Role
from tether.protocol.isolation import AllowRule
from tether.server.app import create_app
from tether.server.auth.totp import new_secret, to_base32
from tether.server.services.audit import AuditRecord, AuditSearch
from tether.server.services.platform import Platform

from ..support import add_host
from .conftest import csrf_of, web_login

PASSWORD = "a long enough password"
PAGES = (
    "/settings/team",
    "/settings/segments",
    "/settings/configuration",
    "/settings/enrollment",
)


async def _records(platform: Platform, action: str) -> list[AuditRecord]:
    return await platform.audit.newest(AuditSearch(action=action))


async def _post(
    browser: httpx.AsyncClient, page: str, action: str, data: Mapping[str, str | list[str]]
) -> httpx.Response:
    """Submit a form of `page` as the browser would: with the page's CSRF token."""
    token = csrf_of((await browser.get(page)).text)
    return await browser.post(action, data={**data, "csrf_token": token})


async def _confirmed(browser: httpx.AsyncClient, response: httpx.Response, sentence: str) -> None:
    """Post/redirect/get: the change redirects, and the page shows its confirmation once."""
    assert response.status_code == 303, response.text
    shown = await browser.get(response.headers["location"])
    assert 'role="status"' in shown.text
    assert escape(sentence) in shown.text
    again = await browser.get(response.headers["location"])
    assert escape(sentence) not in again.text


async def test_an_admin_creates_a_user_and_grants_them_active_response(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    created = await _post(
        admin_browser,
        "/settings/team",
        "/settings/team",
        {"username": "mdr-ana", "password": PASSWORD, "role": ["analyst"]},
    )
    await _confirmed(admin_browser, created, "User mdr-ana created (Analyst).")
    assert (await platform.team.get("mdr-ana")).roles == ["analyst"]
    assert (await _records(platform, "user.create"))[0].target == "mdr-ana"

    granted = await _post(
        admin_browser,
        "/settings/team",
        "/settings/team/mdr-ana/roles",
        {"role": "script", "grant": "yes"},
    )
    await _confirmed(
        admin_browser, granted, "mdr-ana now holds the script tier of Active Response."
    )
    assert (await platform.team.get("mdr-ana")).roles == ["analyst", "script"]
    grant = (await _records(platform, "role.grant"))[0]
    assert (grant.actor, grant.target) == ("admin", "mdr-ana")
    assert '"script"' in grant.details

    removed = await _post(
        admin_browser,
        "/settings/team",
        "/settings/team/mdr-ana/roles",
        {"role": "script", "grant": "no"},
    )
    await _confirmed(
        admin_browser, removed, "mdr-ana no longer holds the script tier of Active Response."
    )
    assert (await platform.team.get("mdr-ana")).roles == ["analyst"]
    assert (await _records(platform, "role.revoke"))[0].target == "mdr-ana"

    row = (await admin_browser.get("/settings/team")).text
    assert 'data-user="mdr-ana"' in row
    assert "Grant Active Response" in row


async def test_disable_enable_reset_and_external_go_through_the_team_service(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    account = await platform.users.create("casey", PASSWORD, {Role.SCRIPT})
    await platform.users.mfa.enroll_directly(account.id, new_secret())
    page = "/settings/team"

    await _confirmed(
        admin_browser,
        await _post(admin_browser, page, "/settings/team/casey/disable", {}),
        "casey is disabled; their sessions have ended.",
    )
    assert (await platform.team.get("casey")).disabled
    await _confirmed(
        admin_browser,
        await _post(admin_browser, page, "/settings/team/casey/enable", {}),
        "casey is enabled.",
    )
    assert not (await platform.team.get("casey")).disabled
    assert [r.action for r in (await _records(platform, "user."))[:2]] == [
        "user.enable",
        "user.disable",
    ]

    assert (await platform.team.get("casey")).mfa_enabled
    reset = await _post(admin_browser, page, "/settings/team/casey/mfa-reset", {})
    # The enrollment code for the new factor is shown on this answer, once, never redirected.
    assert reset.status_code == 200, reset.text
    shown = re.search(r'<code id="enrollment-code">([A-Z0-9-]+)</code>', reset.text)
    assert shown is not None
    assert "Enrollment code for <strong>casey</strong>" in reset.text
    assert shown.group(1) not in (await admin_browser.get(page)).text
    assert not (await platform.team.get("casey")).mfa_enabled
    assert (await _records(platform, "mfa.reset"))[0].target == "casey"

    await _confirmed(
        admin_browser,
        await _post(
            admin_browser,
            page,
            "/settings/team/casey/external",
            {"external": "yes", "organisation": "Acme MDR", "until": "2099-12-31"},
        ),
        "casey is external (Acme MDR), with access until 2099-12-31.",
    )
    info = await platform.team.get("casey")
    assert info.external
    assert info.organisation == "Acme MDR"
    # The last day entered is a whole day of access: it ends when the next one begins.
    assert info.access_expires_at == datetime(2100, 1, 1, tzinfo=UTC)
    external = json.loads((await _records(platform, "user.external"))[0].details)
    assert external["access_expires_at"] == "2100-01-01T00:00:00+00:00"
    await _confirmed(
        admin_browser,
        await _post(admin_browser, page, "/settings/team/casey/external", {"external": "no"}),
        "casey is internal.",
    )
    info = await platform.team.get("casey")
    assert not info.external
    assert info.access_expires_at is None


@pytest.mark.parametrize(
    ("action", "data", "sentence", "status"),
    [
        (
            "/settings/team/admin/disable",
            {},
            "'admin' is the last enabled admin; make another admin first.",
            409,
        ),
        (
            "/settings/team/admin/external",
            {"external": "yes", "organisation": "Acme", "until": "next tuesday"},
            "Write the last day of access as a date, YYYY-MM-DD.",
            422,
        ),
        (
            "/settings/team/admin/external",
            {"external": "yes", "organisation": "", "until": ""},
            "An external user needs the name of their organisation.",
            422,
        ),
        (
            "/settings/team/admin/roles",
            {"role": "root", "grant": "yes"},
            "There is no role named 'root'.",
            422,
        ),
        ("/settings/team/nobody/disable", {}, "There is no user named 'nobody'.", 404),
    ],
)
async def test_a_refused_team_change_shows_one_sentence_and_changes_nothing(
    admin_browser: httpx.AsyncClient,
    platform: Platform,
    action: str,
    data: dict[str, str],
    sentence: str,
    status: int,
) -> None:
    before = await platform.team.list()
    audited = await platform.audit.newest(AuditSearch(), limit=1)
    response = await _post(admin_browser, "/settings/team", action, data)
    assert response.status_code == status
    assert escape(sentence) in response.text
    assert response.text.count('role="alert"') == 1
    assert await platform.team.list() == before
    assert await platform.audit.newest(AuditSearch(), limit=1) == audited


@pytest.mark.parametrize(
    ("action", "data", "sentence", "refused"),
    [
        (
            "/settings/team/admin/roles",
            {"role": "admin", "grant": "no"},
            "You cannot change the roles of your own account; ask another admin.",
            "role.revoke",
        ),
        (
            "/settings/team/admin/roles",
            {"role": "analyst", "grant": "yes"},
            "You cannot change the roles of your own account; ask another admin.",
            "role.grant",
        ),
        (
            "/settings/team/admin/mfa-reset",
            {},
            "You cannot reset your own second factor; ask another admin.",
            "mfa.reset",
        ),
        (
            "/settings/team/admin/enrollment-code",
            {},
            "You cannot issue an enrollment code for your own account; ask another admin "
            "(or run 'tether server enrollment-code' on the platform host).",
            "mfa.enrollment_code.issue",
        ),
    ],
)
async def test_changing_your_own_access_is_refused_and_recorded(
    admin_browser: httpx.AsyncClient,
    platform: Platform,
    action: str,
    data: dict[str, str],
    sentence: str,
    refused: str,
) -> None:
    before = await platform.team.list()
    response = await _post(admin_browser, "/settings/team", action, data)
    assert response.status_code == 403
    assert escape(sentence) in response.text
    assert await platform.team.list() == before
    newest = (await platform.audit.newest(AuditSearch(), limit=1))[0]
    assert (newest.action, newest.target, newest.outcome) == (refused, "admin", "failure")


async def test_a_refused_new_user_keeps_the_name_but_never_the_password(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    response = await _post(
        admin_browser,
        "/settings/team",
        "/settings/team",
        {"username": "shorty", "password": "tiny-secret", "role": ["script"]},
    )
    assert response.status_code == 422
    assert "A password needs at least" in response.text
    assert 'value="shorty"' in response.text
    assert "tiny-secret" not in response.text
    assert "shorty" not in [u.username for u in await platform.team.list()]


async def test_segments_are_created_switched_and_deleted(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    page = "/settings/segments"
    await _confirmed(
        admin_browser,
        await _post(admin_browser, page, page, {"name": "lab"}),
        "Segment lab created, Active Response off.",
    )
    assert not (await platform.segments.get("lab")).active_response
    await _confirmed(
        admin_browser,
        await _post(
            admin_browser, page, "/settings/segments/lab/active-response", {"enabled": "on"}
        ),
        "Active Response is on for lab.",
    )
    assert (await platform.segments.get("lab")).active_response
    switched = (await _records(platform, "segment.active_response"))[0]
    assert switched.target == "segment:lab"
    assert json.loads(switched.details)["after"] == {"active_response": True}

    # The same switch on Device Configuration goes back there.
    off = await _post(
        admin_browser,
        "/settings/configuration",
        "/settings/segments/lab/active-response",
        {"enabled": "off", "back": "configuration"},
    )
    assert off.headers["location"] == "/settings/configuration"
    await _confirmed(admin_browser, off, "Active Response is off for lab.")
    assert not (await platform.segments.get("lab")).active_response

    await _confirmed(
        admin_browser,
        await _post(admin_browser, page, "/settings/segments/lab/delete", {}),
        "Segment lab deleted",
    )
    assert "lab" not in [s.name for s in await platform.segments.list()]
    assert (await _records(platform, "segment.delete"))[0].target == "segment:lab"


async def test_a_segment_holding_hosts_is_not_deleted(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await add_host(platform.engine, "kept-host", segment="busy")
    page = (await admin_browser.get("/settings/segments")).text
    assert '<tr data-segment="busy">' in page
    response = await _post(
        admin_browser, "/settings/segments", "/settings/segments/busy/delete", {}
    )
    assert response.status_code == 409
    assert "Segment &#39;busy&#39; still holds 1 host; move them" in response.text
    assert (await platform.segments.get("busy")).hosts == 1


async def test_a_bad_segment_name_is_refused(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    before = await platform.segments.list()
    response = await _post(
        admin_browser, "/settings/segments", "/settings/segments", {"name": "no/slashes"}
    )
    assert response.status_code == 422
    assert "A segment name is 1 to 64 letters" in response.text
    assert await platform.segments.list() == before


async def test_platform_settings_and_the_allowlist_are_saved_and_audited(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    page = "/settings/configuration"
    await _confirmed(
        admin_browser,
        await _post(admin_browser, page, page, {"mfa_required_for_everyone": "on"}),
        "Settings saved.",
    )
    settings = await platform.access_settings.get()
    assert settings.mfa_required_for_everyone
    assert not settings.external_access_suspended
    changed = json.loads((await _records(platform, "settings.change"))[0].details)
    assert changed == {"mfa_required_for_everyone": True}
    shown = (await admin_browser.get(page)).text
    assert 'name="mfa_required_for_everyone" value="on" checked' in shown

    await _confirmed(
        admin_browser,
        await _post(
            admin_browser,
            page,
            "/settings/configuration/allowlist",
            {"rules": "10.20.0.0/16\n\n192.0.2.10 443, 8443\n"},
        ),
        "Isolation allowlist saved (2 entries)",
    )
    assert await platform.isolation.allowlist() == [
        AllowRule(cidr="10.20.0.0/16"),
        AllowRule(cidr="192.0.2.10/32", ports=(443, 8443)),
    ]
    assert (await _records(platform, "isolation.allowlist"))[0].actor == "admin"
    assert "192.0.2.10/32 443,8443" in (await admin_browser.get(page)).text


@pytest.mark.parametrize(
    ("rules", "sentence"),
    [
        ("10.0.0.0/8\nnot-a-network", "Line 2: &#39;not-a-network&#39; is not an IPv4 or IPv6"),
        ("10.0.0.0/8 https", "Line 1: ports are numbers from 1 to 65535, separated by commas."),
        ("10.0.0.0/8 70000", "Line 1: ports are numbers from 1 to 65535, separated by commas."),
    ],
)
async def test_a_bad_allowlist_line_is_named_and_nothing_is_saved(
    admin_browser: httpx.AsyncClient, platform: Platform, rules: str, sentence: str
) -> None:
    await platform.isolation.set_allowlist(
        [AllowRule(cidr="172.16.0.0/12")], actor="test", source="test"
    )
    response = await _post(
        admin_browser,
        "/settings/configuration",
        "/settings/configuration/allowlist",
        {"rules": rules},
    )
    assert response.status_code == 422
    assert sentence in response.text
    # What was typed stays in the box to be corrected.
    assert rules.split("\n")[-1] in response.text
    assert await platform.isolation.allowlist() == [AllowRule(cidr="172.16.0.0/12")]


async def test_an_enrollment_token_is_shown_once_with_its_command(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    page = "/settings/enrollment"
    await platform.segments.create("branch", actor="test", source="test")
    form = (await admin_browser.get(page)).text
    # The segment is chosen from those that exist, never typed.
    assert '<select name="segment" required><option value="branch">branch</option>' in form
    response = await _post(
        admin_browser, page, page, {"segment": "branch", "uses": "3", "hours": "2"}
    )
    assert response.status_code == 201, response.text
    command = response.text.split('id="enroll-command">', 1)[1].split("</pre>", 1)[0]
    assert command.startswith("tether agent enroll --token ")
    token = EnrollmentToken.decode(command.removeprefix("tether agent enroll --token "))
    assert token.ca_sha256 == platform.ca.sha256

    [issued] = await platform.enrollment.list_tokens()
    assert (issued.segment, issued.max_uses, issued.uses) == ("branch", 3, 0)
    lifetime = issued.expires_at - issued.created_at
    assert 7190 <= lifetime.total_seconds() <= 7210
    assert (await _records(platform, "enrollment_token.create"))[0].target == f"token:{issued.id}"

    listed = (await admin_browser.get(page)).text
    assert f'<tr data-token="{issued.id}">' in listed
    assert "0 of 3" in listed
    assert token.secret not in listed


async def test_a_typed_segment_that_does_not_exist_is_refused_not_created(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    page = "/settings/enrollment"
    response = await _post(admin_browser, page, page, {"segment": "brnach", "uses": "1"})
    assert response.status_code == 404
    assert escape("No segment is named 'brnach'; create it first") in response.text
    assert [s.name for s in await platform.segments.list()] == ["default"]
    assert await platform.enrollment.list_tokens() == []


async def test_an_admin_revokes_a_token_from_the_page(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    page = "/settings/enrollment"
    issued = await platform.enrollment.create_token(
        segment="default", uses=5, lifetime=timedelta(hours=1), actor="admin", source="test"
    )
    listed = (await admin_browser.get(page)).text
    assert f'<input type="hidden" name="token" value="{issued.id}">' in listed

    response = await _post(admin_browser, page, f"{page}/revoke", {"token": str(issued.id)})

    await _confirmed(
        admin_browser,
        response,
        f"Enrollment token {issued.id} is revoked; it enrolls nothing more.",
    )
    [token] = await platform.enrollment.list_tokens()
    assert token.revoked_at is not None
    assert (await _records(platform, "enrollment_token.revoke"))[0].target == f"token:{issued.id}"
    shown = (await admin_browser.get(page)).text
    assert "revoked by" in shown
    assert f'name="token" value="{issued.id}"' not in shown  # no button for a revoked token


async def test_revoking_needs_the_page_s_csrf_token_and_names_a_token(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    page = "/settings/enrollment"
    issued = await platform.enrollment.create_token(
        segment="default", uses=1, lifetime=timedelta(hours=1), actor="admin", source="test"
    )
    forged = await admin_browser.post(f"{page}/revoke", data={"token": str(issued.id)})
    assert forged.status_code == 403
    nothing = await _post(admin_browser, page, f"{page}/revoke", {"token": "x"})
    assert nothing.status_code == 422
    assert "Choose the enrollment token to revoke." in nothing.text
    [token] = await platform.enrollment.list_tokens()
    assert token.revoked_at is None


@pytest.mark.parametrize(
    ("fields", "sentence"),
    [
        ({"uses": "many"}, "Uses must be a whole number."),
        ({"uses": "0"}, "Uses must be between 1 and 100000."),
        ({"hours": "0"}, "An enrollment token must live between one minute and one year."),
        ({"hours": "99999999999999999999"}, "must live between one minute and one year."),
        ({"segment": "bad/name"}, "A segment name is 1 to 64 letters"),
    ],
)
async def test_a_bad_token_request_is_refused(
    admin_browser: httpx.AsyncClient, platform: Platform, fields: dict[str, str], sentence: str
) -> None:
    page = "/settings/enrollment"
    data = {"segment": "branch", "uses": "1", "hours": "24"} | fields
    response = await _post(admin_browser, page, page, data)
    assert response.status_code == 422
    assert sentence in response.text
    assert 'id="enroll-command"' not in response.text
    assert await platform.enrollment.list_tokens() == []


@pytest.mark.parametrize("role", [Role.ANALYST, Role.SCRIPT])
async def test_only_admins_see_settings(
    browser: httpx.AsyncClient, platform: Platform, role: Role
) -> None:
    account = await platform.users.create("someone", PASSWORD, {role})
    secret = None
    if role is Role.SCRIPT:
        raw = new_secret()
        await platform.users.mfa.enroll_directly(account.id, raw)
        secret = to_base32(raw)
    await web_login(browser, platform, "someone", PASSWORD, secret)
    home = await browser.get("/active-response")
    assert home.status_code == 200
    assert 'href="/settings/team"' not in home.text
    token = csrf_of(home.text)
    for page in PAGES:
        response = await browser.get(page)
        assert response.status_code == 403, page
        assert "permission for this page" in response.text
    refused = await browser.post("/settings/segments", data={"name": "sneaky", "csrf_token": token})
    assert refused.status_code == 403
    assert "sneaky" not in [s.name for s in await platform.segments.list()]


async def test_admins_find_settings_in_the_navigation(admin_browser: httpx.AsyncClient) -> None:
    home = (await admin_browser.get("/active-response")).text
    assert 'href="/settings/team"' in home
    team = (await admin_browser.get("/settings/team")).text
    for page in PAGES:
        assert f'href="{page}"' in team


@pytest.mark.parametrize(
    ("action", "data"),
    [
        ("/settings/team", {"username": "csrf-less", "password": PASSWORD}),
        ("/settings/team/admin/roles", {"role": "analyst", "grant": "yes"}),
        ("/settings/segments", {"name": "csrf-less"}),
        ("/settings/segments/default/active-response", {"enabled": "on"}),
        ("/settings/configuration", {"external_access_suspended": "on"}),
        ("/settings/configuration/allowlist", {"rules": "10.0.0.0/8"}),
        ("/settings/enrollment", {"segment": "csrf-less"}),
    ],
)
async def test_a_change_without_the_csrf_token_is_refused(
    admin_browser: httpx.AsyncClient, platform: Platform, action: str, data: dict[str, str]
) -> None:
    audited = await platform.audit.newest(AuditSearch(), limit=1)
    for token in (None, "0" * 64):
        sent = data if token is None else {**data, "csrf_token": token}
        response = await admin_browser.post(action, data=sent)
        assert response.status_code == 403
        assert "This form has expired" in response.text
    assert await platform.audit.newest(AuditSearch(), limit=1) == audited
    assert "csrf-less" not in [u.username for u in await platform.team.list()]
    assert (await platform.team.get("admin")).roles == ["admin", "script"]
    assert not (await platform.access_settings.get()).external_access_suspended
    assert await platform.isolation.allowlist() == []
    assert await platform.enrollment.list_tokens() == []


async def test_what_users_typed_is_shown_as_text(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    await platform.users.create(
        "outsider", PASSWORD, {Role.ANALYST}, external=True, organisation=hostile
    )
    page = (await admin_browser.get("/settings/team")).text
    assert "<img src=x" not in page
    assert str(escape(hostile)) in page


class _PackageStandIn:
    """Builds a small file where the platform would build a package (tests/packaging builds
    the real ones); records what it was asked for."""

    def __init__(self) -> None:
        self.built: list[str] = []

    def prepare(self, fmt: str) -> Path:
        return Path("/nonexistent-bundle")

    def build(self, fmt: str, bundle: Path, token: str, output: Path) -> None:
        output.write_text(f"{fmt} holding {token}\n")
        self.built.append(fmt)


async def test_an_agent_package_is_built_and_its_install_line_shown_once(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    page = "/settings/enrollment"
    stand_in = _PackageStandIn()
    platform.agent_packages._builder = stand_in
    await platform.segments.create("branch", actor="test", source="test")
    response = await _post(
        admin_browser,
        page,
        f"{page}/package",
        {"segment": "branch", "format": "tar", "uses": "2", "hours": "3"},
    )
    assert response.status_code == 201, response.text
    assert stand_in.built == ["tar"]
    shown = response.text.split('id="install-command">', 1)[1].split("</pre>", 1)[0]
    command = html.unescape(shown)
    assert "--pinnedpubkey 'sha256//" in command
    assert "sha256sum -c && tar -xzf" in command
    url = re.search(r"'(https://[^']+/api/v1/agent-packages/[^']+)'", command)
    assert url is not None
    # The link serves the file without a session, to whoever holds it.
    path = url.group(1).split("://", 1)[1].split("/", 1)[1]
    transport = httpx.ASGITransport(app=create_app(platform))
    async with httpx.AsyncClient(transport=transport, base_url="http://tether.test") as nobody:
        fetched = await nobody.get(f"/{path}")
    assert fetched.status_code == 200
    assert fetched.text.startswith("tar holding ")
    [token] = await platform.enrollment.list_tokens()
    assert (token.segment, token.max_uses) == ("branch", 2)
    # Shown once: the page read again holds no link.
    again = (await admin_browser.get(page)).text
    assert "/api/v1/agent-packages/" not in again
    [created] = await _records(platform, "agent_package.create")
    assert created.actor == "admin"


async def test_a_bad_package_request_is_refused_on_the_page_with_nothing_built(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    page = "/settings/enrollment"
    stand_in = _PackageStandIn()
    platform.agent_packages._builder = stand_in
    for fields, status, sentence in [
        ({"segment": "default", "format": "msi"}, 422, "'msi' is not a package format"),
        ({"segment": "nope", "format": "deb"}, 404, "No segment is named 'nope'"),
        ({"segment": "default", "format": "deb", "uses": "lots"}, 422, "Uses must be a whole"),
    ]:
        response = await _post(admin_browser, page, f"{page}/package", fields)
        assert response.status_code == status, response.text
        assert escape(sentence) in response.text
    assert stand_in.built == []
    assert await platform.enrollment.list_tokens() == []


async def test_agent_addresses_are_saved_from_the_page_and_audited(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    page = "/settings/configuration"
    await _confirmed(
        admin_browser,
        await _post(
            admin_browser,
            page,
            "/settings/configuration/agent-addresses",
            {"addresses": "node1.example.org:8444\n\n [2001:db8::2]:8444 \nnode1.example.org:8444"},
        ),
        "Agent addresses saved (2)",
    )
    assert await platform.agent_addresses.get() == ["node1.example.org:8444", "[2001:db8::2]:8444"]
    assert await platform.agent_addresses.urls() == (
        "wss://node1.example.org:8444",
        "wss://[2001:db8::2]:8444",
    )
    changed = json.loads((await _records(platform, "settings.change"))[-1].details)
    assert changed["agent_addresses"] == ["node1.example.org:8444", "[2001:db8::2]:8444"]
    assert "Agents dial now: wss://node1.example.org:8444" in (await admin_browser.get(page)).text

    # A bad line is named, what was typed stays, nothing is saved.
    response = await _post(
        admin_browser,
        page,
        "/settings/configuration/agent-addresses",
        {"addresses": "node3.example.org:8444\nwss://evil.example/x"},
    )
    assert response.status_code == 422
    assert "is not an agent address; write HOST:PORT" in response.text
    assert "wss://evil.example/x" in response.text
    assert await platform.agent_addresses.get() == ["node1.example.org:8444", "[2001:db8::2]:8444"]

    await _confirmed(
        admin_browser,
        await _post(admin_browser, page, "/settings/configuration/agent-addresses", {}),
        "Agent addresses cleared",
    )
    assert await platform.agent_addresses.get() == []
