"""Links and forms someone crafted: a page never repeats a link's words as the platform's own,
never answers 500 on unusual digits or huge numbers, and answers a page route's refusal with a
page (the console's script with its JSON), while the REST API keeps its JSON errors."""

import httpx
from sqlalchemy import select, update

from tether.server.services.jobs import Selection
from tether.server.services.platform import Platform
from tether.server.services.users import User
from tether.server.store.tables import jobs, segments

from ..support import add_host
from .conftest import csrf_of

ADMIN = User(1, "admin", frozenset({"admin", "script"}), False, mfa_verified=True)
SCRIPT = "Crafted"


async def _session_host(browser: httpx.AsyncClient, platform: Platform) -> tuple[str, str]:
    """A host in an Active Response segment with the admin's live session open; its CSRF token."""
    host = await add_host(platform.engine, "crafted-1", segment="ir")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "ir").values(active_response=True)
        )
    token = csrf_of((await browser.get(f"/hosts/{host}")).text)
    started = await browser.post(f"/hosts/{host}/session", data={"csrf_token": token})
    assert started.status_code == 303, started.text
    return host, token


async def _job_actions(platform: Platform) -> list[str]:
    async with platform.engine.connect() as conn:
        return list((await conn.execute(select(jobs.c.action))).scalars())


async def test_a_started_notice_names_only_a_transfer_of_this_host(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host, token = await _session_host(admin_browser, platform)
    crafted = await admin_browser.get(
        f"/hosts/{host}/session/files", params={"started": "EVIL: all hosts were wiped"}
    )
    assert crafted.status_code == 200
    assert "EVIL" not in crafted.text
    assert "started; follow it" not in crafted.text
    # Another kind of job of the same host is no transfer either.
    other = await platform.jobs.submit(
        ADMIN, "system.noop", {}, Selection(host_ids=[host]), source="test"
    )
    noop = await admin_browser.get(
        f"/hosts/{host}/session/files", params={"started": other.jobs[0].id}
    )
    assert "started; follow it" not in noop.text
    # The redirect after a real retrieve still confirms it.
    retrieve = await admin_browser.post(
        f"/hosts/{host}/session/files/retrieve", data={"csrf_token": token, "path": "/etc/hosts"}
    )
    assert retrieve.status_code == 303, retrieve.text
    shown = await admin_browser.get(retrieve.headers["location"])
    assert "started; follow it under Jobs below" in shown.text


async def test_a_run_names_left_out_hosts_once_and_never_from_the_link(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host, token = await _session_host(admin_browser, platform)
    await platform.scripts.save(SCRIPT, "print(1)\n", "", None, actor="admin", source_addr="t")
    submitted = await admin_browser.post(
        "/scripts/-/run", data={"csrf_token": token, "script": SCRIPT, "host": host}
    )
    assert submitted.status_code == 303, submitted.text
    results = submitted.headers["location"]
    assert "?" not in results
    for query in (f"refused={host}", "cancelled=5&stopping=2", "cancelled=%C2%B2"):
        crafted = await admin_browser.get(f"{results}?{query}")
        assert crafted.status_code == 200, query
        assert "left out" not in crafted.text
        assert "Not run on" not in crafted.text
        assert "Cancelled" not in crafted.text


async def test_unusual_digits_and_huge_numbers_are_one_sentence(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host, token = await _session_host(admin_browser, platform)
    await platform.scripts.save(SCRIPT, "print(1)\n", "", None, actor="admin", source_addr="t")
    for pid in ("\u00b2", "\u0661", "1_0", "0"):
        killed = await admin_browser.post(
            f"/hosts/{host}/session/processes/kill",
            data={"csrf_token": token, "pid": pid, "confirmed": "yes"},
        )
        assert killed.status_code == 400, pid
        assert "A process id is a whole number greater than 0." in killed.text
    for version in ("\u00b2", "99999999999999999999", "0", "-3"):
        shown = await admin_browser.get(f"/scripts/{SCRIPT}", params={"version": version})
        assert shown.status_code == 404, version
        assert "No such version." in shown.text or "has no version 0." in shown.text
        run = await admin_browser.post(
            "/scripts/-/run",
            data={"csrf_token": token, "script": SCRIPT, "version": version, "host": host},
        )
        assert run.status_code == 422, version
        assert "A script version is a whole number greater than 0." in run.text
    assert "processes.kill" not in await _job_actions(platform)
    assert "script.run" not in await _job_actions(platform)
    # The console's output poll: a cursor past any database integer is refused in its JSON.
    job = (
        await platform.jobs.submit(
            ADMIN, "system.noop", {}, Selection(host_ids=[host]), source="test"
        )
    ).jobs[0]
    huge = await admin_browser.get(
        f"/hosts/{host}/session/jobs/{job.id}/output",
        params={"after": "99999999999999999999", "wait": "0"},
        headers={"Accept": "application/json"},
    )
    assert huge.status_code == 422
    assert huge.json() == {"error": "The field after must be a number in the allowed range."}


async def test_page_refusals_are_pages_and_the_api_keeps_its_json(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host, token = await _session_host(admin_browser, platform)
    for path, data in (
        ("/hosts/ghost/session/end", {}),
        ("/hosts/ghost/session/files", {"path": "/"}),
        ("/hosts/ghost/session/files/retrieve", {"path": "/etc/hosts"}),
        ("/hosts/ghost/session/files/deploy", {"file": "x"}),
        ("/hosts/ghost/session/processes", {}),
        ("/hosts/ghost/session/processes/kill", {"pid": "1"}),
    ):
        refused = await admin_browser.post(path, data={"csrf_token": token, **data})
        assert refused.status_code == 404, path
        assert refused.headers["content-type"].startswith("text/html"), path
        assert "No host has the id or hostname &#39;ghost&#39;." in refused.text, path
    for path, data, sentence in (
        ("files", {"path": "a" * 5000}, "The field path holds at most 4096 characters."),
        ("processes/kill", {"pid": "1" * 13}, "The field pid holds at most 12 characters."),
        ("processes", {"name": "n" * 300}, "The field name holds at most 256 characters."),
    ):
        long = await admin_browser.post(
            f"/hosts/{host}/session/{path}", data={"csrf_token": token, **data}
        )
        assert long.status_code == 422, path
        assert long.headers["content-type"].startswith("text/html"), path
        assert sentence in long.text, path
    assert await _job_actions(platform) == []
    # The console's script asks for JSON and reads "error".
    console = await admin_browser.post(
        f"/hosts/{host}/session/commands",
        data={"line": "x" * 9000},
        headers={"X-CSRF-Token": token, "Accept": "application/json"},
    )
    assert console.status_code == 422
    assert console.json() == {"error": "The field line holds at most 8192 characters."}
    # The REST API's own errors stay its JSON.
    api = await admin_browser.get("/api/v1/hosts/ghost")
    assert api.status_code in (401, 404)
    assert api.headers["content-type"] == "application/json"
    assert "detail" in api.json()
