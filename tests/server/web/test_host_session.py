"""The Host page's live session in process: who may start one, CSRF on every change, and one
sentence for input the shell or the services refuse. The browser test
(tests/e2e/test_web_host.py) runs it against a real agent."""

from typing import Any

import httpx
from sqlalchemy import insert, select, update

from tether.protocol import Role
from tether.protocol.processes import KilledProcess, ProcessInfo, ProcessKillResult, ProcessList
from tether.server.services.jobs import Selection
from tether.server.services.platform import Platform
from tether.server.store.db import utcnow
from tether.server.store.tables import audit_records, job_output, jobs, live_sessions, segments

from ..support import add_host
from .conftest import csrf_of, web_login
from .job_support import ADMIN, set_state, submit

PASSWORD = "a long enough password"


async def _active_response(platform: Platform, segment: str, on: bool) -> None:
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == segment).values(active_response=on)
        )


async def _sessions(platform: Platform) -> list[str]:
    async with platform.engine.connect() as conn:
        return list((await conn.execute(select(live_sessions.c.id))).scalars())


async def _jobs(platform: Platform) -> list[str]:
    async with platform.engine.connect() as conn:
        return list((await conn.execute(select(jobs.c.action))).scalars())


async def _start(browser: httpx.AsyncClient, host: str) -> httpx.Response:
    page = await browser.get(f"/hosts/{host}")
    return await browser.post(f"/hosts/{host}/session", data={"csrf_token": csrf_of(page.text)})


async def test_a_responder_starts_sends_and_ends_a_session(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-1", segment="ir")
    await _active_response(platform, "ir", True)
    page = await admin_browser.get(f"/hosts/{host}")
    assert "Start live session" in page.text
    started = await _start(admin_browser, host)
    assert started.status_code == 303, started.text[-1500:]
    page = await admin_browser.get(f"/hosts/{host}")
    assert "End session" in page.text
    assert 'id="console"' in page.text
    token = csrf_of(page.text)

    sent = await admin_browser.post(
        f"/hosts/{host}/session/commands",
        data={"line": "ls ../etc", "cwd": "/var"},
        headers={"X-CSRF-Token": token},
    )
    assert sent.status_code == 201, sent.text
    job = await platform.jobs.get(sent.json()["job_id"])
    assert (job.action, job.args) == ("files.list", {"path": "/etc", "limit": 10000})
    output = await admin_browser.get(f"/hosts/{host}/session/jobs/{job.id}/output?wait=0")
    assert output.json()["state"] == "queued"
    assert output.json()["done"] is False
    other = await add_host(platform.engine, "web-2", segment="ir")
    elsewhere = await admin_browser.get(f"/hosts/{other}/session/jobs/{job.id}/output?wait=0")
    assert elsewhere.status_code == 404
    assert elsewhere.json() == {"error": f"Job {job.id} did not run on this host."}

    ended = await admin_browser.post(f"/hosts/{host}/session/end", data={"csrf_token": token})
    assert ended.status_code == 303
    assert "Start live session" in (await admin_browser.get(f"/hosts/{host}")).text
    async with platform.engine.connect() as conn:
        actions = list(
            (
                await conn.execute(
                    select(audit_records.c.action).where(
                        audit_records.c.action.like("live_session.%")
                    )
                )
            ).scalars()
        )
    assert actions == ["live_session.start", "live_session.stop"]


async def test_the_segment_switch_refusal_is_the_services_sentence(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "desk-1", segment="office")
    await _active_response(platform, "office", False)
    refused = await _start(admin_browser, host)
    assert refused.status_code == 403
    assert "Active Response is off in segment office" in refused.text
    assert await _sessions(platform) == []


async def test_a_non_responder_sees_no_session_and_is_refused(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-1", segment="ir")
    await _active_response(platform, "ir", True)
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    await web_login(browser, platform, "reader", PASSWORD)
    page = await browser.get(f"/hosts/{host}")
    assert page.status_code == 200
    assert "Live session" not in page.text
    token = csrf_of(page.text)
    for path, data in (
        (f"/hosts/{host}/session", {}),
        (f"/hosts/{host}/session/commands", {"line": "ps"}),
        (f"/hosts/{host}/session/files", {"path": "/"}),
        (f"/hosts/{host}/session/processes/kill", {"pid": "1", "confirmed": "yes"}),
    ):
        refused = await browser.post(path, data={**data, "csrf_token": token})
        assert refused.status_code == 403, path
        assert "You need the active_response permission" in refused.text
    assert (await browser.get(f"/hosts/{host}/session/files")).status_code == 403
    assert await _sessions(platform) == []
    assert await _jobs(platform) == []


async def test_every_change_needs_the_csrf_token(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-1", segment="ir")
    await _active_response(platform, "ir", True)
    refused = await admin_browser.post(f"/hosts/{host}/session", data={"csrf_token": "forged"})
    assert refused.status_code == 403
    assert await _sessions(platform) == []
    assert (await _start(admin_browser, host)).status_code == 303
    for path, data in (
        (f"/hosts/{host}/session/commands", {"line": "ps"}),
        (f"/hosts/{host}/session/files", {"path": "/"}),
        (f"/hosts/{host}/session/files/retrieve", {"path": "/etc/passwd"}),
        (f"/hosts/{host}/session/processes", {}),
        (f"/hosts/{host}/session/processes/kill", {"pid": "1", "confirmed": "yes"}),
        (f"/hosts/{host}/session/end", {}),
    ):
        without = await admin_browser.post(path, data=data)
        assert without.status_code == 403, path
        forged = await admin_browser.post(path, data=data, headers={"X-CSRF-Token": "0" * 64})
        assert forged.status_code == 403, path
    assert await _jobs(platform) == []
    assert len(await _sessions(platform)) == 1


async def test_bad_input_is_one_sentence_and_sends_nothing(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-1", segment="ir")
    await _active_response(platform, "ir", True)
    page = await admin_browser.get(f"/hosts/{host}")
    token = csrf_of(page.text)
    headers = {"X-CSRF-Token": token}
    no_session = await admin_browser.post(
        f"/hosts/{host}/session/commands", data={"line": "ps"}, headers=headers
    )
    assert no_session.status_code == 409
    assert no_session.json() == {"error": "Start a live session on this host first."}
    assert (await _start(admin_browser, host)).status_code == 303
    for line, sentence in (
        ("frobnicate", "frobnicate: 'frobnicate' is not a shell command; 'help' lists them."),
        ("kill abc", "kill: 'abc' is not a process id."),
        ("cd", "cd: usage: cd PATH"),
        ("run", "run: usage: run NAME [KEY=VALUE ...]"),
        (
            "put a /b",
            "Deploy files from the Files tab; the console cannot read files on your computer.",
        ),
    ):
        answer = await admin_browser.post(
            f"/hosts/{host}/session/commands", data={"line": line}, headers=headers
        )
        assert answer.status_code == 400, line
        assert answer.json() == {"error": sentence}
    missing = await admin_browser.post(
        f"/hosts/{host}/session/commands", data={"line": "run triage"}, headers=headers
    )
    assert missing.status_code == 404
    assert "triage" in missing.json()["error"]
    relative = await admin_browser.post(
        f"/hosts/{host}/session/files", data={"path": "etc", "csrf_token": token}
    )
    assert relative.status_code == 422
    assert "the path must be absolute" in relative.text
    not_pid = await admin_browser.post(
        f"/hosts/{host}/session/processes/kill",
        data={"pid": "1; rm -rf /", "confirmed": "yes", "csrf_token": token},
    )
    assert not_pid.status_code == 400
    assert "A process id is a whole number greater than 0." in not_pid.text
    no_file = await admin_browser.post(
        f"/hosts/{host}/session/files/deploy",
        data={"file": "", "directory": "/tmp", "csrf_token": token},
    )
    assert no_file.status_code == 422
    assert "Choose a file from the deployment library first." in no_file.text
    assert await _jobs(platform) == []
    helped = await admin_browser.post(
        f"/hosts/{host}/session/commands", data={"line": "help"}, headers=headers
    )
    assert "ls [PATH]" in helped.json()["text"]


async def test_a_kill_asks_first_on_the_page(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-1", segment="ir")
    await _active_response(platform, "ir", True)
    assert (await _start(admin_browser, host)).status_code == 303
    token = csrf_of((await admin_browser.get(f"/hosts/{host}/session/processes")).text)
    asked = await admin_browser.post(
        f"/hosts/{host}/session/processes/kill",
        data={"pid": "4242", "name": "<img src=x onerror=alert(1)>", "csrf_token": token},
    )
    assert asked.status_code == 200
    assert "Kill process 4242 (&lt;img src=x onerror=alert(1)&gt;)" in asked.text
    assert "<img src=x" not in asked.text
    assert await _jobs(platform) == []


async def test_a_killed_process_leaves_the_listing_without_listing_again(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-1", segment="ir")
    await _active_response(platform, "ir", True)
    assert (await _start(admin_browser, host)).status_code == 303
    listing = await submit(platform, host, "processes.list")
    kill = (
        await platform.jobs.submit(
            ADMIN, "processes.kill", {"pid": 4242}, Selection(host_ids=[host]), source="test"
        )
    ).jobs[0]
    listed = ProcessList(
        processes=[
            ProcessInfo(
                pid=pid, ppid=1, name=name, user="root", command_line=name, started=None,
                executable=None,
            )
            for pid, name in ((4242, "miner"), (4343, "sshd"))
        ],
        truncated=False,
    )  # fmt: skip
    ended = ProcessKillResult(
        pid=4242, processes=[KilledProcess(pid=4242, name="miner", outcome="killed")]
    )
    for job, result in ((listing, listed), (kill, ended)):
        await set_state(platform, job.id, "succeeded")
        async with platform.engine.begin() as conn:
            await conn.execute(
                update(jobs).where(jobs.c.id == job.id).values(result=result.model_dump_json())
            )
    tab = f"/hosts/{host}/session/processes?job={listing.id}"
    before = (await admin_browser.get(tab)).text
    assert 'data-pid="4242"' in before
    # Where the kill's redirect lands: the same listing, without the process the kill ended.
    after = (await admin_browser.get(f"{tab}&killed={kill.id}")).text
    assert "Kill of process 4242 finished: 4242 killed." in after
    assert 'data-pid="4242"' not in after
    assert 'data-pid="4343"' in after


async def _ended(
    platform: Platform, job_id: str, error: str, stderr: str | None, state: str = "failed"
) -> None:
    """The job ended as an agent would end it, with `stderr` written first when given."""
    await set_state(platform, job_id, state)
    async with platform.engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == job_id).values(error=error))
        if stderr is not None:
            await conn.execute(
                insert(job_output).values(
                    job_id=job_id, seq=1, stream="stderr", text=stderr, created_at=utcnow()
                )
            )


async def _send(browser: httpx.AsyncClient, host: str, line: str) -> str:
    token = csrf_of((await browser.get(f"/hosts/{host}")).text)
    sent = await browser.post(
        f"/hosts/{host}/session/commands",
        data={"line": line, "cwd": "/"},
        headers={"X-CSRF-Token": token},
    )
    assert sent.status_code == 201, sent.text
    return str(sent.json()["job_id"])


async def _followed(browser: httpx.AsyncClient, host: str, job_id: str) -> tuple[list[str], Any]:
    """What the console shows of an ended job: the text of its output, then its answer's error."""
    url, cursor, texts = f"/hosts/{host}/session/jobs/{job_id}/output", 0, []
    while True:
        answer = (await browser.get(url, params={"after": cursor, "wait": 0})).json()
        texts += [p["text"] for p in answer["output"]]
        cursor = answer["cursor"]
        if answer["done"]:
            return texts, answer["error"]


async def test_a_failed_cat_is_its_own_sentence_and_nothing_after_it(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-1", segment="ir")
    await _active_response(platform, "ir", True)
    assert (await _start(admin_browser, host)).status_code == 303
    said = "cat: cannot read /missing: No such file or directory.\n"

    cat = await _send(admin_browser, host, "cat /missing")
    await _ended(platform, cat, "The script exited with code 1.", said)
    # The cat's own sentence, and no "failed: The script exited with code 1." after it.
    assert await _followed(admin_browser, host, cat) == ([said], None)

    # Any other way a cat ends keeps its sentence: here, it said nothing itself.
    silent = await _send(admin_browser, host, "cat /other")
    await _ended(platform, silent, "The script exited with code 1.", None)
    assert await _followed(admin_browser, host, silent) == (
        [],
        "failed: The script exited with code 1.",
    )
    # A time limit is not the cat's own sentence, even after a line on stderr.
    slow = await _send(admin_browser, host, "cat /slow")
    await _ended(platform, slow, "The script ran too long.", said, state="timed_out")
    assert await _followed(admin_browser, host, slow) == (
        [said],
        "timed_out: The script ran too long.",
    )


async def test_a_hand_written_script_posing_as_a_cat_keeps_the_agents_sentence(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host = await add_host(platform.engine, "web-1", segment="ir")
    await _active_response(platform, "ir", True)
    assert (await _start(admin_browser, host)).status_code == 303
    source = "import sys\nsys.stderr.write('cat: cannot read /x: gone.\\n')\nraise SystemExit(1)\n"
    posing = (
        await platform.jobs.submit(
            ADMIN,
            "script.run",
            {"source": source, "params": {}},
            Selection(host_ids=[host]),
            source="test",
        )
    ).jobs[0]
    await _ended(platform, posing.id, "The script exited with code 1.", "cat: cannot read /x\n")
    assert await _followed(admin_browser, host, posing.id) == (
        ["cat: cannot read /x\n"],
        "failed: The script exited with code 1.",
    )
