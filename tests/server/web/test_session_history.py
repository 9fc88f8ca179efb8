"""Session History: responders only (refusals audited), newest first, filters, verification."""

import json
import re

import httpx
import pytest
from sqlalchemy import select, update

from tether.protocol import Role
from tether.protocol.shell import cat_command
from tether.server.services.audit_statements import RESTORE, statement_message
from tether.server.services.checkpoints import key_fingerprint
from tether.server.services.jobs import Selection
from tether.server.services.platform import Platform
from tether.server.store.tables import audit_records, segments
from tether.server.web import session_history

from ..api.conftest import login
from ..support import add_host
from .conftest import web_login
from .job_support import ADMIN

PASSWORD = "a long enough password"
SCRIPT = "import os\nprint('<b>not bold</b>')\n"


async def test_an_analyst_gets_a_403_page_and_the_attempt_is_audited(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    await web_login(browser, platform, "reader", PASSWORD)
    # The menu does not offer what the page would refuse.
    hosts_page = await browser.get("/active-response")
    assert 'href="/active-response"' in hosts_page.text
    assert 'href="/session-history"' not in hosts_page.text
    response = await browser.get("/session-history")
    assert response.status_code == 403
    assert "You need the audit.read permission for this page." in response.text
    assert (await browser.get("/session-history/verify")).status_code == 403
    async with platform.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_records.c.actor, audit_records.c.target, audit_records.c.outcome)
                .where(audit_records.c.action == "audit.read_denied")
                .order_by(audit_records.c.seq)
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("reader", "/session-history", "failure"),
        ("reader", "/session-history/verify", "failure"),
    ]


async def test_records_newest_first_with_full_details_as_text(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.audit.record(
        "job.submit", actor="someone", target="host-1", details={"script": SCRIPT}
    )
    page = (await admin_browser.get("/session-history")).text
    seqs = [int(s) for s in re.findall(r'data-seq="(\d+)"', page)]
    assert seqs == sorted(seqs, reverse=True)
    assert len(seqs) > 2
    assert "<pre>import os\nprint(&#39;&lt;b&gt;not bold&lt;/b&gt;&#39;)\n</pre>" in page


async def test_filters_by_user_target_action_and_time(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.audit.record("job.submit", actor="someone", target="host-1")
    await platform.audit.record("job.submit", actor="other", target="host-2")
    by_user = (await admin_browser.get("/session-history?actor=someone")).text
    assert "host-1" in by_user
    assert "host-2" not in by_user
    by_target = (await admin_browser.get("/session-history?target=host-2")).text
    assert "host-2" in by_target
    assert "host-1" not in by_target
    by_action = (await admin_browser.get("/session-history?action=auth.")).text
    assert "auth.login" in by_action
    assert "job.submit" not in by_action
    future = (await admin_browser.get("/session-history?since=2999-01-01T00:00")).text
    assert "No records match." in future
    past = (await admin_browser.get("/session-history?until=2000-01-01T00:00")).text
    assert "No records match." in past
    bad = await admin_browser.get("/session-history?since=yesterday")
    assert bad.status_code == 422
    assert "Write times as YYYY-MM-DDTHH:MM (UTC), or with an offset such as +01:00." in bad.text


async def test_verify_chain_reports_an_intact_chain(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    response = await admin_browser.get("/session-history/verify")
    assert response.status_code == 200
    assert "Chain intact:" in response.text
    # The head's hash, to compare with the last line of an export.
    head = (await platform.audit.verify()).head_hash
    assert f'<code class="head-hash">{head}</code>' in response.text
    # What a responder compares with a checkpoint kept elsewhere (ADR 0032).
    signed = platform.audit.signer.latest()
    assert signed is not None
    key = key_fingerprint(platform.audit.signer.public_key_pem())
    assert (
        f"Signed checkpoint #{signed.seq} at {signed.signed_at}, hash <code>{signed.hash}</code>, "
        f"key SHA-256 <code>{key}</code>. This compares the log with the platform's own "
        "checkpoint file, which someone who can write its data directory can roll back"
    ) in response.text


async def test_verify_chain_names_a_restore_on_the_record(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    report = await platform.audit.verify()
    details: dict[str, object] = {
        "backup_taken_at": "2026-12-01T00:00:00+00:00",
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "backup_sha256": "0" * 64,
        "restored_at": "2026-12-02T00:00:00+00:00",
        "os_user": "root",
    }
    details["signature"] = platform.audit.signer.sign_statement(statement_message(RESTORE, details))
    await platform.audit.record(RESTORE, actor="platform host", details=details)
    response = await admin_browser.get("/session-history/verify")
    assert "Chain intact:" in response.text
    assert (
        f"the platform was restored from the backup taken at 2026-12-01T00:00:00+00:00 (head "
        f"{report.head_seq}); records after {report.head_seq} that a witness saw"
    ) in response.text


async def test_a_script_run_shows_its_full_script_as_text(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    script = "for p in procs():\n    print(f'<script>{p}</script>')\n" + "# filler\n" * 300
    await platform.audit.record(
        "job.submit",
        actor="someone",
        target="batch:b1",
        details={"action": "script.run", "args": {"source": script, "params": {"n": 1}}},
    )
    page = (await admin_browser.get("/session-history?kind=job")).text
    row = page.split('data-seq="', 2)[1]
    assert "job.submit <small>script (own source) (n=1)</small>" in row
    shown = script.replace("'", "&#39;").replace("<", "&lt;").replace(">", "&gt;")
    assert f"<dt>script</dt><dd><pre>{shown}</pre></dd>" in row
    # The arguments keep everything but the source, which is shown once, as written.
    assert "&#34;n&#34;: 1" in row
    assert row.count("# filler") == 300


async def test_an_outcome_shows_beside_its_submission_with_how_it_ended(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.audit.record(
        "job.submit",
        actor="rita",
        target="batch:b9",
        details={"action": "script.run", "args": {"source": "raise SystemExit(3)"}},
    )
    await platform.audit.record(
        "job.outcome",
        actor="rita",
        target="job:j9",
        outcome="failure",
        details={
            "job": "j9",
            "batch": "b9",
            "action": "script.run",
            "state": "failed",
            "exit_code": 3,
        },
    )
    await platform.audit.record("job.submit", actor="rita", target="batch:other")
    # The job page links here with the batch: the submission and its outcomes, nothing else.
    page = (await admin_browser.get("/session-history?target=b9")).text
    assert re.findall(r"<td>(job\.\w+)", page) == ["job.outcome", "job.submit"]
    assert "job.outcome <small>script.run: failed, exit code 3</small>" in page


async def test_the_host_filter_finds_records_that_name_the_host_by_id(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host_id = await add_host(platform.engine, "web-db-7")
    await platform.audit.record("host.revoke", actor="someone", target=f"host:{host_id}")
    await platform.audit.record(
        "job.submit", actor="someone", target="batch:b2", details={"hosts": [host_id]}
    )
    await platform.audit.record("host.revoke", actor="someone", target="host:other")
    page = (await admin_browser.get("/session-history?target=db-7")).text
    assert re.findall(r"<td>(host\.revoke|job\.submit)", page) == ["job.submit", "host.revoke"]
    assert "host:other" not in page


async def test_the_kind_list_holds_the_families_present_and_filters(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    await platform.audit.record("file.upload", actor="someone", target="file:f1")
    page = (await admin_browser.get("/session-history?kind=file")).text
    options = re.findall(r'<option value="([a-z_]+)"', page)
    assert options == sorted(options)
    assert {"auth", "file", "platform"} <= set(options)
    assert '<option value="file" selected>' in page
    assert re.findall(r"<td>([a-z_]+)\.[a-z_.]+", page) == ["file"]
    mixed = (await admin_browser.get("/session-history?kind=file&action=auth.")).text
    assert "No records match." in mixed


async def test_export_downloads_what_the_api_exports_for_the_same_filters(
    admin_browser: httpx.AsyncClient, platform: Platform, admin_password: str, admin_secret: str
) -> None:
    host = await add_host(platform.engine, "web-exported")
    await platform.audit.record("job.submit", actor="someone", target=f"host:{host}")
    await platform.audit.record("job.submit", actor="other", target="host:elsewhere")
    await platform.audit.record("host.revoke", actor="admin", target=f"host:{host}")
    api = await login(
        admin_browser, "admin", admin_password, platform=platform, secret=admin_secret
    )
    page = (await admin_browser.get("/session-history?target=web-exported&kind=job")).text
    assert 'href="/session-history/export?target=web-exported&amp;kind=job" download' in page
    for query in ("", "?target=web-exported&kind=job", "?kind=host&action=job.", "?actor=other"):
        download = await admin_browser.get(f"/session-history/export{query}")
        assert download.status_code == 200, query
        assert download.headers["content-type"] == "application/x-ndjson"
        assert download.headers["content-disposition"] == (
            'attachment; filename="tether-audit.jsonl"'
        )
        from_api = await admin_browser.get(f"/api/v1/audit/export{query}", headers=api)
        assert from_api.status_code == 200, query
        assert download.content == from_api.content, query
        records = [json.loads(line) for line in download.text.splitlines()]
        seqs = [r["seq"] for r in records]
        assert seqs == sorted(seqs), query
        if query == "?target=web-exported&kind=job":
            assert [(r["actor"], r["action"]) for r in records] == [("someone", "job.submit")]
        elif query == "?kind=host&action=job.":
            # An action of another kind than the one chosen matches nothing.
            assert records == []
        elif query == "":
            # Unfiltered, it is every record of the chain.
            assert seqs == list(range(1, len(seqs) + 1))
            assert len(seqs) > 3
    bad = await admin_browser.get("/session-history/export?since=yesterday")
    assert bad.status_code == 422
    assert "Write times as YYYY-MM-DDTHH:MM (UTC), or with an offset such as +01:00." in bad.text
    bad_api = await admin_browser.get("/api/v1/audit/export?since=yesterday", headers=api)
    assert bad_api.status_code == 422
    assert bad_api.json() == {
        "detail": "Write times as YYYY-MM-DDTHH:MM (UTC), or with an offset such as +01:00."
    }


async def test_an_analyst_cannot_export(browser: httpx.AsyncClient, platform: Platform) -> None:
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    await web_login(browser, platform, "reader", PASSWORD)
    response = await browser.get("/session-history/export")
    assert response.status_code == 403
    assert "jsonl" not in response.headers.get("content-disposition", "")


async def test_times_read_to_the_second_and_targets_by_name(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    host_id = await add_host(platform.engine, "web-db-8", segment="ir")
    async with platform.engine.begin() as conn:
        await conn.execute(
            update(segments).where(segments.c.name == "ir").values(active_response=True)
        )
    await platform.audit.record("host.move", actor="someone", target=f"host:{host_id}")
    batch = await platform.jobs.submit(
        ADMIN, "script.run", cat_command("/etc/hosts").args, Selection(host_ids=[host_id]),
        source="test",
    )  # fmt: skip
    page = (await admin_browser.get("/session-history")).text
    assert f'<td class="target" title="host:{host_id}">host web-db-8</td>' in page
    assert f'<td class="target" title="batch:{batch.id}">batch: cat /etc/hosts</td>' in page
    assert "job.submit <small>cat /etc/hosts</small>" in page
    times = re.findall(r'<td class="time" title="([^"]+)">([^<]+)</td>', page)
    assert times
    for raw, shown in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown), shown
        assert raw.replace("T", " ").startswith(shown.removesuffix(" UTC"))
    assert "From (UTC)" in page
    assert "To (UTC)" in page


async def test_paging_reaches_records_past_the_first_page(
    admin_browser: httpx.AsyncClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short page: the paging is the same at 200, without writing 200 records first.
    monkeypatch.setattr(session_history, "SHOWN", 4)
    for n in range(4 + 3):
        await platform.audit.record("test.page", actor="pager", target=f"item-{n}")
    first = (await admin_browser.get("/session-history?action=test.")).text
    assert len(re.findall(r'data-seq="', first)) == 4
    assert "item-0<" not in first
    (older,) = re.findall(r'<a href="(/session-history\?[^"]+)">Older records</a>', first)
    assert "action=test." in older
    second = (await admin_browser.get(older.replace("&amp;", "&"))).text
    assert len(re.findall(r'data-seq="', second)) == 3
    assert "item-0<" in second
    assert "Older records" not in second
    assert 'href="/session-history?action=test.">Newest records</a>' in second
    bad = await admin_browser.get("/session-history?before=last")
    assert bad.status_code == 422
    assert "The page link is not valid; start again from the newest records." in bad.text
