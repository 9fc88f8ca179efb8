"""The Scripts pages in process: the library and its editor, the Run form generated from the
schema, who may run, the results with output and rows as text, and the CSV export."""

import csv
import io
import json
import re
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import update

from tether.protocol import JobOutput, Role
from tether.server.services.access import NO_PERMISSION
from tether.server.services.audit import AuditSearch
from tether.server.services.platform import Platform
from tether.server.store.tables import segments
from tether.server.web.row_export import guarded
from tether.server.web.security import CSRF_REFUSED

from ..api.conftest import enrolled
from ..support import add_host
from .conftest import csrf_of, web_login

HOSTILE = "<img src=x onerror=alert(1)>"
PASSWORD = "a long enough password"
NAME = "Web Sweep"
SOURCE = "from tether import script\nprint(script.params['path'])\n"
SCHEMA = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "Where to look"},
        "mode": {"type": "string", "enum": ["list", "hash"], "default": "list"},
        "count": {"type": "integer", "minimum": 1, "default": 10},
        "deep": {"type": "boolean", "default": False},
        "names": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["path"],
    "additionalProperties": False,
}


async def _switch(platform: Platform, segment: str, on: bool) -> None:
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == segment).values(active_response=on)
        )


async def _library_script(platform: Platform) -> None:
    await platform.scripts.save(
        NAME, SOURCE, "Looks around", SCHEMA, actor="admin", source_addr="test"
    )


async def _token(browser: httpx.AsyncClient, path: str = "/scripts/-/new") -> str:
    return csrf_of((await browser.get(path)).text)


async def _run(browser: httpx.AsyncClient, host: str, token: str, **params: str) -> httpx.Response:
    data = {
        "csrf_token": token,
        "script": NAME,
        "target": "hosts",
        "host": host,
        **{f"param.{k}": v for k, v in params.items()},
    }
    return await browser.post("/scripts/-/run", data=data)


async def test_saving_makes_an_audited_version_and_the_library_lists_it(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    token = await _token(admin_browser)
    form = {
        "csrf_token": token,
        "name": NAME,
        "description": "first",
        # A browser sends a textarea's lines with CRLF; the library stores what was typed.
        "source": SOURCE.replace("\n", "\r\n"),
        "parameters": json.dumps(SCHEMA),
    }
    saved = await admin_browser.post("/scripts/-/save", data=form)
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"] == f"/scripts/{quote(NAME)}?saved=new"
    page = await admin_browser.get(saved.headers["location"])
    assert "Saved as version 1." in page.text
    assert (await platform.scripts.get(NAME)).source == SOURCE

    changed = SOURCE + "print('more')\n"
    again = await admin_browser.post(
        "/scripts/-/save", data=form | {"source": changed, "parameters": ""}
    )
    assert again.status_code == 303
    latest = await platform.scripts.get(NAME)
    assert (latest.version, latest.source, latest.parameters) == (2, changed, SCHEMA)
    save = (await platform.audit.newest(AuditSearch(action="script.save"), limit=1))[0]
    assert (save.actor, save.target) == ("admin", f"script:{NAME}")
    assert json.loads(save.details)["source"] == changed

    same = await admin_browser.post(
        "/scripts/-/save", data=form | {"source": changed, "parameters": ""}
    )
    shown = await admin_browser.get(same.headers["location"])
    assert "Nothing changed, so no new version was made." in shown.text
    assert len(await platform.scripts.history(NAME)) == 2

    library = (await admin_browser.get("/scripts")).text
    assert NAME in library
    assert "v2" in library
    old = (await admin_browser.get(f"/scripts/{quote(NAME)}?version=1")).text
    assert "(latest is v2)" in old
    assert "print(&#39;more&#39;)" not in old
    missing = await admin_browser.get("/scripts/ghost")
    assert missing.status_code == 404


async def test_a_refused_save_says_why_keeps_the_text_and_changes_nothing(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    token = await _token(admin_browser)
    form = {"csrf_token": token, "name": NAME, "source": "def (:\n", "parameters": ""}
    bad = await admin_browser.post("/scripts/-/save", data=form)
    assert bad.status_code == 422
    assert "The script has a syntax error on line 1" in bad.text
    assert "def (:" in bad.text
    schema = await admin_browser.post(
        "/scripts/-/save", data=form | {"source": "pass\n", "parameters": "{not json"}
    )
    assert schema.status_code == 422
    assert "The parameters schema is not valid JSON." in schema.text
    assert not await platform.scripts.exists(NAME)


async def test_deleting_hides_the_script(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    token = await _token(admin_browser, f"/scripts/{quote(NAME)}")
    deleted = await admin_browser.post(
        "/scripts/-/delete", data={"csrf_token": token, "name": NAME}
    )
    assert deleted.status_code == 303
    assert NAME not in (await admin_browser.get("/scripts")).text
    assert await platform.audit.newest(AuditSearch(action="script.delete", target=NAME))


async def test_changes_without_the_csrf_token_are_refused(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    host = await add_host(platform.engine, "web-csrf", segment="ir")
    await _switch(platform, "ir", True)
    save = await admin_browser.post(
        "/scripts/-/save", data={"name": NAME, "source": "pass\n", "csrf_token": "forged"}
    )
    delete = await admin_browser.post("/scripts/-/delete", data={"name": NAME})
    run = await _run(admin_browser, host, "forged", path="/tmp")
    for response in (save, delete, run):
        assert response.status_code == 403
        assert CSRF_REFUSED in response.text.replace("&#39;", "'")
    assert (await platform.scripts.get(NAME)).version == 1
    assert await platform.jobs.find() == []


async def test_pages_need_results_read(browser: httpx.AsyncClient, platform: Platform) -> None:
    # An admin without a responder or analyst role manages the estate but reads no results.
    # An admin with a second factor: without one, the session could only enroll it.
    secret = await enrolled(platform, "plain-admin", {Role.ADMIN})
    await web_login(browser, platform, "plain-admin", PASSWORD, secret)
    for path in ("/scripts", "/scripts/-/new", "/scripts/-/run"):
        response = await browser.get(path)
        assert response.status_code == 403, path
        assert "You need the results.read permission for this page." in response.text


async def test_the_run_form_is_built_from_the_schema_with_the_hosts_preselected(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    host = await add_host(platform.engine, "web-pre", segment="ir")
    page = await admin_browser.get(f"/scripts/-/run?script={quote(NAME)}&host={host}")
    assert page.status_code == 200
    html = page.text
    assert 'name="param.path"' in html
    assert "(required)" in html
    assert "Where to look" in html
    assert '<option value="hash"' in html
    assert '<option value="list" selected>' in html
    assert 'name="param.count" value="10"' in html
    assert '<option value="false" selected>no</option>' in html
    assert 'name="param.names" rows="3">' in html
    assert f'name="host" value="{host}" checked> web-pre' in html


async def test_a_parameter_the_service_refuses_is_one_sentence_and_nothing_runs(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    host = await add_host(platform.engine, "web-params", segment="ir")
    await _switch(platform, "ir", True)
    token = await _token(admin_browser)
    wrong = await _run(admin_browser, host, token, path="/tmp", count="many")
    assert wrong.status_code == 422
    assert "Parameter &#39;count&#39; must be an integer." in wrong.text
    # What was typed stays in the form.
    assert 'name="param.count" value="many"' in wrong.text
    missing = await _run(admin_browser, host, token, count="3")
    assert "Parameter &#39;path&#39; is required." in missing.text
    choice = await _run(admin_browser, host, token, path="/tmp", mode="explode")
    assert "Parameter &#39;mode&#39; must be one of &#34;list&#34;, &#34;hash&#34;." in choice.text
    nothing = await _run(admin_browser, "", token, path="/tmp")
    assert "Name at least one host, a segment, or all hosts." in nothing.text
    assert await platform.jobs.find() == []


async def test_a_non_responder_is_refused_in_the_services_words(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    host = await add_host(platform.engine, "web-analyst", segment="ir")
    await _switch(platform, "ir", True)
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    await web_login(browser, platform, "reader", PASSWORD)
    response = await _run(browser, host, await _token(browser, "/scripts/-/run"), path="/tmp")
    assert response.status_code == 403
    assert 'role="alert"' in response.text
    assert NO_PERMISSION in response.text
    assert await platform.jobs.find() == []


async def test_a_segment_with_active_response_off_is_refused(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    host = await add_host(platform.engine, "web-off", segment="office")
    await _switch(platform, "office", False)
    token = await _token(admin_browser)
    response = await _run(admin_browser, host, token, path="/tmp")
    assert response.status_code == 403
    assert "Active Response is off in segment office" in response.text
    segment = await admin_browser.post(
        "/scripts/-/run",
        data={
            "csrf_token": token,
            "script": NAME,
            "target": "segment",
            "segment": "office",
            "param.path": "/tmp",
        },
    )
    assert segment.status_code == 403
    assert "Active Response is off in segment office" in segment.text
    assert await platform.jobs.find() == []


async def test_active_response_run_script_takes_the_ticked_hosts_to_the_form(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    one = await add_host(platform.engine, "web-one", segment="ir")
    two = await add_host(platform.engine, "web-two", segment="ir")
    token = csrf_of((await admin_browser.get("/active-response")).text)
    response = await admin_browser.post(
        "/active-response/actions",
        data={"csrf_token": token, "action": "run-script", "host": [one, two]},
    )
    assert response.status_code == 303
    form = await admin_browser.get(response.headers["location"])
    assert "for web-one, web-two" in form.text
    picked = await admin_browser.get(f"{response.headers['location']}&script={quote(NAME)}")
    assert f'value="{one}" checked> web-one' in picked.text
    assert f'value="{two}" checked> web-two' in picked.text
    none = await admin_browser.post(
        "/active-response/actions", data={"csrf_token": token, "action": "run-script"}
    )
    assert none.status_code == 422
    assert "Select at least one host first." in none.text


async def _output(platform: Platform, host: str, job: str, seq: int, **piece: object) -> None:
    await platform.dispatcher.on_output(host, JobOutput(job_id=job, seq=seq, **piece))


async def test_a_run_shows_output_and_rows_as_text_and_exports_them_as_safe_csv(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    host = await add_host(platform.engine, HOSTILE, segment="ir")
    other = await add_host(platform.engine, "=cmd|' /C calc'!A0", segment="ir")
    await _switch(platform, "ir", True)
    token = await _token(admin_browser)
    response = await admin_browser.post(
        "/scripts/-/run",
        data={
            "csrf_token": token,
            "script": NAME,
            "target": "segment",
            "segment": "ir",
            "param.path": "/tmp",
            "param.names": "a\r\nb\r\n",
        },
    )
    assert response.status_code == 303, response.text
    results = response.headers["location"]
    assert results.startswith("/scripts/-/runs/")
    batch_id = results.rsplit("/", 1)[1]
    jobs = {j.host_id: j.id for j in (await platform.jobs.batch(batch_id)).jobs}
    submitted = await platform.jobs.get(jobs[host])
    assert submitted.args is not None
    assert submitted.args["params"] == {
        "path": "/tmp",
        "mode": "list",
        "count": 10,
        "deep": False,
        "names": ["a", "b"],
    }
    assert submitted.args["name"] == f"{NAME} v1"

    await _output(platform, host, jobs[host], 0, stream="stdout", text=HOSTILE + "\n")
    await _output(platform, host, jobs[host], 1, stream="row", fields={HOSTILE: HOSTILE, "n": 1})
    await _output(platform, other, jobs[other], 0, stream="row", fields={"n": -2, "cmd": "@SUM(1)"})
    await _output(platform, other, jobs[other], 1, stream="row", fields={"n": 3, "cmd": "\tx"})

    for path in (results, f"{results}/hosts"):
        page = await admin_browser.get(path)
        assert page.status_code == 200
        assert "<img src=x" not in page.text, path
        assert page.text.count("&lt;img src=x onerror=alert(1)&gt;") >= 4, path
        # Still queued: the fragment keeps polling.
        assert 'hx-trigger="every 1s"' in page.text, path
    assert f"Run of {NAME} v1" in (await admin_browser.get(results)).text

    export = await admin_browser.get(f"{results}/rows.csv")
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("text/csv")
    assert export.headers["content-disposition"] == f'attachment; filename="run-{batch_id}.csv"'
    table = list(csv.reader(io.StringIO(export.text)))
    assert table == [
        # Hosts by name ("<" sorts before "="), columns as they first appear.
        ["host", HOSTILE, "n", "cmd"],
        [HOSTILE, HOSTILE, "1", ""],
        ["'=cmd|' /C calc'!A0", "", "'-2", "'@SUM(1)"],
        ["'=cmd|' /C calc'!A0", "", "3", "'\tx"],
    ]

    for job in jobs.values():
        await platform.jobs.cancel_for_platform(job, "test", source="test", reason="test over")
    done = (await admin_browser.get(f"{results}/hosts")).text
    assert "hx-trigger" not in done
    assert 'data-state="cancelled"' in done


async def test_a_batch_that_is_not_a_script_run_is_not_found(
    admin_browser: httpx.AsyncClient,
) -> None:
    for path in ("/scripts/-/runs/ghost", "/scripts/-/runs/ghost/rows.csv"):
        response = await admin_browser.get(path)
        assert response.status_code == 404
        assert "No batch has the id" in response.text


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@A1", "\tx"])
def test_every_formula_start_gets_an_apostrophe(text: str) -> None:
    assert guarded(text) == "'" + text


def test_a_carriage_return_is_written_out_so_nothing_hides_behind_it() -> None:
    assert guarded("\r=1+1") == "\\x0d=1+1"


def test_plain_text_is_left_alone() -> None:
    assert guarded("a=1") == "a=1"
    assert guarded("") == ""


async def test_hosts_left_out_of_a_run_are_named_with_the_reason(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    await add_host(platform.engine, "web-in", segment="ir")
    await add_host(platform.engine, "web-out", segment="office")
    await _switch(platform, "ir", True)
    response = await admin_browser.post(
        "/scripts/-/run",
        data={
            "csrf_token": await _token(admin_browser),
            "script": NAME,
            "target": "all",
            "param.path": "/tmp",
        },
    )
    assert response.status_code == 303, response.text
    page = (await admin_browser.get(response.headers["location"])).text
    assert "Not run on 1 host(s):" in page
    assert "Active Response is off in segment office, so response actions on web-out" in page
    assert 'data-state="queued"' in page
    assert page.count('class="run-host"') == 1
    # The reasons came in the notice cookie, shown once; the link names no host.
    assert "?" not in response.headers["location"]
    assert "Not run on" not in (await admin_browser.get(response.headers["location"])).text


async def test_an_analyst_reads_the_library_without_save_or_delete(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await _library_script(platform)
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    await web_login(browser, platform, "reader", PASSWORD)
    page = await browser.get(f"/scripts/{quote(NAME)}")
    assert page.status_code == 200
    assert "print(script.params[&#39;path&#39;])" in page.text
    assert (
        "You need an Active Response tier (the script tier) to change the script library"
        in page.text
    )
    assert "Save as a new version" not in page.text
    assert 'action="/scripts/-/delete"' not in page.text
    refused = await browser.post(
        "/scripts/-/save",
        data={"csrf_token": csrf_of(page.text), "name": NAME, "source": "pass\n"},
    )
    assert refused.status_code == 403
    assert (await platform.scripts.get(NAME)).version == 1


async def test_a_run_on_many_hosts_polls_only_what_changed(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    """300 hosts: the page is a summary without output, a poll when nothing changed is an
    empty 204 whatever output was recorded, and a changed host's line (only it) comes back."""
    await _library_script(platform)
    for n in range(300):
        await add_host(platform.engine, f"seg-{n:03}", segment="ir")
    await _switch(platform, "ir", True)
    response = await admin_browser.post(
        "/scripts/-/run",
        data={
            "csrf_token": await _token(admin_browser),
            "script": NAME,
            "target": "segment",
            "segment": "ir",
            "param.path": "/tmp",
        },
    )
    assert response.status_code == 303, response.text
    results = response.headers["location"]
    batch = await platform.jobs.batch(results.rsplit("/", 1)[1])
    jobs = sorted(batch.jobs, key=lambda j: j.hostname)
    assert len(jobs) == 300
    # Output recorded before the page is opened: a lot of it on one host, hostile on another.
    for seq in range(500):
        await _output(platform, jobs[0].host_id, jobs[0].id, seq, stream="stdout", text="x" * 80)
    await _output(platform, jobs[1].host_id, jobs[1].id, 0, stream="row", fields={"a": HOSTILE})

    page = (await admin_browser.get(results)).text
    assert page.count('class="run-row"') == 300
    assert 'class="run-host"' not in page
    assert "x" * 80 not in page
    assert "<img" not in page
    assert "queued</span> 300" in page
    poll = re.search(r'hx-get="(/scripts/-/runs/[^"]+/summary\?seen=\w+)"', page)
    assert poll is not None
    quiet = await admin_browser.get(poll[1])
    assert quiet.status_code == 204
    assert quiet.content == b""

    # More output on the busy host: its line changes, and only its line is sent.
    for seq in range(500, 1000):
        await _output(platform, jobs[0].host_id, jobs[0].id, seq, stream="stdout", text="x" * 80)
    changed = await admin_browser.get(poll[1])
    assert changed.status_code == 200
    assert changed.text.count('class="run-row"') == 1
    assert f'id="run-row-{jobs[0].id}"' in changed.text
    assert '<td class="num">1000</td>' in changed.text
    assert "x" * 80 not in changed.text
    assert len(changed.content) < 4096, len(changed.content)
    after = re.search(r'hx-get="(/scripts/-/runs/[^"]+/summary\?seen=\w+)"', changed.text)
    assert after is not None
    assert after[1] != poll[1]
    again = await admin_browser.get(after[1])
    assert again.status_code == 204
    assert again.content == b""

    # A state change: the cancelled host's line and the counts come back; then polling stops.
    await platform.jobs.cancel_for_platform(jobs[5].id, "test", source="test", reason="over")
    one = await admin_browser.get(after[1])
    assert one.text.count('class="run-row"') == 1
    assert 'data-state="cancelled"' in one.text
    assert "cancelled</span> 1" in one.text
    assert "queued</span> 299" in one.text
    for job in jobs:
        await platform.jobs.cancel_for_platform(job.id, "test", source="test", reason="over")
    final = await admin_browser.get(after[1])
    assert final.status_code == 200
    assert "hx-trigger" not in final.text
    assert final.text.count('class="run-row"') == 300
    # An unknown token (another process, a restart) gets every line, not an error.
    unknown = await admin_browser.get(f"{results}/summary?seen=nope")
    assert unknown.text.count('class="run-row"') == 300
