"""Settings -> Service tokens: created with a fresh second factor and shown once, listed with
their bounds and last use, revoked after asking again; refused to non-admins, to a change
without the CSRF token and to a stale session; every change in the audit log."""

import html
import re

import httpx
import pytest
from markupsafe import escape

from tether.protocol import Role
from tether.protocol.actions import tier_additions
from tether.server.errors import Unauthenticated
from tether.server.services.audit import AuditSearch
from tether.server.services.platform import Platform
from tether.server.services.step_up import FRESH_CODE_NEEDED
from tether.server.web.security import CSRF_REFUSED

from ..api.conftest import PASSWORD, enrolled, unused_code
from ..api.test_step_up_and_sessions import make_stale
from .conftest import csrf_of, web_login

PAGE = "/settings/service-tokens"
SHOWN_TOKEN = re.compile(r'<pre class="command" id="service-token">(tts_[^<]+)</pre>')
FORM = {
    "name": "soar",
    "tier": "respond",
    "segment": ["ir"],
    "lifetime": "90",
    "unit": "days",
    "sources": "10.0.0.0/8\n192.0.2.10",
}


@pytest.fixture
async def segment_ir(platform: Platform) -> None:
    await platform.segments.create("ir", active_response=True, actor="test", source="test")


async def _create(browser: httpx.AsyncClient, **changes: str | list[str]) -> httpx.Response:
    token = csrf_of((await browser.get(PAGE)).text)
    return await browser.post(PAGE, data={**FORM, **changes, "csrf_token": token})


def _row(page: str, name: str) -> str:
    """The listing's row of token `name`."""
    return page.split(f'<tr data-token="{name}">', 1)[1].split("</tr>", 1)[0]


async def test_a_new_token_is_shown_once_works_and_its_creation_is_audited(
    admin_browser: httpx.AsyncClient, platform: Platform, segment_ir: None
) -> None:
    empty = await admin_browser.get(PAGE)
    assert empty.status_code == 200
    assert "No service tokens yet." in empty.text
    created = await _create(admin_browser)
    assert created.status_code == 201, created.text
    shown = SHOWN_TOKEN.search(created.text)
    assert shown is not None
    token = shown.group(1)
    assert 'data-copy="service-token"' in created.text
    # Not in a cookie either: the answer sets none that a later request would send back.
    assert token not in created.headers.get("set-cookie", "")

    # It works, bounded as the form said: from 10/8, not from elsewhere.
    principal = await platform.service_tokens.authenticate(
        token, "10.1.2.3", method="GET", path="/api/v1/hosts"
    )
    assert (principal.username, principal.roles, principal.segments) == (
        "service:soar",
        frozenset({"respond"}),
        frozenset({"ir"}),
    )
    with pytest.raises(Unauthenticated, match=re.escape("may not be used from 203.0.113.5")):
        await platform.service_tokens.authenticate(
            token, "203.0.113.5", method="GET", path="/api/v1/hosts"
        )

    again = await admin_browser.get(PAGE)
    assert token not in again.text
    assert "tts_" not in again.text
    row = _row(again.text, "soar")
    for cell in ("respond", "ir", "10.0.0.0/8, 192.0.2.10/32", "active", "from 10.1.2.3"):
        assert cell in row, cell
    [record] = await platform.audit.newest(AuditSearch(action="service_token.create"))
    assert (record.actor, record.target) == ("admin", "service:soar")
    assert '"respond"' in record.details
    # The chain names the token, never holds it.
    assert await platform.audit.newest(AuditSearch(mentions=(token, token[4:]))) == []


async def test_revoking_asks_first_then_revokes_and_the_list_says_so(
    admin_browser: httpx.AsyncClient, platform: Platform, segment_ir: None
) -> None:
    token = SHOWN_TOKEN.search((await _create(admin_browser)).text).group(1)  # type: ignore[union-attr]
    csrf = csrf_of((await admin_browser.get(PAGE)).text)
    asked = await admin_browser.post(f"{PAGE}/soar/revoke", data={"csrf_token": csrf})
    assert asked.status_code == 200
    assert "Revoke service token soar?" in asked.text
    assert (await platform.service_tokens.get("soar")).revoked_at is None

    revoked = await admin_browser.post(
        f"{PAGE}/soar/revoke", data={"csrf_token": csrf, "confirm": "yes"}
    )
    assert revoked.status_code == 303
    sentence = "Service token soar revoked: its next call is refused"
    shown = await admin_browser.get(revoked.headers["location"])
    assert escape(sentence) in shown.text
    assert escape(sentence) not in (await admin_browser.get(PAGE)).text
    row = _row(shown.text, "soar")
    assert '<span class="error">revoked</span>' in row
    assert "by admin" in row
    assert "/revoke" not in row
    with pytest.raises(Unauthenticated, match="Service token soar was revoked"):
        await platform.service_tokens.authenticate(token, "10.0.0.1", method="GET", path="/")
    [record] = await platform.audit.newest(AuditSearch(action="service_token.revoke"))
    assert (record.actor, record.target) == ("admin", "service:soar")

    twice = await admin_browser.post(
        f"{PAGE}/soar/revoke", data={"csrf_token": csrf, "confirm": "yes"}
    )
    assert twice.status_code == 409
    assert "Service token soar is already revoked." in twice.text
    ghost = await admin_browser.post(
        f"{PAGE}/ghost/revoke", data={"csrf_token": csrf, "confirm": "yes"}
    )
    assert ghost.status_code == 404
    assert "There is no service token named &#39;ghost&#39;." in ghost.text


async def test_a_non_admin_is_refused_the_page_and_sees_no_link_to_it(
    browser: httpx.AsyncClient, platform: Platform, segment_ir: None
) -> None:
    secret = await enrolled(platform, "rita", {Role.SCRIPT})
    await web_login(browser, platform, "rita", PASSWORD, secret)
    home = await browser.get("/active-response")
    assert home.status_code == 200
    assert "/settings" not in home.text
    refused = await browser.get(PAGE)
    assert refused.status_code == 403
    assert "You need the users.manage permission for this page." in refused.text
    posted = await browser.post(PAGE, data={**FORM, "csrf_token": csrf_of(home.text)})
    assert posted.status_code == 403
    assert await platform.service_tokens.list() == []


async def test_a_change_without_the_csrf_token_changes_nothing(
    admin_browser: httpx.AsyncClient, platform: Platform, segment_ir: None
) -> None:
    refused = await admin_browser.post(PAGE, data=FORM)
    assert refused.status_code == 403
    assert escape(CSRF_REFUSED) in refused.text
    assert await platform.service_tokens.list() == []
    assert (await _create(admin_browser)).status_code == 201
    kept = await admin_browser.post(f"{PAGE}/soar/revoke", data={"confirm": "yes"})
    assert kept.status_code == 403
    assert (await platform.service_tokens.get("soar")).revoked_at is None


async def test_a_stale_session_needs_a_fresh_code_to_create_but_not_to_revoke(
    admin_browser: httpx.AsyncClient, platform: Platform, admin_secret: str, segment_ir: None
) -> None:
    assert (await _create(admin_browser, name="kept")).status_code == 201
    await make_stale(platform, "admin")
    refused = await _create(admin_browser)
    assert refused.status_code == 403
    assert FRESH_CODE_NEEDED in html.unescape(refused.text)
    assert 'action="/settings/step-up"' in refused.text
    # What was typed is still in the form.
    assert 'name="name" value="soar"' in refused.text
    assert 'value="ir" checked' in refused.text
    assert [t.name for t in await platform.service_tokens.list()] == ["kept"]

    # Taking access away is never held up, as in the API.
    csrf = csrf_of(refused.text)
    revoked = await admin_browser.post(
        f"{PAGE}/kept/revoke", data={"csrf_token": csrf, "confirm": "yes"}
    )
    assert revoked.status_code == 303

    code = await unused_code(platform, "admin", admin_secret)
    confirmed = await admin_browser.post(
        "/settings/step-up", data={"code": code, "back": PAGE, "csrf_token": csrf}
    )
    assert confirmed.headers["location"] == PAGE
    assert (await _create(admin_browser)).status_code == 201


@pytest.mark.parametrize(
    ("changes", "status", "sentence"),
    [
        # A crafted form naming a segment that does not exist creates none.
        ({"segment": ["ghost"]}, 404, "There is no segment named &#39;ghost&#39;."),
        ({"segment": []}, 422, "Name 1 to 64 segments the service token may act in."),
        ({"tier": "root"}, 422, "There is no Active Response tier named &#39;root&#39;."),
        ({"lifetime": "1.5"}, 422, "Write how long the token lives as a whole number"),
        ({"lifetime": "2", "unit": "minutes"}, 422, "lives between 5 minutes and 365 days."),
        ({"lifetime": "999999999"}, 422, "lives between 5 minutes and 365 days."),
        ({"sources": "10.0.0.0/8\nintranet"}, 422, "&#39;intranet&#39; is not an address"),
        ({"name": "<b>soar</b>"}, 422, "A service token&#39;s name is 1 to 64 letters"),
    ],
)
async def test_bad_input_is_refused_in_one_sentence_and_creates_nothing(
    admin_browser: httpx.AsyncClient,
    platform: Platform,
    segment_ir: None,
    changes: dict[str, str | list[str]],
    status: int,
    sentence: str,
) -> None:
    response = await _create(admin_browser, **changes)
    assert response.status_code == status, response.text
    assert sentence in response.text
    assert "tts_" not in response.text
    assert await platform.service_tokens.list() == []
    assert "ghost" not in {s.name for s in await platform.segments.list()}


async def test_both_pages_explain_the_tiers_from_the_actions_declarations(
    admin_browser: httpx.AsyncClient,
) -> None:
    for page in ("/settings/team", PAGE):
        shown = (await admin_browser.get(page)).text
        tiers = shown.split('<dl class="tiers">', 1)[1].split("</dl>", 1)[0]
        for tier, labels in tier_additions().items():
            line = tiers.split(f"<dt>{tier.value}</dt>", 1)[1].split("</dd>", 1)[0]
            for label in labels:
                assert label in line, (page, tier, label)
        assert "everything of respond, and an arbitrary script" in tiers
        assert "changing the script library" in tiers
