"""The job tables that follow their jobs without a reload, in process: the Jobs list and the Host
page's jobs poll their rows while a shown job has not ended, an unchanged poll is an empty 204,
a changed one is the rows (text, Cancel forms with the session's token) with the next poll, and
the polling stops once every shown job has ended. The fragments are for results readers only."""

import html
import re

import httpx
from sqlalchemy import update

from tether.protocol import Role
from tether.server.services.platform import Platform
from tether.server.store.tables import jobs, segments

from ..api.conftest import enrolled
from ..support import add_host
from .conftest import csrf_of, web_login
from .job_support import set_state, submit

HOSTILE = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"
PASSWORD = "a long enough password"


def _poll(page: str, tbody: str) -> str | None:
    """The address the rows poll next, or None when they do not poll."""
    found = re.search(rf'<tbody id="{tbody}"([^>]*)>', page)
    assert found is not None, page
    url = re.search(r'hx-get="([^"]+)" hx-trigger="every 2s" hx-swap="outerHTML"', found.group(1))
    return html.unescape(url.group(1)) if url else None


async def test_the_jobs_list_polls_its_rows_until_every_shown_job_has_ended(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, HOSTILE)
    done = await submit(platform, host)
    await set_state(platform, done.id, "succeeded")
    # Only ended jobs: nothing can change, the rows do not poll.
    assert _poll((await admin_browser.get("/jobs")).text, "job-rows") is None

    job = await submit(platform, host)
    page = await admin_browser.get("/jobs?state=all&host=" + host)
    poll = _poll(page.text, "job-rows")
    assert poll is not None
    assert poll.startswith(f"/jobs/-/rows?host={host}&seen=")
    # Nothing changed since the page: an empty answer, which htmx does not swap.
    same = await admin_browser.get(poll)
    assert (same.status_code, same.text) == (204, "")

    await set_state(platform, job.id, "running")
    changed = await admin_browser.get(poll)
    assert changed.status_code == 200
    rows = changed.text
    assert "<html" not in rows
    assert "<table" not in rows
    assert f'<tr data-job="{job.id}" data-state="running">' in rows
    assert f'<tr data-job="{done.id}" data-state="succeeded">' in rows
    assert HOSTILE not in rows
    assert ESCAPED in rows
    # The Cancel form in the new rows posts with the session's token and returns to the list.
    assert f'action="/jobs/{job.id}/cancel"' in rows
    assert csrf_of(rows) == csrf_of(page.text)
    assert f'name="back" value="/jobs?host={host}"' in rows
    following = _poll(rows, "job-rows")
    assert following is not None
    assert following != poll
    assert (await admin_browser.get(following)).status_code == 204

    # The filters stay in the poll; a job that leaves the filter changes the rows.
    running = await admin_browser.get("/jobs?state=running")
    in_state = _poll(running.text, "job-rows")
    assert in_state is not None
    assert in_state.startswith("/jobs/-/rows?state=running&seen=")
    await set_state(platform, job.id, "succeeded")
    left = await admin_browser.get(in_state)
    assert left.status_code == 200
    assert "No jobs match." in left.text
    assert _poll(left.text, "job-rows") is None

    # Once every shown job has ended the rows come back without a poll: the polling stops.
    ended = await admin_browser.get(following)
    assert ended.status_code == 200
    assert f'<tr data-job="{job.id}" data-state="succeeded">' in ended.text
    assert "hx-trigger" not in ended.text
    assert "cancel-job" not in ended.text


async def test_a_filter_that_names_nothing_ends_the_polling_with_its_sentence(
    admin_browser: httpx.AsyncClient,
) -> None:
    response = await admin_browser.get("/jobs/-/rows?host=ghost&seen=0")
    assert response.status_code == 200
    assert 'class="error" role="alert">No host has the id or hostname &#39;ghost&#39;.' in (
        response.text
    )
    assert "hx-trigger" not in response.text


async def test_the_host_page_jobs_poll_until_they_end_and_leave_the_session_panel(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-host-polled")
    job = await submit(platform, host)
    page = await admin_browser.get(f"/hosts/{host}")
    poll = _poll(page.text, "host-job-rows")
    assert poll is not None
    assert poll.startswith(f"/hosts/{host}/jobs?seen=")
    assert (await admin_browser.get(poll)).status_code == 204

    await set_state(platform, job.id, "running")
    running = await admin_browser.get(poll)
    assert running.status_code == 200
    assert f'<tr data-job="{job.id}" data-state="running">' in running.text
    # Only the table's rows: nothing of the page or its live session panel comes with them.
    assert "<html" not in running.text
    assert "session" not in running.text
    assert f'name="back" value="/hosts/{host}"' in running.text
    following = _poll(running.text, "host-job-rows")
    assert following is not None

    await set_state(platform, job.id, "succeeded")
    ended = await admin_browser.get(following)
    assert f'<tr data-job="{job.id}" data-state="succeeded">' in ended.text
    assert "hx-trigger" not in ended.text
    assert _poll((await admin_browser.get(f"/hosts/{host}")).text, "host-job-rows") is None
    missing = await admin_browser.get("/hosts/ghost/jobs")
    assert missing.status_code == 404
    assert "No host has the id or hostname &#39;ghost&#39;." in missing.text


async def test_an_open_live_session_keeps_the_host_jobs_polling(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    """The console adds jobs without a reload: the table follows them while the session is open."""
    host = await add_host(platform.engine, "web-host-console", segment="ir")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "ir").values(active_response=True)
        )
    page = await admin_browser.get(f"/hosts/{host}")
    assert _poll(page.text, "host-job-rows") is None
    started = await admin_browser.post(
        f"/hosts/{host}/session", data={"csrf_token": csrf_of(page.text)}
    )
    assert started.status_code == 303, started.text
    async with platform.engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.host_id == host).values(state="succeeded"))
    page = await admin_browser.get(f"/hosts/{host}")
    assert 'id="console"' in page.text
    poll = _poll(page.text, "host-job-rows")
    assert poll is not None
    sent = await admin_browser.post(
        f"/hosts/{host}/session/commands",
        data={"line": "ls /", "cwd": "/"},
        headers={"X-CSRF-Token": csrf_of(page.text)},
    )
    assert sent.status_code == 201, sent.text
    rows = await admin_browser.get(poll)
    assert rows.status_code == 200
    assert f'<tr data-job="{sent.json()["job_id"]}" data-state="queued">' in rows.text
    assert _poll(rows.text, "host-job-rows") is not None


async def test_the_polled_rows_are_for_results_readers_and_offer_cancel_to_responders(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-polled-readers")
    job = await submit(platform, host)
    # An admin with a second factor: without one, the session could only enroll it.
    secret = await enrolled(platform, "plain-admin", {Role.ADMIN})
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    await web_login(browser, platform, "plain-admin", PASSWORD, secret)
    for path in ("/jobs/-/rows", f"/hosts/{host}/jobs"):
        refused = await browser.get(path)
        assert refused.status_code == 403, path
        assert "You need the results.read permission for this page." in refused.text
        assert job.id not in refused.text

    await web_login(browser, platform, "reader", PASSWORD)
    for path in ("/jobs/-/rows", f"/hosts/{host}/jobs"):
        rows = await browser.get(path)
        assert rows.status_code == 200, path
        assert f'<tr data-job="{job.id}" data-state="queued">' in rows.text
        assert "cancel-job" not in rows.text


async def test_a_moving_transfer_changes_the_rows_and_the_job_page(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    """Bytes and rate written by the platform (once a second) reach the Host page's rows, whose
    poll answers again as they change, and the job page's polled detail."""
    host = await add_host(platform.engine, "ws-transfer")
    job = await submit(platform, host)
    await set_state(platform, job.id, "running")
    poll = _poll((await admin_browser.get(f"/hosts/{host}")).text, "host-job-rows")
    assert poll is not None
    assert (await admin_browser.get(poll)).status_code == 204
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id)
            .values(transfer_bytes=3 << 30 >> 1, transfer_size=3 << 30, transfer_rate=180 << 20)
        )
    moved = await admin_browser.get(poll)
    assert moved.status_code == 200
    assert "1.5 GiB of 3.0 GiB (50%), 180.0 MiB/s" in moved.text
    detail = (await admin_browser.get(f"/jobs/{job.id}/detail")).text
    assert f'<progress max="{3 << 30}" value="{3 << 30 >> 1}"' in detail
    assert "Moving 1.5 GiB of 3.0 GiB (50%), 180.0 MiB/s" in detail
    # Ended: the job page says what moved, without the live "Moving".
    await set_state(platform, job.id, "failed")
    ended = (await admin_browser.get(f"/jobs/{job.id}/detail")).text
    assert "Moved 1.5 GiB of 3.0 GiB (50%)" in ended
    assert "Moving" not in ended
