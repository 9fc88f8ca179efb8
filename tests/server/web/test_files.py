"""The Files page: retrieved files and their chain of custody, the audited download, the
deployment library's streamed upload and its refusals, hostile file names shown as text."""

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import select

from tether.protocol import Role
from tether.protocol.transfer import transfer_id_for
from tether.server.services.files import LibraryFile, Retrieved
from tether.server.services.platform import Platform
from tether.server.store.tables import audit_records, batches, jobs, library_files

from ..api.conftest import enrolled
from ..support import add_host
from .conftest import csrf_of, web_login

PASSWORD = "a long enough password"
HOSTILE = "<img src=x onerror=alert(1)>"
EVIDENCE = b"MZ\x90\x00 not really a binary \r\n\x00\xff" * 100


async def retrieved(platform: Platform, path: str, data: bytes = EVIDENCE) -> LibraryFile:
    """A file as a files.get job leaves it: verified into the store, then in the library."""
    host_id = await add_host(platform.engine, "web-files-host")
    sha256 = hashlib.sha256(data).hexdigest()
    partial = await platform.files.blobs.open_partial(uuid.uuid4())
    await partial.write(0, data)
    await partial.commit(sha256, len(data))
    job_id = await finished_get_job(platform, host_id, path)
    return await platform.files.record_retrieved(
        Retrieved(
            job_id=job_id,
            host_id=host_id,
            path=path,
            size=len(data),
            sha256=sha256,
            mtime=None,
            owner="root",
            mode="0644",
            requested_by="admin",
            transfer_id=str(transfer_id_for(job_id)),
        )
    )


async def finished_get_job(platform: Platform, host_id: str, path: str) -> str:
    """The rows a succeeded files.get job leaves (the library entry names its job)."""
    batch_id, job_id, now = uuid.uuid4().hex, uuid.uuid4().hex, datetime.now(UTC)
    async with platform.engine.begin() as conn:
        await conn.execute(
            batches.insert().values(
                id=batch_id,
                action="files.get",
                args=json.dumps({"path": path}),
                selection="hosts",
                created_by="admin",
                created_at=now,
            )
        )
        await conn.execute(
            jobs.insert().values(
                id=job_id,
                batch_id=batch_id,
                host_id=host_id,
                action="files.get",
                state="succeeded",
                created_by="admin",
                created_at=now,
                expires_at=now,
                timeout_seconds=60.0,
                finished_at=now,
            )
        )
    return job_id


def stored_files(platform: Platform) -> list[Path]:
    return sorted(p for p in platform.files.blobs.root.rglob("*") if p.is_file())


async def audited(platform: Platform, action: str) -> list[dict[str, object]]:
    async with platform.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_records.c.actor, audit_records.c.target, audit_records.c.details)
                .where(audit_records.c.action == action)
                .order_by(audit_records.c.seq)
            )
        ).all()
    return [{"actor": r.actor, "target": r.target, **json.loads(r.details)} for r in rows]


async def upload(
    browser: httpx.AsyncClient,
    data: bytes,
    *,
    filename: str = "tool.sh",
    name: str = "",
    token: str | None = None,
) -> httpx.Response:
    if token is None:
        token = csrf_of((await browser.get("/files")).text)
    # httpx sends the fields before the files, as a browser sends a form in document order.
    return await browser.post(
        "/files/upload",
        data={"csrf_token": token, "name": name},
        files={"file": (filename, data, "application/octet-stream")},
    )


async def test_retrieved_files_are_listed_and_filtered(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    entry = await retrieved(platform, "/var/tmp/dropper.bin")
    page = (await admin_browser.get("/files")).text
    row = re.search(rf'<tr data-file="{entry.id}">(.*?)</tr>', page, re.S)
    assert row is not None
    for shown in ("dropper.bin", "web-files-host", "/var/tmp/dropper.bin", entry.sha256, "admin"):
        assert shown in row.group(1)
    assert str(len(EVIDENCE)) in row.group(1)
    assert entry.id in (await admin_browser.get("/files?host=web-files")).text
    assert entry.id not in (await admin_browser.get("/files?host=elsewhere")).text
    assert entry.id in (await admin_browser.get("/files?name=dropper")).text
    assert "No retrieved files match." in (await admin_browser.get("/files?name=nothing")).text


async def test_hostile_file_names_are_text(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    entry = await retrieved(platform, f"/tmp/{HOSTILE}")
    assert entry.name == HOSTILE
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    for url in ("/files", f"/files/{entry.id}"):
        page = (await admin_browser.get(url)).text
        assert escaped in page
        assert "<img" not in page


async def test_the_chain_of_custody_holds_the_retrieval_and_each_download(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    entry = await retrieved(platform, "/etc/cron.d/backdoor")
    download = await admin_browser.get(f"/files/{entry.id}/content")
    assert download.status_code == 200
    assert download.content == EVIDENCE
    assert hashlib.sha256(download.content).hexdigest() == entry.sha256
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"backdoor\"; filename*=UTF-8''backdoor"
    )
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-type"] == "application/octet-stream"
    assert await audited(platform, "file.download") == [
        {
            "actor": "admin",
            "target": f"file:{entry.id}",
            "name": "backdoor",
            "sha256": entry.sha256,
            "size": len(EVIDENCE),
        }
    ]
    page = (await admin_browser.get(f"/files/{entry.id}")).text
    actions = re.findall(r'data-action="([^"]+)"', page)
    assert actions == ["file.retrieve", "file.download"]
    assert "/etc/cron.d/backdoor" in page
    assert page.count(entry.sha256) >= 3
    assert f'href="/files/{entry.id}/content"' in page


async def test_a_long_chain_keeps_where_it_began_and_says_it_is_cut(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    entry = await retrieved(platform, "/usr/local/bin/tool")
    for _ in range(3):
        assert (await admin_browser.get(f"/files/{entry.id}/content")).status_code == 200
    cut = await platform.files.custody(entry, limit=2)
    assert [r.action for r in cut.records] == ["file.retrieve", "file.download"]
    assert cut.more
    whole = await platform.files.custody(entry)
    assert [r.action for r in whole.records] == ["file.retrieve"] + ["file.download"] * 3
    assert not whole.more
    page = (await admin_browser.get(f"/files/{entry.id}")).text
    assert "more audit records than this page shows" not in page


async def test_a_hostile_name_downloads_under_a_safe_file_name(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    entry = await retrieved(platform, f'/tmp/a";b {HOSTILE}')
    download = await admin_browser.get(f"/files/{entry.id}/content")
    disposition = download.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="a__b__img_src_x_onerror_alert_1__"; ')
    assert disposition.count('"') == 2
    assert "<" not in disposition


async def test_an_analyst_sees_the_files_but_neither_downloads_nor_reads_the_audit(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    entry = await retrieved(platform, "/tmp/sample")
    await platform.users.create("reader", PASSWORD, {Role.ANALYST})
    await web_login(browser, platform, "reader", PASSWORD)
    listing = (await browser.get("/files")).text
    assert entry.id in listing
    assert 'action="/files/upload"' not in listing
    page = (await browser.get(f"/files/{entry.id}")).text
    assert "shown to those who may read the audit log" in page
    assert 'data-action="file.retrieve"' not in page
    refused = await browser.get(f"/files/{entry.id}/content")
    assert refused.status_code == 403
    assert "You need the active_response permission for this page." in refused.text
    assert await audited(platform, "file.download") == []


async def test_a_user_without_results_read_gets_403(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    # An admin with a second factor: without one, the session could only enroll it.
    secret = await enrolled(platform, "plain-admin", {Role.ADMIN})
    await web_login(browser, platform, "plain-admin", PASSWORD, secret)
    response = await browser.get("/files")
    assert response.status_code == 403
    assert "You need the results.read permission for this page." in response.text


async def test_upload_goes_to_the_library_and_is_audited(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    data = b"#!/bin/sh\necho remediated\n" * 5000
    response = await upload(admin_browser, data, filename="remediate.sh")
    assert response.status_code == 303
    file_id = response.headers["location"].removeprefix("/files/")
    entry = await platform.files.get(file_id)
    assert (entry.kind, entry.name, entry.size) == ("upload", "remediate.sh", len(data))
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert platform.files.blobs.path_of(entry.sha256).read_bytes() == data
    (record,) = await audited(platform, "file.upload")
    bound = record.pop("library")
    assert isinstance(bound, dict)
    assert record == {
        "actor": "admin",
        "target": f"file:{file_id}",
        "name": "remediate.sh",
        "sha256": entry.sha256,
        "size": len(data),
    }
    # The whole entry is in the record, so an edit of its row is caught by verify.
    assert (bound["id"], bound["name"], bound["sha256"]) == (file_id, "remediate.sh", entry.sha256)
    page = (await admin_browser.get(f"/files/{file_id}")).text
    assert re.findall(r'data-action="([^"]+)"', page) == ["file.upload"]
    renamed = await upload(admin_browser, b"x", filename="local.bin", name="fix-it.sh")
    assert (await platform.files.get(renamed.headers["location"][7:])).name == "fix-it.sh"


async def test_a_bad_name_is_one_sentence_and_leaves_nothing(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    before = stored_files(platform)
    response = await upload(admin_browser, b"payload", name="../evil")
    assert response.status_code == 422
    assert (
        "&#39;../evil&#39; is not a valid library name: use 1-255 characters without slashes, "
        "backslashes, control characters or surrounding spaces." in response.text
    )
    assert stored_files(platform) == before
    assert await platform.files.find(kind="upload") == []
    assert await audited(platform, "file.upload") == []


async def test_an_oversize_upload_is_refused_and_leaves_nothing(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    # The store's cap, as the max_file_bytes setting sets it, made small for the test.
    platform.files.blobs.max_bytes = 64 * 1024
    before = stored_files(platform)
    response = await upload(admin_browser, b"\x00" * (64 * 1024 + 1), filename="big.iso")
    assert response.status_code == 413
    assert "The file is over the 64.0 KiB limit for library files; nothing was kept." in (
        response.text
    )
    assert stored_files(platform) == before
    assert await platform.files.find(kind="upload") == []
    assert await audited(platform, "file.upload") == []


async def test_an_upload_without_the_csrf_token_or_a_file_changes_nothing(
    admin_browser: httpx.AsyncClient, platform: Platform
) -> None:
    before = stored_files(platform)
    forged = await upload(admin_browser, b"payload", token="forged")
    assert forged.status_code == 403
    assert "This form has expired; reload the page and try again." in forged.text
    no_file = await upload(admin_browser, b"", filename="")
    assert no_file.status_code == 400
    assert "Choose a file to upload." in no_file.text
    not_a_form = await admin_browser.post(
        "/files/upload",
        content=b"payload",
        headers={"X-CSRF-Token": csrf_of((await admin_browser.get("/files")).text)},
    )
    assert not_a_form.status_code == 400
    assert "Send the upload as a multipart form with the file last." in not_a_form.text
    assert stored_files(platform) == before
    async with platform.engine.connect() as conn:
        assert (await conn.execute(select(library_files.c.id))).all() == []


async def test_an_unknown_file_is_a_404_page(admin_browser: httpx.AsyncClient) -> None:
    for url in ("/files/ghost", "/files/ghost/content"):
        response = await admin_browser.get(url)
        assert response.status_code == 404
        assert "The library holds no file with the id or name &#39;ghost&#39;." in response.text
