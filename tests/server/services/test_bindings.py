"""Outcomes on record and stored results bound to them: what an insider editing rows by SQL
leaves behind, on SQLite and PostgreSQL alike."""

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import JobOutput, JobStatus
from tether.server.services.audit import AuditLog
from tether.server.services.bindings import ResultBindings
from tether.server.services.files import FileLibrary
from tether.server.store.blobs import BlobStore
from tether.server.store.tables import audit_records, job_output, jobs, library_files

from .test_jobs import Harness, frames
from .test_jobs import respond_action as respond_action  # the test's own response action


@pytest.fixture
def h(engine: AsyncEngine, audit: AuditLog) -> Harness:
    return Harness(engine, audit)


@pytest.fixture
def bindings(engine: AsyncEngine, audit: AuditLog) -> ResultBindings:
    found = ResultBindings(engine, audit)
    audit.add_check(found.check_all)
    return found


async def _ended_job(h: Harness, *, state: str = "succeeded") -> tuple[str, str]:
    """A job on a connected host that printed two lines and a row, then ended `state`."""
    host = await h.host("web-1")
    link = await h.connect(host)
    job_id = (await h.submit([host])).jobs[0].id
    await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state="running"))
    for seq, (stream, text) in enumerate([("stdout", "one\n"), ("stderr", "two\n")]):
        await h.dispatcher.on_output(
            host, JobOutput(job_id=job_id, seq=seq, stream=stream, text=text)
        )
    await h.dispatcher.on_output(
        host, JobOutput(job_id=job_id, seq=2, stream="row", fields={"pid": 7})
    )
    error = None if state == "succeeded" else "It broke."
    result = {"echo": "hi"} if state == "succeeded" else None
    await h.dispatcher.on_status(
        host,
        JobStatus(job_id=job_id, state=state, result=result, error=error),
    )
    assert [f["job_ids"] for f in frames(link, "job.ack")] == [[job_id]]
    return host, job_id


async def _outcome(engine: AsyncEngine, job_id: str) -> tuple[int, dict[str, object]]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(audit_records.c.seq, audit_records.c.details).where(
                    audit_records.c.action == "job.outcome",
                    audit_records.c.target == f"job:{job_id}",
                )
            )
        ).one()
    return int(row.seq), json.loads(row.details)


async def test_an_ending_is_its_own_record_with_the_hashes_of_what_was_stored(
    h: Harness, engine: AsyncEngine, audit: AuditLog, bindings: ResultBindings
) -> None:
    host, job_id = await _ended_job(h)
    seq, details = await _outcome(engine, job_id)
    assert details["state"] == "succeeded"
    assert details["host"] == host
    assert details["reported_by"] == "agent"
    assert details["result"] == {"echo": "hi"}
    output = details["output"]
    assert isinstance(output, dict)
    assert (output["pieces"], output["size"]) == (3, len("one\n") + len("two\n") + len('{"pid":7}'))
    job = await h.jobs.get(job_id)
    assert job.outcome_seq == seq
    assert await bindings.job_problem(job_id) is None
    assert (await audit.verify()).intact


async def test_a_failure_is_recorded_as_a_failure_with_its_sentence(
    h: Harness, engine: AsyncEngine, audit: AuditLog
) -> None:
    _host, job_id = await _ended_job(h, state="failed")
    async with engine.connect() as conn:
        outcome = (
            await conn.execute(
                select(audit_records.c.outcome, audit_records.c.actor).where(
                    audit_records.c.target == f"job:{job_id}",
                    audit_records.c.action == "job.outcome",
                )
            )
        ).one()
    assert tuple(outcome) == ("failure", "rita")
    assert (await _outcome(engine, job_id))[1]["error"] == "It broke."


async def test_edited_output_is_caught_by_the_job_page_and_by_verify(
    h: Harness, engine: AsyncEngine, audit: AuditLog, bindings: ResultBindings
) -> None:
    _host, job_id = await _ended_job(h)
    seq, _details = await _outcome(engine, job_id)
    async with engine.begin() as conn:
        await conn.execute(
            update(job_output)
            .where(job_output.c.job_id == job_id, job_output.c.seq == 0)
            .values(text="nothing to see\n")
        )
    sentence = (
        f"Job {job_id}'s stored output no longer matches its audit record {seq}: output was "
        "changed or deleted after the job ended."
    )
    assert await bindings.job_problem(job_id) == sentence
    report = await audit.verify()
    assert (report.intact, report.problem, report.first_bad_seq) == (False, sentence, seq)


async def test_deleted_output_rows_are_caught(
    h: Harness, engine: AsyncEngine, bindings: ResultBindings
) -> None:
    _host, job_id = await _ended_job(h)
    async with engine.begin() as conn:
        await conn.execute(
            delete(job_output).where(job_output.c.job_id == job_id, job_output.c.stream == "row")
        )
    problem = await bindings.job_problem(job_id)
    assert problem is not None
    assert "stored output no longer matches" in problem


async def test_an_edited_state_or_result_is_caught(
    h: Harness, engine: AsyncEngine, audit: AuditLog, bindings: ResultBindings
) -> None:
    _host, job_id = await _ended_job(h, state="failed")
    seq, _details = await _outcome(engine, job_id)
    async with engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == job_id).values(state="succeeded"))
    assert await bindings.job_problem(job_id) == (
        f"Job {job_id}'s stored state (succeeded) no longer matches its audit record {seq} "
        "(failed)."
    )
    async with engine.begin() as conn:
        await conn.execute(
            update(jobs).where(jobs.c.id == job_id).values(state="failed", result='{"echo":"x"}')
        )
    assert await bindings.job_problem(job_id) == (
        f"Job {job_id}'s stored result no longer matches its audit record {seq}."
    )
    assert not (await audit.verify()).intact


async def test_a_deleted_job_is_named_by_verify(
    h: Harness, engine: AsyncEngine, audit: AuditLog, bindings: ResultBindings
) -> None:
    _host, job_id = await _ended_job(h)
    seq, _details = await _outcome(engine, job_id)
    async with engine.begin() as conn:
        await conn.execute(delete(job_output).where(job_output.c.job_id == job_id))
        await conn.execute(delete(jobs).where(jobs.c.id == job_id))
    report = await audit.verify()
    assert (report.intact, report.first_bad_seq) == (False, seq)
    assert report.problem == f"Job {job_id} was deleted or unlinked from its outcome record {seq}."


async def test_a_job_set_to_an_ending_by_sql_is_caught_as_unbound(
    h: Harness, engine: AsyncEngine, audit: AuditLog, bindings: ResultBindings
) -> None:
    await bindings.record_unbound()
    host = await h.host("web-1")
    job_id = (await h.submit([host])).jobs[0].id
    assert (await audit.verify()).intact
    async with engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == job_id).values(state="succeeded"))
    report = await audit.verify()
    assert not report.intact
    assert report.problem.startswith(
        "Jobs or library files stored before results were bound to the audit log were changed"
    )


async def test_output_after_the_ending_is_not_stored(
    h: Harness, engine: AsyncEngine, bindings: ResultBindings
) -> None:
    # A compromised endpoint cannot make its own record look tampered with by adding output.
    host, job_id = await _ended_job(h)
    await h.dispatcher.on_output(
        host, JobOutput(job_id=job_id, seq=9, stream="stdout", text="late\n")
    )
    assert await bindings.job_problem(job_id) is None


async def test_a_report_the_state_machine_refuses_changes_nothing(
    h: Harness, engine: AsyncEngine
) -> None:
    host, job_id = await _ended_job(h, state="failed")
    seq, _details = await _outcome(engine, job_id)
    await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state="running"))
    await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state="succeeded", result={}))
    job = await h.jobs.get(job_id)
    assert (job.state, job.outcome_seq) == ("failed", seq)


@pytest.fixture
async def library(engine: AsyncEngine, audit: AuditLog, tmp_path: Path) -> FileLibrary:
    return FileLibrary(
        engine, audit, BlobStore(tmp_path / "blobs"), lambda _j: None, lambda _j: None
    )


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_library_metadata_is_bound_to_its_record(
    engine: AsyncEngine, audit: AuditLog, bindings: ResultBindings, library: FileLibrary
) -> None:
    entry = await library.upload("fix.sh", _chunks(b"#!/bin/sh\n"), actor="rita", source="t")
    assert await bindings.file_problem(entry.id) is None
    assert (await audit.verify()).intact
    async with engine.begin() as conn:
        seq = (
            await conn.execute(
                select(library_files.c.record_seq).where(library_files.c.id == entry.id)
            )
        ).scalar_one()
        await conn.execute(
            update(library_files).where(library_files.c.id == entry.id).values(name="benign.sh")
        )
    sentence = (
        f"Library file {entry.id}'s stored metadata no longer matches its audit record {seq}."
    )
    assert await bindings.file_problem(entry.id) == sentence
    assert (await audit.verify()).problem == sentence


async def test_endings_reported_together_are_recorded_together_and_each_bound(
    h: Harness, engine: AsyncEngine, audit: AuditLog, bindings: ResultBindings
) -> None:
    hosts = [await h.host(f"web-{n}") for n in range(5)]
    links = [await h.connect(host) for host in hosts]
    batch = await h.submit(hosts)
    by_host = {j.host_id: j.id for j in batch.jobs}
    signed: list[object] = []
    audit.signer.add_listener(signed.append)
    await asyncio.gather(
        *(
            h.dispatcher.on_status(
                host, JobStatus(job_id=by_host[host], state="succeeded", result={"echo": host})
            )
            for host in hosts
        )
    )
    for link, host in zip(links, hosts, strict=True):
        assert [f["job_ids"] for f in frames(link, "job.ack")] == [[by_host[host]]]
    for host in hosts:
        seq, details = await _outcome(engine, by_host[host])
        assert details["result"] == {"echo": host}
        assert (await h.jobs.get(by_host[host])).outcome_seq == seq
    # Fewer checkpoints than endings: the reports that arrived together shared one.
    assert len(signed) < len(hosts)
    assert (await audit.verify()).intact


async def test_an_ending_storage_refused_is_not_confirmed_and_is_recorded_once_space_is_back(
    h: Harness, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = await h.host("web-1")
    link = await h.connect(host)
    job_id = (await h.submit([host])).jobs[0].id

    async def full(*_args: object, **_kwargs: object) -> object:
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    with monkeypatch.context() as patched:
        patched.setattr("tether.server.services.dispatch.end_jobs", full)
        await h.dispatcher.on_status(
            host, JobStatus(job_id=job_id, state="succeeded", result={"echo": "hi"})
        )
    # Not confirmed: the agent keeps it in its journal; the job is not called ended.
    assert frames(link, "job.ack") == []
    assert (await h.jobs.get(job_id)).state == "queued"
    await h.dispatcher.record_unrecorded()
    assert [f["job_ids"] for f in frames(link, "job.ack")] == [[job_id]]
    job = await h.jobs.get(job_id)
    assert (job.state, job.result) == ("succeeded", {"echo": "hi"})
