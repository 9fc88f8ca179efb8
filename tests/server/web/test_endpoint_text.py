"""Text an endpoint chose (its hostname, a job's error, its output and rows) on the pages and in
the CSV export: control characters and bidirectional overrides shown as visible escapes, formula
cells made inert."""

import csv
import io

import httpx
from sqlalchemy import update

from tether.server.services.platform import Platform
from tether.server.store.tables import jobs
from tether.server.web.row_export import rows_csv

from ..support import add_host
from .job_support import set_state, submit

# Reads as "ws-01gpj.exe" on a page; carries an 8-bit CSI and a terminal title sequence.
LOOK_ALIKE = "ws-01\u202eexe.gpj\x9b2J"
ERROR = "failed \x1b]0;pwned\x07 on \u2066x\u2069"


async def test_hostnames_and_errors_are_shown_with_visible_escapes(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, LOOK_ALIKE)
    job = await submit(platform, host)
    await set_state(platform, job.id, "failed")
    async with platform.engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == job.id).values(error=ERROR))
    for path in ("/jobs", f"/jobs/{job.id}", "/active-response", f"/hosts/{host}"):
        page = await admin_browser.get(path)
        assert page.status_code == 200, path
        for raw in ("\u202e", "\u2066", "\u2069", "\x9b", "\x1b", "\x07"):
            assert raw not in page.text, (path, raw)
        assert "ws-01\\u202eexe.gpj\\x9b2J" in page.text, path
    shown = (await admin_browser.get(f"/jobs/{job.id}")).text
    assert "failed \\x1b]0;pwned\\x07 on \\u2066x\\u2069" in shown


def test_the_rows_csv_escapes_and_neutralises_what_the_endpoint_wrote() -> None:
    exported = rows_csv(
        [
            (LOOK_ALIKE, {"name\u202e": '=HYPERLINK("http://x")', "n": "\x00=1+1"}),
            ("@host", {"name\u202e": "-2\x85", "n": "plain"}),
        ]
    )
    assert "\u202e" not in exported
    assert "\x85" not in exported
    assert list(csv.reader(io.StringIO(exported))) == [
        ["host", "name\\u202e", "n"],
        ["ws-01\\u202eexe.gpj\\x9b2J", '\'=HYPERLINK("http://x")', "\\x00=1+1"],
        ["'@host", "'-2\\x85", "plain"],
    ]


async def test_session_history_shows_what_an_endpoint_named_with_visible_escapes(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.audit.record(
        "endpoint.misbehaviour",
        actor="endpoint",
        target="host:h-9",
        outcome="failure",
        source="endpoint",
        details={"first": {"kind": "job.status for a job not its own", "named": LOOK_ALIKE}},
    )
    page = await admin_browser.get("/session-history")
    assert page.status_code == 200
    assert "endpoint.misbehaviour" in page.text
    assert "\u202e" not in page.text
    assert "\x9b" not in page.text
    assert "ws-01\\u202eexe.gpj\\x9b2J" in page.text
