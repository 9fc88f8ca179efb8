"""Four-eyes approval on the pages in process: the nav's count and the Jobs page's list for those
who may decide (never the requester), Approve and Reject through forms with the CSRF token, the
decision shown on the job page, and the approval switch on Device Segments."""

import httpx
from sqlalchemy import select, update

from tether.protocol import Approval, Role
from tether.server.services.jobs import Selection
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.store.tables import segments, users
from tether.server.web.security import CSRF_REFUSED

from ..api.conftest import PASSWORD, enrolled
from ..support import add_host
from .conftest import csrf_of, web_login


async def _awaiting(platform: Platform, hostname: str = "guarded-1") -> str:
    host = await add_host(platform.engine, hostname, segment="guarded")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "guarded").values(active_response=True)
        )
    await platform.segments.set_approval(
        "guarded", Approval.RESPOND, None, actor="admin", source="t"
    )
    async with platform.engine.connect() as conn:
        rita = (await conn.execute(select(users.c.id).where(users.c.username == "rita"))).one()
    batch = await platform.jobs.submit(
        User(rita.id, "rita", frozenset({"respond"}), False, mfa_verified=True),
        "processes.kill",
        {"pid": 42},
        Selection(host_ids=[host]),
        source="t",
    )
    return batch.jobs[0].id


async def test_a_second_person_approves_from_the_jobs_page_and_the_requester_cannot(
    admin_browser: httpx.AsyncClient, browser: httpx.AsyncClient, platform: Platform
) -> None:
    rita_secret = await enrolled(platform, "rita", {Role.RESPOND})
    job_id = await _awaiting(platform)

    page = await admin_browser.get("/jobs")
    assert '<span class="badge" id="approvals-waiting"' in page.text
    assert f'action="/jobs/{job_id}/approve"' in page.text
    forged = await admin_browser.post(f"/jobs/{job_id}/approve", data={"reason": "x"})
    assert forged.status_code == 403
    assert CSRF_REFUSED in forged.text
    approved = await admin_browser.post(
        f"/jobs/{job_id}/approve",
        data={"reason": "<b>ok</b>", "back": "/jobs", "csrf_token": csrf_of(page.text)},
    )
    assert (approved.status_code, approved.headers["location"]) == (303, "/jobs")
    after = await admin_browser.get("/jobs")
    assert "Approved processes.kill requested by rita." in after.text
    assert "approvals-waiting" not in after.text
    shown = await admin_browser.get(f"/jobs/{job_id}")
    assert 'data-approval="approved"' in shown.text
    assert "&lt;b&gt;ok&lt;/b&gt;" in shown.text

    # The requester sees the decision on her job but is never offered, nor allowed, her own.
    second = await _awaiting(platform, "guarded-2")
    await web_login(browser, platform, "rita", PASSWORD, rita_secret)
    mine = await browser.get("/jobs")
    assert "approvals-waiting" not in mine.text
    assert f'action="/jobs/{second}/approve"' not in mine.text
    own = await browser.get(f"/jobs/{second}")
    assert f'action="/jobs/{second}/approve"' not in own.text
    refused = await browser.post(f"/jobs/{second}/approve", data={"csrf_token": csrf_of(own.text)})
    assert refused.status_code == 403
    assert f"rita requested job {second}; a different person must approve it." in refused.text


async def test_reject_needs_a_reason_and_the_segments_page_sets_approval(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await enrolled(platform, "rita", {Role.RESPOND})
    job_id = await _awaiting(platform)
    page = await admin_browser.get(f"/jobs/{job_id}")
    token = csrf_of(page.text)
    empty = await admin_browser.post(f"/jobs/{job_id}/reject", data={"csrf_token": token})
    assert empty.status_code == 422
    assert "Say why you reject it: a reason is required." in empty.text
    rejected = await admin_browser.post(
        f"/jobs/{job_id}/reject", data={"csrf_token": token, "reason": "wrong host"}
    )
    assert rejected.status_code == 303
    shown = await admin_browser.get(f"/jobs/{job_id}")
    assert "Rejected by admin: wrong host" in shown.text

    settings = await admin_browser.get("/settings/segments")
    assert 'action="/settings/segments/guarded/approval"' in settings.text
    stricter = await admin_browser.post(
        "/settings/segments/guarded/approval",
        data={"csrf_token": csrf_of(settings.text), "approval": "respond", "timeout_hours": "4"},
    )
    assert stricter.status_code == 303, stricter.text
    assert (await platform.segments.get("guarded")).approval_timeout_seconds == 4 * 3600
    bad = await admin_browser.post(
        "/settings/segments/guarded/approval",
        data={"csrf_token": csrf_of(settings.text), "approval": "maybe"},
    )
    assert "Choose off, script or respond" in bad.text


async def test_an_isolation_from_the_active_response_page_says_it_awaits_approval(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await enrolled(platform, "rita", {Role.RESPOND})
    await _awaiting(platform)  # the segment, switched on and needing approval
    host = await add_host(platform.engine, "guarded-3", segment="guarded")
    page = await admin_browser.get("/active-response")
    asked = await admin_browser.post(
        "/active-response/actions",
        data={
            "host": host,
            "action": "isolate-outbound",
            "confirm": "yes",
            "reason": "IR-9",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert asked.status_code == 303, asked.text
    shown = await admin_browser.get(asked.headers["location"])
    assert "1 of them wait for a second person's approval (at least the respond tier)" in (
        shown.text
    )
    assert (await platform.hosts.get(host)).isolation.state == "isolation pending"
