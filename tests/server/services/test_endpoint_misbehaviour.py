"""What an endpoint says about another host's jobs: refused, and on record in summary."""

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import IsolationReport, JobOutput, JobStatus
from tether.protocol.isolation import IsolationStatus
from tether.protocol.transfer import TransferRequest
from tether.server.services.audit import AuditLog
from tether.server.services.endpoint_misbehaviour import (
    ACTION,
    ISOLATION_REPORT,
    JOB_OUTPUT,
    JOB_STATUS,
    TRANSFER_REQUEST,
    EndpointMisbehaviour,
)
from tether.server.services.file_transfers import FileTransfers
from tether.server.services.files import FileLibrary
from tether.server.services.hosts import Hosts
from tether.server.services.script_files import ScriptFiles
from tether.server.store.blobs import BlobStore
from tether.server.store.tables import audit_records, job_output

from .test_jobs import Harness, frames, respond_action  # noqa: F401 (autouse)


async def misbehaviour_records(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_records)
                .where(audit_records.c.action == ACTION)
                .order_by(audit_records.c.seq)
            )
        ).all()
    return [{"target": r.target, "outcome": r.outcome, **json.loads(r.details)} for r in rows]


async def test_a_flood_is_one_record_at_once_and_one_summary_per_window(
    engine: AsyncEngine, audit: AuditLog
) -> None:
    summary = EndpointMisbehaviour(audit, window_seconds=0.2)
    for _ in range(500):
        await summary.note("host-a", JOB_STATUS, "job-of-b")
    await summary.note("host-a", JOB_OUTPUT, "job-of-b")
    await summary.note("host-b", TRANSFER_REQUEST, "x\x1b]0;pwned\x07")
    first = await misbehaviour_records(engine)
    assert [(r["target"], r["counts"]) for r in first] == [
        ("host:host-a", {JOB_STATUS: 1}),
        ("host:host-b", {TRANSFER_REQUEST: 1}),
    ]
    assert first[0]["first"] == {"kind": JOB_STATUS, "named": "job-of-b"}
    # An endpoint's words are quoted escaped and bounded.
    assert first[1]["first"]["named"] == "x\\x1b]0;pwned\\x07"
    await asyncio.sleep(0.4)
    records = await misbehaviour_records(engine)
    assert len(records) == 3  # host-b sent one: nothing more to say for it
    assert records[2]["target"] == "host:host-a"
    assert records[2]["summary"] is True
    assert records[2]["counts"] == {JOB_OUTPUT: 1, JOB_STATUS: 500}
    assert all(r["outcome"] == "failure" for r in records)
    # A new minute begins with a record at once again.
    await summary.note("host-a", ISOLATION_REPORT, "j")
    assert len(await misbehaviour_records(engine)) == 4
    await summary.close()


async def test_an_unknown_kind_is_a_programming_error(audit: AuditLog) -> None:
    with pytest.raises(ValueError, match="Unknown kind"):
        await EndpointMisbehaviour(audit).note("h", "made up", "j")


async def test_reports_and_output_for_another_hosts_job_change_nothing_and_are_recorded(
    engine: AsyncEngine, audit: AuditLog
) -> None:
    h = Harness(engine, audit)
    a, b = await h.host("a-1"), await h.host("b-1")
    await h.connect(a)
    link_b = await h.connect(b)
    job_of_b = (await h.submit([b])).jobs[0].id
    await h.dispatcher.on_status(a, JobStatus(job_id=job_of_b, state="running"))
    await h.dispatcher.on_status(
        a, JobStatus(job_id=job_of_b, state="succeeded", result={"echo": "forged"})
    )
    await h.dispatcher.on_output(a, JobOutput(job_id=job_of_b, seq=0, stream="stdout", text="x"))
    job = await h.jobs.get(job_of_b)
    assert job.state == "queued"
    async with engine.connect() as conn:
        assert (await conn.execute(select(job_output))).all() == []
    records = await misbehaviour_records(engine)
    assert [(r["target"], r["counts"], r["first"]["named"]) for r in records] == [
        (f"host:{a}", {JOB_STATUS: 1}, job_of_b)
    ]
    # Host b's own reports still count.
    await h.dispatcher.on_status(
        b, JobStatus(job_id=job_of_b, state="succeeded", result={"echo": "hi"})
    )
    assert (await h.jobs.get(job_of_b)).state == "succeeded"
    assert [f["job_ids"] for f in frames(link_b, "job.ack")] == [[job_of_b]]


async def test_a_script_grant_is_given_only_to_the_host_of_the_script(
    engine: AsyncEngine, audit: AuditLog, tmp_path: Any
) -> None:
    h = Harness(engine, audit)
    a, b = await h.host("a-1"), await h.host("b-1")
    await h.connect(b)
    script_of_b = (
        (await h.submit([b], "script.run", args={"source": "print(1)", "params": {}})).jobs[0].id
    )
    await h.dispatcher.on_status(b, JobStatus(job_id=script_of_b, state="running"))
    blobs = BlobStore(tmp_path)
    library = FileLibrary(engine, audit, blobs, lambda _j: None, lambda _j: None)
    summary = EndpointMisbehaviour(audit)
    grants = ScriptFiles(
        engine, audit, FileTransfers(blobs, max_file_bytes=1 << 20), library, summary
    )
    request = TransferRequest(
        job_id=script_of_b, seq=0, direction="get", path="/etc/shadow", size=3
    )
    given = await grants.on_request(b, request)
    assert given.error is None
    assert given.transfer_id is not None
    # Host a asks with b's job and request number: before, it was handed b's grant.
    refused = await grants.on_request(a, request)
    assert refused.transfer_id is None
    assert refused.error == f"Job {script_of_b} is not a script running on this host."
    records = await misbehaviour_records(engine)
    assert [(r["target"], r["counts"]) for r in records] == [(f"host:{a}", {TRANSFER_REQUEST: 1})]
    # b's repeat after a reconnect still gets its own grant.
    assert await grants.on_request(b, request) == given


async def test_an_isolation_report_naming_another_hosts_job_loses_the_claim(
    engine: AsyncEngine, audit: AuditLog
) -> None:
    h = Harness(engine, audit)
    a, b = await h.host("a-1"), await h.host("b-1")
    script_of_b = (
        (await h.submit([b], "script.run", args={"source": "print(1)", "params": {}})).jobs[0].id
    )
    hosts = Hosts(engine, audit, h.presence, EndpointMisbehaviour(audit))
    status = IsolationStatus(isolated=False)
    claimed = IsolationReport(status=status, cause="script", job_id=script_of_b)
    assert (await hosts.record_isolation(a, claimed)).job_id is None
    assert (await hosts.record_isolation(b, claimed)).job_id == script_of_b
    records = await misbehaviour_records(engine)
    assert [(r["target"], r["counts"], r["first"]["named"]) for r in records] == [
        (f"host:{a}", {ISOLATION_REPORT: 1}, script_of_b)
    ]


async def test_an_ending_for_a_job_the_platform_never_knew_is_refused_in_one_log_line(
    engine: AsyncEngine, audit: AuditLog, caplog: pytest.LogCaptureFixture
) -> None:
    """After a restore, an agent may report a job submitted after the backup: refused, said,
    never acknowledged as recorded, and nothing crashes."""
    h = Harness(engine, audit)
    a = await h.host("a-1")
    link = await h.connect(a)
    with caplog.at_level("WARNING"):
        await h.dispatcher.on_status(
            a, JobStatus(job_id="job-from-after-the-backup", state="succeeded", result={})
        )
    assert (
        f"Host {a} reported how job job-from-after-the-backup ended, a job this platform does "
        "not know (one from after the backup it was restored from, or a made-up id); refused."
    ) in caplog.text
    assert frames(link, "job.ack") == []
