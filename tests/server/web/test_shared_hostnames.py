"""Two hosts with one name (a re-imaged machine and its old record): the Jobs page, a run's
results (inline and as a summary), its CSV and Session History show the id beside the name; the
Segments page counts revoked hosts apart (docs/adr/0055)."""

import csv
import io

import httpx
from sqlalchemy import update

from tether.protocol import JobOutput
from tether.server.services.platform import Platform
from tether.server.store.tables import segments

from ..support import add_host
from .conftest import csrf_of
from .job_support import submit
from .test_files import retrieved

NAME = "Shared Name Sweep"


def _badge(host_id: str) -> str:
    return f'<small class="host-id" title="{host_id}">{host_id[:8]}</small>'


async def _hosts(platform: Platform) -> tuple[str, str, str]:
    old = await add_host(platform.engine, "reimaged", segment="ir")
    new = await add_host(platform.engine, "reimaged", segment="ir")
    single = await add_host(platform.engine, "unique", segment="ir")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "ir").values(active_response=True)
        )
    return old, new, single


async def test_the_jobs_page_shows_the_id_beside_a_name_two_listed_hosts_share(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    old, new, single = await _hosts(platform)
    for host in (old, new, single, single):
        await submit(platform, host)
    rows = (await admin_browser.get("/jobs")).text
    assert _badge(old) in rows
    assert _badge(new) in rows
    assert f'title="{single}"' not in rows  # its two jobs are one host: nothing to tell apart
    assert f'<a href="/hosts/{single}">unique</a>' in rows

    # Filtered to one of them, the name is no longer shared on the page.
    only_new = (await admin_browser.get(f"/jobs/-/rows?host={new}")).text
    assert f'<a href="/hosts/{new}">reimaged</a>' in only_new
    assert _badge(new) not in only_new


async def test_a_run_names_both_hosts_apart_inline_in_the_summary_and_in_the_csv(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    old, new, single = await _hosts(platform)
    await platform.scripts.save(
        NAME, "print(1)\n", "Prints", None, actor="admin", source_addr="test"
    )
    started = await admin_browser.post(
        "/scripts/-/run",
        data={
            "csrf_token": csrf_of((await admin_browser.get("/scripts/-/new")).text),
            "script": NAME,
            "target": "segment",
            "segment": "ir",
        },
    )
    assert started.status_code == 303, started.text
    results = started.headers["location"]
    batch = await platform.jobs.batch(results.rsplit("/", 1)[1])
    for job in batch.jobs:
        row = JobOutput(job_id=job.id, seq=0, stream="row", fields={"n": 1})
        await platform.dispatcher.on_output(job.host_id, row)

    for path in (results, f"{results}?view=summary", f"{results}/hosts"):
        page = (await admin_browser.get(path)).text
        assert _badge(old) in page, path
        assert _badge(new) in page, path
        assert f'title="{single}"' not in page, path

    export = (await admin_browser.get(f"{results}/rows.csv")).text
    hosts = sorted(row[0] for row in list(csv.reader(io.StringIO(export)))[1:])
    assert hosts == sorted([f"reimaged ({old})", f"reimaged ({new})", "unique"])


async def test_session_history_names_a_shared_hostname_with_its_id(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    old, _new, single = await _hosts(platform)
    await platform.hosts.revoke(old, actor="admin", source="test")
    history = (await admin_browser.get("/session-history")).text
    # The revocation's target: the old record, told apart from the machine that replaced it.
    assert f"reimaged ({old[:8]})" in history
    assert f"unique ({single[:8]})" not in history


async def test_the_segments_page_counts_revoked_hosts_apart(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    old, _new, _single = await _hosts(platform)
    await platform.hosts.revoke(old, actor="admin", source="test")
    page = (await admin_browser.get("/settings/segments")).text
    row = page[page.index('<tr data-segment="ir">') :]
    row = row[: row.index("</tr>")]
    assert '<td class="host-count">2 <small class="revoked"' in row
    assert "+ 1 revoked</small>" in row
    default = page[page.index('<tr data-segment="default">') :]
    assert "revoked" not in default[: default.index("</tr>")]

    refused = await platform.segments.list()
    (ir,) = [s for s in refused if s.name == "ir"]
    assert (ir.hosts, ir.revoked_hosts) == (2, 1)


async def test_the_files_page_tells_apart_files_from_two_hosts_of_one_name(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    # Each retrieval here comes from a new host named web-files-host.
    first = await retrieved(platform, "/etc/passwd")
    second = await retrieved(platform, "/etc/shadow")
    page = (await admin_browser.get("/files")).text
    assert first.host_id is not None
    assert second.host_id is not None
    assert _badge(first.host_id) in page
    assert _badge(second.host_id) in page
    # One of them alone: its name is its own on the page.
    alone = (await admin_browser.get("/files?name=shadow")).text
    assert f'<a href="/hosts/{second.host_id}">web-files-host</a>' in alone
    assert _badge(second.host_id) not in alone
