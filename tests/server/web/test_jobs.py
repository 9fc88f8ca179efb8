"""The Jobs pages in process: the list with its filters, a job's page polled until it ends, cancel
from the page (audited, refused in the service's words, CSRF-checked), and cancelling a whole
script run from its results page."""

import re
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import update

from tether.protocol import JobOutput, JobStatus, Role
from tether.protocol.shell import cat_command, python_command
from tether.server.services.audit import AuditSearch
from tether.server.services.jobs import Selection
from tether.server.services.platform import Platform
from tether.server.store.tables import job_output, segments
from tether.server.web import jobs as web_jobs
from tether.server.web.jobs import BatchCancel, batch_cancel_sentence
from tether.server.web.security import CSRF_REFUSED

from ..api.conftest import enrolled
from ..support import add_host
from .conftest import csrf_of, web_login
from .job_support import ADMIN, set_state, submit

HOSTILE = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"
PASSWORD = "a long enough password"
SCRIPT = "Web Sleeper"
SOURCE = "import time\nprint('<b>not bold</b>')\ntime.sleep(60)\n"


async def _switch_on(platform: Platform, segment: str) -> None:
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == segment).values(active_response=True)
        )


def _row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-job="([0-9a-f]{32})"', html)


async def test_the_jobs_page_lists_jobs_newest_first_and_filters_them(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    hostile = await add_host(platform.engine, HOSTILE, segment="ir")
    other = await add_host(platform.engine, "web-jobs-other", segment="ir")
    await _switch_on(platform, "ir")
    first = await submit(platform, hostile)
    done = await submit(platform, other)
    await set_state(platform, done.id, "succeeded")
    running = await submit(platform, other, "isolation.status")
    await set_state(platform, running.id, "running")
    pending = await submit(platform, hostile, "processes.list")

    page = await admin_browser.get("/jobs")
    assert page.status_code == 200
    assert '<a href="/jobs" class="current">Jobs</a>' in page.text
    assert _row_ids(page.text) == [pending.id, running.id, done.id, first.id]
    assert HOSTILE not in page.text
    assert f'<a href="/hosts/{hostile}">{ESCAPED}</a>' in page.text
    # Queued jobs show how long they wait for their host; a Cancel button for each unfinished.
    for queued in (first, pending):
        assert f"<td>{queued.expires_at:%Y-%m-%d %H:%M:%S} UTC</td>" in page.text
    done_row = re.search(rf'<tr data-job="{done.id}".*?</tr>', page.text, re.S)
    assert done_row is not None
    # A finished job waits for nothing: its row shows only when it was submitted.
    assert done_row.group(0).count(" UTC") == 1
    assert page.text.count('<form class="cancel-job"') == 3
    assert f'action="/jobs/{done.id}/cancel"' not in page.text

    async def shown(query: str) -> list[str]:
        response = await admin_browser.get(f"/jobs?{query}")
        assert response.status_code == 200, response.text
        return _row_ids(response.text)

    assert await shown("state=pending") == [pending.id, first.id]
    assert await shown("state=running") == [running.id]
    assert await shown("state=finished") == [done.id]
    assert await shown(f"host={other}") == [running.id, done.id]
    assert await shown("host=web-jobs-other&state=finished") == [done.id]
    assert await shown("action=processes.list") == [pending.id]
    assert await shown("state=all&action=system.noop") == [done.id, first.id]

    ghost = await admin_browser.get("/jobs?host=ghost")
    assert ghost.status_code == 404
    assert "No host has the id or hostname &#39;ghost&#39;." in ghost.text
    assert _row_ids(ghost.text) == []
    bad = await admin_browser.get("/jobs?state=sideways")
    assert bad.status_code == 422
    assert "Choose a state: awaiting approval, pending, running, finished or all." in bad.text
    action = await admin_browser.get("/jobs?action=rm.rf")
    assert action.status_code == 404
    assert "There is no action named &#39;rm.rf&#39;." in action.text


async def test_a_job_page_shows_the_script_output_and_rows_as_text_and_polls_until_it_ends(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, HOSTILE, segment="ir")
    await _switch_on(platform, "ir")
    await platform.scripts.save(SCRIPT, SOURCE, "", None, actor="admin", source_addr="test")
    args = await platform.scripts.run_args(ADMIN, "script.run", SCRIPT, None, {"params": {}})
    batch = await platform.jobs.submit(
        ADMIN, "script.run", args, Selection(host_ids=[host]), source="test", from_library=True
    )
    job = batch.jobs[0]
    await set_state(platform, job.id, "running")
    dispatcher = platform.dispatcher
    await dispatcher.on_output(host, JobOutput(job_id=job.id, seq=0, stream="stdout", text=HOSTILE))
    await dispatcher.on_output(
        host, JobOutput(job_id=job.id, seq=1, stream="row", fields={HOSTILE: HOSTILE, "n": 7})
    )

    page = await admin_browser.get(f"/jobs/{job.id}")
    assert page.status_code == 200
    html = page.text
    assert HOSTILE not in html
    assert "<b>not bold</b>" not in html
    # The script is shown as the program it is, the rest of the arguments as JSON.
    assert '<pre class="script-source">import time\nprint(&#39;&lt;b&gt;not bold' in html
    assert f"&#34;name&#34;: &#34;{SCRIPT} v1&#34;" in html
    assert f'<pre class="output">{ESCAPED}</pre>' in html
    assert f"<th>{ESCAPED}</th><th>n</th>" in html
    assert f"<td>{ESCAPED}</td><td>7</td>" in html
    assert f'<a href="/scripts/-/runs/{job.batch_id}">' in html
    assert f'hx-get="/jobs/{job.id}/detail" hx-trigger="every 2s"' in html
    assert f'action="/jobs/{job.id}/cancel"' in html

    fragment = await admin_browser.get(f"/jobs/{job.id}/detail")
    assert fragment.status_code == 200
    assert '<div id="job-detail" data-state="running"' in fragment.text
    assert "<html" not in fragment.text

    await platform.jobs.cancel_for_platform(job.id, "test", source="test", reason="test over")
    await dispatcher.on_status(host, _final(job.id, "cancelled"))
    ended = (await admin_browser.get(f"/jobs/{job.id}/detail")).text
    assert '<div id="job-detail" data-state="cancelled">' in ended
    assert "hx-trigger" not in ended
    assert 'class="cancel-job"' not in ended


def _final(job_id: str, state: str) -> JobStatus:
    return JobStatus(job_id=job_id, state=state, error="stopped", result=None)


async def test_cancel_from_the_list_is_audited_and_returns_to_the_filtered_list(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-cancel")
    job = await submit(platform, host)
    listed = await admin_browser.get("/jobs?state=pending")
    assert 'name="back" value="/jobs?state=pending"' in listed.text
    response = await admin_browser.post(
        f"/jobs/{job.id}/cancel",
        data={"csrf_token": csrf_of(listed.text), "back": "/jobs?state=pending"},
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/jobs?state=pending"
    cancelled = await platform.jobs.get(job.id)
    assert cancelled.state == "cancelled"
    assert cancelled.cancel_requested_by == "admin"
    (record,) = await platform.audit.newest(AuditSearch(action="job.cancel"), limit=5)
    assert (record.actor, record.target) == ("admin", f"job:{job.id}")
    after = await admin_browser.get("/jobs?state=all")
    assert f'<tr data-job="{job.id}" data-state="cancelled">' in after.text

    # The way back is one of this site's pages; anything else goes to the job's own page.
    again = await submit(platform, host)
    elsewhere = await admin_browser.post(
        f"/jobs/{again.id}/cancel",
        data={"csrf_token": csrf_of(listed.text), "back": "https://evil.example/jobs"},
    )
    assert elsewhere.headers["location"] == f"/jobs/{again.id}"


async def test_the_host_page_offers_cancel_for_its_unfinished_jobs(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-host-jobs")
    job = await submit(platform, host)
    page = await admin_browser.get(f"/hosts/{host}")
    assert f'action="/jobs/{job.id}/cancel"' in page.text
    assert f'name="back" value="/hosts/{host}"' in page.text
    response = await admin_browser.post(
        f"/jobs/{job.id}/cancel", data={"csrf_token": csrf_of(page.text), "back": f"/hosts/{host}"}
    )
    assert response.headers["location"] == f"/hosts/{host}"
    after = await admin_browser.get(f"/hosts/{host}")
    assert f'<tr data-job="{job.id}" data-state="cancelled">' in after.text
    assert f'action="/jobs/{job.id}/cancel"' not in after.text


async def test_the_services_refusal_is_shown_on_the_job_page(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-ended")
    job = await submit(platform, host)
    token = csrf_of((await admin_browser.get(f"/jobs/{job.id}")).text)
    await set_state(platform, job.id, "succeeded")
    response = await admin_browser.post(f"/jobs/{job.id}/cancel", data={"csrf_token": token})
    assert response.status_code == 409
    assert 'role="alert"' in response.text
    assert f"Job {job.id} already ended (succeeded); there is nothing to cancel." in response.text
    assert not await platform.audit.newest(AuditSearch(action="job.cancel"), limit=1)


async def test_a_non_responder_sees_no_cancel_and_is_refused(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-analyst-jobs")
    job = await submit(platform, host)
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    await web_login(browser, platform, "reader", PASSWORD)
    listed = await browser.get("/jobs")
    assert listed.status_code == 200
    assert _row_ids(listed.text) == [job.id]
    assert "cancel-job" not in listed.text
    page = await browser.get(f"/jobs/{job.id}")
    assert "cancel-job" not in page.text
    response = await browser.post(f"/jobs/{job.id}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 403
    assert "You need the active_response permission for this page." in response.text
    assert (await platform.jobs.get(job.id)).state == "queued"


async def test_cancel_without_the_csrf_token_is_refused(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-forged")
    job = await submit(platform, host)
    for data in ({}, {"csrf_token": "forged"}):
        response = await admin_browser.post(f"/jobs/{job.id}/cancel", data=data)
        assert response.status_code == 403
        assert CSRF_REFUSED in response.text.replace("&#39;", "'")
    run = await admin_browser.post(f"/scripts/-/runs/{job.batch_id}/cancel", data={})
    assert run.status_code == 403
    assert (await platform.jobs.get(job.id)).state == "queued"
    assert not await platform.audit.newest(AuditSearch(action="job.cancel"), limit=1)


async def test_unknown_ids_are_one_sentence_404s(admin_browser: httpx.AsyncClient) -> None:
    token = csrf_of((await admin_browser.get("/jobs")).text)
    for method, path in (
        ("GET", "/jobs/ghost"),
        ("GET", "/jobs/ghost/detail"),
        ("POST", "/jobs/ghost/cancel"),
        ("GET", f"/jobs/{'f' * 500}"),
    ):
        response = await admin_browser.request(method, path, data={"csrf_token": token})
        assert response.status_code == 404, path
        assert "Job not found" in response.text
        assert re.search(r"No job has the id &#39;(ghost|f{64})&#39;\.", response.text), path
    run = await admin_browser.post("/scripts/-/runs/ghost/cancel", data={"csrf_token": token})
    assert run.status_code == 404
    assert "No batch has the id &#39;ghost&#39;." in run.text


async def test_cancel_the_run_cancels_every_unfinished_job_of_the_batch(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    for n in range(3):
        await add_host(platform.engine, f"web-run-{n}", segment="ir")
    await _switch_on(platform, "ir")
    await platform.scripts.save(SCRIPT, SOURCE, "", None, actor="admin", source_addr="test")
    form = await admin_browser.get(f"/scripts/-/run?script={quote(SCRIPT)}")
    submitted = await admin_browser.post(
        "/scripts/-/run",
        data={
            "csrf_token": csrf_of(form.text),
            "script": SCRIPT,
            "target": "segment",
            "segment": "ir",
        },
    )
    assert submitted.status_code == 303, submitted.text
    results = submitted.headers["location"]
    batch_id = results.rsplit("/", 1)[1]
    queued, running, finished = (await platform.jobs.batch(batch_id)).jobs
    await set_state(platform, running.id, "running")
    await set_state(platform, finished.id, "succeeded")

    page = await admin_browser.get(results)
    assert 'action="/scripts/-/runs/' + batch_id + '/cancel"' in page.text
    assert f'<a href="/jobs/{queued.id}">job</a>' in page.text
    response = await admin_browser.post(
        f"{results}/cancel", data={"csrf_token": csrf_of(page.text)}
    )
    assert response.status_code == 303, response.text
    # The counts travel in the notice cookie, not the link (a link could claim anything).
    assert response.headers["location"] == results
    shown = (await admin_browser.get(response.headers["location"])).text
    assert (
        "Cancelled 2 job(s) of this run. 1 of them had reached its host, whose agent was asked "
        "to stop it."
    ) in shown

    assert (await platform.jobs.get(queued.id)).state == "cancelled"
    stopping = await platform.jobs.get(running.id)
    assert (stopping.state, stopping.cancel_requested_by) == ("running", "admin")
    assert (await platform.jobs.get(finished.id)).cancel_requested_by is None
    records = await platform.audit.newest(AuditSearch(action="job.cancel"), limit=10)
    assert sorted(r.target for r in records) == sorted([f"job:{queued.id}", f"job:{running.id}"])

    # Once every job has ended the button is gone, and a second cancel finds nothing to do.
    await platform.jobs.cancel_for_platform(running.id, "test", source="test", reason="over")
    await platform.dispatcher.on_status(running.host_id, _final(running.id, "cancelled"))
    again = await admin_browser.post(f"{results}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert again.headers["location"] == results
    last = (await admin_browser.get(again.headers["location"])).text
    assert (
        "Nothing was cancelled: every job of this run had already ended or been asked to stop."
        in last
    )
    assert "cancel-run" not in last


async def test_the_jobs_pages_and_link_are_for_results_readers(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    # An admin without a responder or analyst role manages the estate but reads no results.
    host = await add_host(platform.engine, "web-plain-admin")
    job = await submit(platform, host)
    # An admin with a second factor: without one, the session could only enroll it.
    secret = await enrolled(platform, "plain-admin", {Role.ADMIN})
    await web_login(browser, platform, "plain-admin", PASSWORD, secret)
    host_page = await browser.get(f"/hosts/{host}")
    assert host_page.status_code == 200
    assert 'href="/jobs' not in host_page.text
    # Nor the host's jobs themselves, whose errors can be the endpoint's words.
    assert f'data-job="{job.id}"' not in host_page.text
    assert "<h2>Jobs</h2>" not in host_page.text
    # Nor the other results pages the menu would lead to.
    assert 'href="/scripts"' not in host_page.text
    assert 'href="/files"' not in host_page.text
    for path in ("/jobs", f"/jobs/{job.id}", f"/jobs/{job.id}/detail"):
        response = await browser.get(path)
        assert response.status_code == 403, path
        assert "You need the results.read permission for this page." in response.text


def test_the_batch_cancel_sentence_counts_both_kinds() -> None:
    assert batch_cancel_sentence(BatchCancel(3, 0)) == "Cancelled 3 job(s) of this run."
    assert batch_cancel_sentence(BatchCancel(0, 2)) == (
        "Cancelled 2 job(s) of this run. 2 of them had reached their hosts, whose agents were "
        "asked to stop them."
    )


async def test_one_cancel_of_a_run_handles_a_bounded_number_of_jobs(
    admin_browser: httpx.AsyncClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound is 500 jobs in production; 2 here, so three hosts show it.
    monkeypatch.setattr(web_jobs, "CANCEL_LIMIT", 2)
    for n in range(3):
        await add_host(platform.engine, f"web-bound-{n}", segment="ir")
    await _switch_on(platform, "ir")
    await platform.scripts.save(SCRIPT, SOURCE, "", None, actor="admin", source_addr="test")
    form = await admin_browser.get(f"/scripts/-/run?script={quote(SCRIPT)}")
    token = csrf_of(form.text)
    submitted = await admin_browser.post(
        "/scripts/-/run",
        data={"csrf_token": token, "script": SCRIPT, "target": "segment", "segment": "ir"},
    )
    results = submitted.headers["location"]
    batch_id = results.rsplit("/", 1)[1]
    running = (await platform.jobs.batch(batch_id)).jobs[0]
    await set_state(platform, running.id, "running")

    first = await admin_browser.post(f"{results}/cancel", data={"csrf_token": token})
    assert first.headers["location"] == results
    shown = (await admin_browser.get(results)).text
    assert (
        "One cancel handles at most 2 jobs and this run has more that have not ended: cancel it "
        "again for the rest."
    ) in shown
    assert len(await platform.audit.newest(AuditSearch(action="job.cancel"), limit=10)) == 2
    # The notice is shown once.
    assert "One cancel handles" not in (await admin_browser.get(results)).text

    # The next press cancels the rest, and never asks an agent twice.
    await admin_browser.post(f"{results}/cancel", data={"csrf_token": token})
    rest = (await admin_browser.get(results)).text
    assert "Cancelled 1 job(s) of this run." in rest
    assert "One cancel handles" not in rest
    records = await platform.audit.newest(AuditSearch(action="job.cancel"), limit=10)
    assert len(records) == 3
    assert len({r.target for r in records}) == 3


async def test_a_job_page_says_when_its_stored_output_no_longer_matches_its_record(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-bound", segment="ir")
    await _switch_on(platform, "ir")
    job = await submit(platform, host)
    await set_state(platform, job.id, "running")
    await platform.dispatcher.on_output(
        host, JobOutput(job_id=job.id, seq=0, stream="stdout", text="evidence\n")
    )
    await platform.dispatcher.on_status(host, _final(job.id, "failed"))
    page = (await admin_browser.get(f"/jobs/{job.id}")).text
    ended = await platform.jobs.get(job.id)
    assert f'<a href="/session-history?target={job.batch_id}">#{ended.outcome_seq}</a>' in page
    assert "no longer matches" not in page
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(job_output).where(job_output.c.job_id == job.id).values(text="nothing\n")
        )
    page = (await admin_browser.get(f"/jobs/{job.id}")).text
    assert (
        f"Job {job.id}&#39;s stored output no longer matches its audit record "
        f"{ended.outcome_seq}: output was changed or deleted after the job ended. What this page "
        "shows is what is stored now, not what was recorded."
    ) in page


async def test_the_jobs_and_host_pages_name_what_ran_not_script_run(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-ran", segment="ir")
    await _switch_on(platform, "ir")
    sent = [
        (cat_command("/etc/missing").args, False),
        (python_command("1 / 0").args, False),
        ({"source": "print(1)\n", "params": {"depth": 2}, "name": "triage v3"}, True),
        ({"source": HOSTILE, "params": {}}, False),
    ]
    for args, from_library in sent:
        await platform.jobs.submit(
            ADMIN,
            "script.run",
            args,
            Selection(host_ids=[host]),
            source="test",
            from_library=from_library,
        )
    shown = {
        "cat /etc/missing",
        "py 1 / 0",
        "script triage v3 (depth=2)",
        "script (own source)",
    }
    for page in ("/jobs", f"/hosts/{host}"):
        html = (await admin_browser.get(page)).text
        cells = set(re.findall(r'<td class="what-ran" title="script.run">([^<]*)</td>', html))
        assert cells == shown, page
        assert "<th>What ran</th>" in html, page
    # The API answers the same words, for the CLI and integrations.
    (job,) = [j for j in await platform.jobs.find(host_id=host) if j.summary.startswith("cat")]
    assert job.summary == "cat /etc/missing"
