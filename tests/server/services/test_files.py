"""The file library: names, and what a retrieval is credited with."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.transfer import TransferDone, transfer_id_for
from tether.server.errors import Invalid
from tether.server.services.audit import AuditLog
from tether.server.services.file_transfers import FinishedJob
from tether.server.services.files import FileLibrary, check_name
from tether.server.store.blobs import Blob, BlobStore
from tether.server.store.tables import audit_records


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", ".", "..", " x", "x\x1b[2J", ""])
def test_library_names_are_file_names(name: str) -> None:
    with pytest.raises(Invalid, match="is not a valid library name"):
        check_name(name)


async def test_upload_stores_once_and_audits_the_hash(
    engine: AsyncEngine, audit: AuditLog, tmp_path: Path
) -> None:
    library = FileLibrary(engine, audit, BlobStore(tmp_path), lambda _job: None, lambda _job: None)
    entry = await library.upload("tool.sh", chunks(b"echo ", b"hi\n"), actor="rita", source="t")
    assert (entry.kind, entry.name, entry.size) == ("upload", "tool.sh", 8)
    assert (tmp_path / "sha256" / entry.sha256[:2] / entry.sha256[2:]).read_bytes() == b"echo hi\n"
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(audit_records).where(audit_records.c.action == "file.upload"))
        ).one()
    assert json.loads(row.details)["sha256"] == entry.sha256


async def test_a_retrieval_is_credited_only_with_what_the_platform_verified(
    engine: AsyncEngine, audit: AuditLog, tmp_path: Path
) -> None:
    store = BlobStore(tmp_path)
    uploaded_by_someone = FileLibrary(engine, audit, store, lambda _job: None, lambda _job: None)
    tool = await uploaded_by_someone.upload("tool", chunks(b"known"), actor="rita", source="t")
    verified: dict[str, Blob] = {}
    library = FileLibrary(
        engine, audit, store, lambda job: verified.pop(job, None), lambda job: verified.get(job)
    )
    # The endpoint sent nothing for this job but names a hash the store holds.
    lie = FinishedJob(
        job_id="j1",
        host_id="h1",
        action="files.get",
        state="succeeded",
        result={"path": "/usr/bin/ls", "size": tool.size, "sha256": tool.sha256},
        error=None,
        created_by="rita",
        args={"path": "/tmp/implant"},
    )
    # Checked before the ending is recorded: the job ends failed with this sentence.
    assert library.retrieval_problem("j1", lie.result or {}) == (
        "The endpoint reported a file the platform did not receive and verify for this job, so "
        "nothing was kept."
    )
    await library.job_finished(lie)
    assert await library.find(kind="retrieved") == []


async def test_a_deploy_is_credited_only_when_the_platform_streamed_and_saw_it_confirmed(
    engine: AsyncEngine, audit: AuditLog, tmp_path: Path
) -> None:
    sha = "ab" * 32
    outcomes: dict[str, TransferDone | str] = {
        "streamed": TransferDone(transfer_id=transfer_id_for("streamed"), size=5, sha256=sha),
        "partly": "The endpoint confirmed the file when the platform had sent it only 0 of its "
        "5 bytes, so the deploy is not counted (the file may still be on the endpoint).",
    }
    library = FileLibrary(
        engine,
        audit,
        BlobStore(tmp_path),
        lambda _job: None,
        lambda _job: None,
        outcomes.get,
    )
    claim = {"path": "/opt/tool", "size": 5, "sha256": sha}

    assert library.deploy_problem("streamed", claim) is None
    assert library.deploy_problem("partly", claim) == outcomes["partly"]
    # The lying agent: never opened the transfer, claims the size and hash it was told.
    assert library.deploy_problem("never-sent", claim) == (
        "The endpoint reported a deploy that the platform did not send in full and see confirmed "
        "for this job, so it is not counted as deployed."
    )
    assert library.deploy_problem("streamed", {**claim, "size": 6}) is not None
