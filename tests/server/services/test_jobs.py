"""Jobs on the platform: submission checks, dispatch, acknowledged transitions, expiry, cancel."""

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import (
    ACTIONS,
    OLDEST_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    ActionSpec,
    JobOutput,
    JobStatus,
    NoopArgs,
    NoopResult,
    Permission,
)
from tether.protocol.transfer import transfer_id_for
from tether.server.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from tether.server.services.access import ResponseAccess
from tether.server.services.audit import AuditLog
from tether.server.services.dispatch import Dispatcher, OutputLimits
from tether.server.services.file_transfers import FileTransfers
from tether.server.services.job_events import JobEvents
from tether.server.services.jobs import Jobs, Selection
from tether.server.services.presence import Presence
from tether.server.services.users import User
from tether.server.store.blobs import BlobStore
from tether.server.store.db import utcnow
from tether.server.store.tables import audit_records, job_output, segments

from ..support import FakeLink, add_host

RESPONDER = User(1, "rita", frozenset({"script"}), False, mfa_verified=True)
NO_MFA = User(2, "nick", frozenset({"script"}), False, mfa_verified=False)
ANALYST = User(3, "ann", frozenset({"analyst"}), False)
ADMIN = User(4, "adam", frozenset({"admin"}), False)


@pytest.fixture(autouse=True)
def respond_action(monkeypatch: pytest.MonkeyPatch) -> None:
    # A response action of the test's own, so these tests do not depend on real endpoint actions.
    monkeypatch.setitem(
        ACTIONS,
        "test.respond",
        ActionSpec(
            name="test.respond",
            args=NoopArgs,
            result=NoopResult,
            permission=Permission.ACTIVE_RESPONSE,
            timeout_seconds=60,
            description="test",
        ),
    )


class Harness:
    def __init__(self, engine: AsyncEngine, audit: AuditLog) -> None:
        self.engine = engine
        self.presence = Presence(engine)
        self.events = JobEvents()
        self.dispatcher = Dispatcher(
            engine,
            audit,
            self.presence,
            ResponseAccess(engine),
            self.events,
            OutputLimits(max_bytes=100, max_pieces=5),
        )
        self.jobs = Jobs(engine, audit, ResponseAccess(engine), self.dispatcher, self.events)

    async def host(self, name: str, *, segment: str = "ir", enabled: bool = True) -> str:
        host_id = await add_host(self.engine, name, segment=segment)
        await self.switch(segment, enabled)
        return host_id

    async def switch(self, segment: str, enabled: bool) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(segments).where(segments.c.name == segment).values(active_response=enabled)
            )

    async def connect(self, host_id: str, protocol_version: int = PROTOCOL_VERSION) -> FakeLink:
        link = FakeLink(host_id, protocol_version)
        self.presence.attach(link)
        await self.dispatcher.host_connected(link)
        return link

    async def submit(self, host_ids: list[str], action: str = "test.respond", **kw: Any) -> Any:
        return await self.jobs.submit(
            kw.pop("user", RESPONDER),
            action,
            kw.pop("args", {"echo": "hi"}),
            Selection(host_ids=host_ids),
            source="test",
            **kw,
        )


def frames(link: FakeLink, kind: str) -> list[dict[str, Any]]:
    return [m for m in map(json.loads, link.sent) if m["type"] == kind]


@pytest.fixture
def h(engine: AsyncEngine, audit: AuditLog) -> Harness:
    return Harness(engine, audit)


async def test_submitted_to_an_online_host_it_is_sent_at_once(h: Harness) -> None:
    host = await h.host("web-1")
    link = await h.connect(host)
    batch = await h.submit([host])
    (job,) = batch.jobs
    assert (job.state, job.host_id, batch.counts) == ("queued", host, {"queued": 1})
    (sent,) = frames(link, "job")
    assert (sent["job_id"], sent["action"], sent["args"]) == (
        job.id,
        "test.respond",
        {"echo": "hi"},
    )


async def test_an_offline_host_gets_its_pending_job_when_it_connects(h: Harness) -> None:
    host = await h.host("web-1")
    batch = await h.submit([host])
    assert (await h.jobs.get(batch.jobs[0].id)).state == "queued"
    link = await h.connect(host)
    assert [f["job_id"] for f in frames(link, "job")] == [batch.jobs[0].id]


async def test_acknowledgements_move_the_state_and_final_ones_are_confirmed(h: Harness) -> None:
    host = await h.host("web-1")
    link = await h.connect(host)
    job_id = (await h.submit([host])).jobs[0].id
    for state in ("delivered", "running"):
        await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state=state))
        assert (await h.jobs.get(job_id)).state == state
    await h.dispatcher.on_status(
        host, JobStatus(job_id=job_id, state="succeeded", result={"echo": "hi"})
    )
    job = await h.jobs.get(job_id)
    assert (job.state, job.result) == ("succeeded", {"echo": "hi"})
    assert job.delivered_at is not None
    assert job.started_at is not None
    assert job.finished_at is not None
    assert frames(link, "job.ack") == [{"type": "job.ack", "job_ids": [job_id]}]
    # A late or repeated report changes nothing, and is confirmed again so the agent forgets it.
    await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state="running"))
    await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state="failed", error="x"))
    assert (await h.jobs.get(job_id)).state == "succeeded"
    assert len(frames(link, "job.ack")) == 2


async def test_only_the_host_a_job_was_sent_to_may_report_on_it(h: Harness) -> None:
    victim, attacker = await h.host("web-1"), await h.host("web-2")
    await h.connect(victim)
    job_id = (await h.submit([victim])).jobs[0].id
    await h.dispatcher.on_status(attacker, JobStatus(job_id=job_id, state="failed", error="x"))
    await h.dispatcher.on_output(
        attacker, JobOutput(job_id=job_id, seq=0, stream="stdout", text="forged")
    )
    assert (await h.jobs.get(job_id)).state == "queued"
    assert await h.jobs.output(job_id) == []


async def test_a_result_that_does_not_match_the_declaration_fails_the_job(h: Harness) -> None:
    host = await h.host("web-1")
    await h.connect(host)
    job_id = (await h.submit([host])).jobs[0].id
    await h.dispatcher.on_status(
        host, JobStatus(job_id=job_id, state="succeeded", result={"echo": 5, "extra": 1})
    )
    job = await h.jobs.get(job_id)
    assert job.state == "failed"
    assert job.result is None
    assert job.error is not None
    assert job.error.startswith("The agent's result for test.respond is not valid")


async def test_reports_about_a_job_never_sent_are_ignored(h: Harness) -> None:
    host = await h.host("web-1")
    job_id = (await h.submit([host])).jobs[0].id  # offline: queued, not sent
    await h.dispatcher.on_status(
        host, JobStatus(job_id=job_id, state="succeeded", result={"echo": ""})
    )
    assert (await h.jobs.get(job_id)).state == "queued"


async def test_submission_checks(h: Harness) -> None:
    host = await h.host("web-1")
    off = await h.host("db-1", segment="prod", enabled=False)
    with pytest.raises(Forbidden, match="Active Response tier"):
        await h.submit([host], user=ANALYST)
    with pytest.raises(Forbidden, match="second factor"):
        await h.submit([host], user=NO_MFA)
    with pytest.raises(Forbidden, match="Active Response is off in segment prod"):
        await h.submit([off])
    with pytest.raises(NotFound, match="no action named"):
        await h.submit([host], action="files.wipe")
    with pytest.raises(Invalid, match=r"Invalid arguments for test\.respond"):
        await h.submit([host], args={"echo": 5})
    with pytest.raises(Invalid, match=r"not-after time is already past"):
        await h.submit([host], not_after=utcnow() - timedelta(minutes=1))
    with pytest.raises(Forbidden, match=r"hosts\.manage"):
        await h.submit([host], action="system.noop", args={})
    # A batch leaves out the hosts that refuse and says why.
    batch = await h.submit([host, off])
    assert [j.host_id for j in batch.jobs] == [host]
    assert batch.refused == {
        off: "Active Response is off in segment prod, so response actions on db-1 are refused."
    }


async def test_the_submission_is_audited_with_its_full_arguments(h: Harness) -> None:
    host = await h.host("web-1")
    batch = await h.submit([host], args={"echo": "the whole script text"})
    async with h.engine.connect() as conn:
        row = (
            await conn.execute(select(audit_records).where(audit_records.c.action == "job.submit"))
        ).one()
    details = json.loads(row.details)
    assert (row.actor, row.target) == ("rita", f"batch:{batch.id}")
    assert details["args"] == {"echo": "the whole script text"}
    assert details["hosts"] == [host]


async def test_a_queued_job_whose_host_left_the_enabled_segment_fails_unsent(h: Harness) -> None:
    host = await h.host("web-1")
    job_id = (await h.submit([host])).jobs[0].id
    await h.switch("ir", False)
    link = await h.connect(host)
    assert frames(link, "job") == []
    job = await h.jobs.get(job_id)
    assert job.state == "failed"
    assert job.error == (
        "Not sent: Active Response is off in segment ir, so response actions on web-1 are refused."
    )


async def test_an_agent_of_the_previous_version_is_not_sent_what_it_cannot_do(h: Harness) -> None:
    host = await h.host("web-1")
    link = await h.connect(host, OLDEST_PROTOCOL_VERSION)
    put = {"sha256": "0" * 64, "size": 3, "path": "/usr/local/bin/fix.sh"}
    plain = (await h.submit([host], "files.put", args=put)).jobs[0].id
    with_mode = (await h.submit([host], "files.put", args={**put, "mode": "0755"})).jobs[0].id
    # The deploy without a mode goes out, in the shape a version-1 agent reads (the gateway's
    # connection leaves the null mode out); the one with a mode would be written 0600 there.
    assert [f["job_id"] for f in frames(link, "job")] == [plain]
    job = await h.jobs.get(with_mode)
    assert job.state == "failed"
    assert job.error == (
        "Not sent: this host's agent speaks protocol version 1, which cannot set a deployed "
        "file's mode; upgrade the agent first."
    )
    # A current agent of the same host is sent the mode.
    current = await h.connect(host)
    again = (await h.submit([host], "files.put", args={**put, "mode": "0755"})).jobs[0].id
    assert again in [f["job_id"] for f in frames(current, "job")]


async def test_pending_jobs_expire(h: Harness) -> None:
    host = await h.host("web-1")
    job_id = (await h.submit([host], ttl=timedelta(seconds=60))).jobs[0].id
    assert await h.dispatcher.sweep(utcnow() + timedelta(seconds=30)) == 0
    assert await h.dispatcher.sweep(utcnow() + timedelta(seconds=61)) == 1
    job = await h.jobs.get(job_id)
    assert job.state == "expired"
    assert job.error is not None
    assert "did not come online before the job expired" in job.error
    link = await h.connect(host)
    assert frames(link, "job") == []


async def test_not_after_expires_a_pending_job_and_travels_with_it(h: Harness) -> None:
    host = await h.host("web-1")
    stop = utcnow() + timedelta(hours=1)
    # A long time limit: the delivered job must not count as silent by then.
    job_id = (await h.submit([host], not_after=stop, timeout_seconds=7200)).jobs[0].id
    link = await h.connect(host)
    (sent,) = frames(link, "job")
    assert sent["not_after"].startswith(stop.strftime("%Y-%m-%dT%H:%M"))
    other = (await h.submit([host], not_after=stop)).jobs[0].id
    h.presence.detach(link)
    await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state="delivered"))
    assert await h.dispatcher.sweep(stop + timedelta(seconds=1)) == 1
    expired = await h.jobs.get(other)
    assert expired.state == "expired"
    assert expired.error is not None
    assert "not delivered before its not-after time" in expired.error
    assert (await h.jobs.get(job_id)).state == "delivered"


async def test_silent_delivered_jobs_fail_after_their_limit(h: Harness) -> None:
    host = await h.host("web-1")
    await h.connect(host)
    job_id = (await h.submit([host], timeout_seconds=60)).jobs[0].id
    await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state="running"))
    await h.dispatcher.sweep(utcnow() + timedelta(minutes=5))
    assert (await h.jobs.get(job_id)).state == "running"
    await h.dispatcher.sweep(utcnow() + timedelta(minutes=12))
    job = await h.jobs.get(job_id)
    assert job.state == "failed"
    assert job.error is not None
    assert "reported no result" in job.error


async def test_cancel_while_pending_ends_it_at_once(h: Harness) -> None:
    host = await h.host("web-1")
    job_id = (await h.submit([host])).jobs[0].id
    job = await h.jobs.cancel(job_id, RESPONDER, source="test")
    assert (job.state, job.cancel_requested_by) == ("cancelled", "rita")
    link = await h.connect(host)
    assert frames(link, "job") == []
    with pytest.raises(Conflict, match="already ended"):
        await h.jobs.cancel(job_id, RESPONDER, source="test")
    with pytest.raises(Forbidden):
        await h.jobs.cancel(job_id, NO_MFA, source="test")


async def test_cancel_of_a_sent_job_goes_through_the_agent(h: Harness) -> None:
    host = await h.host("web-1")
    link = await h.connect(host)
    job_id = (await h.submit([host])).jobs[0].id
    job = await h.jobs.cancel(job_id, RESPONDER, source="test")
    assert (job.state, job.cancel_requested_by) == ("queued", "rita")
    assert frames(link, "job.cancel") == [{"type": "job.cancel", "job_id": job_id}]
    await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state="cancelled", error="stop"))
    assert (await h.jobs.get(job_id)).state == "cancelled"


async def test_a_cancel_requested_while_offline_is_sent_at_reconnect(h: Harness) -> None:
    host = await h.host("web-1")
    link = await h.connect(host)
    job_id = (await h.submit([host])).jobs[0].id
    await h.dispatcher.on_status(host, JobStatus(job_id=job_id, state="running"))
    h.presence.detach(link)
    await h.jobs.cancel(job_id, RESPONDER, source="test")
    again = await h.connect(host)
    assert [f["job_id"] for f in frames(again, "job")] == [job_id]  # resent: agent says its state
    assert frames(again, "job.cancel") == [{"type": "job.cancel", "job_id": job_id}]


async def test_after_the_bus_was_away_cancellations_on_record_are_asked_again(
    h: Harness,
) -> None:
    # A split platform's gateway re-reads after a bus reconnect (docs/adr/0044): each
    # cancellation on record for a host connected here goes out again, ended jobs' do not.
    host = await h.host("web-1")
    link = await h.connect(host)
    job_id = (await h.submit([host])).jobs[0].id
    done_id = (await h.submit([host])).jobs[0].id
    for job in (job_id, done_id):
        await h.jobs.cancel(job, RESPONDER, source="test")
    await h.dispatcher.on_status(host, JobStatus(job_id=done_id, state="cancelled", error="x"))
    link.sent.clear()
    await h.dispatcher.cancel_waiting()
    assert frames(link, "job.cancel") == [{"type": "job.cancel", "job_id": job_id}]


async def test_output_is_stored_once_in_order_and_capped(h: Harness) -> None:
    host = await h.host("web-1")
    await h.connect(host)
    job_id = (await h.submit([host])).jobs[0].id
    for seq in (0, 1, 1, 0):  # resends after a reconnect are ignored
        await h.dispatcher.on_output(
            host, JobOutput(job_id=job_id, seq=seq, stream="stdout", text=f"line {seq}\n")
        )
    await h.dispatcher.on_output(
        host, JobOutput(job_id=job_id, seq=2, stream="row", fields={"pid": 1, "name": "init"})
    )
    pieces = await h.jobs.output(job_id)
    assert [(p.seq, p.stream, p.text, p.fields) for p in pieces] == [
        (0, "stdout", "line 0\n", None),
        (1, "stdout", "line 1\n", None),
        (2, "row", None, {"pid": 1, "name": "init"}),
    ]
    await h.dispatcher.on_output(
        host, JobOutput(job_id=job_id, seq=3, stream="stdout", text="x" * 200)
    )
    pieces = await h.jobs.output(job_id)
    assert (pieces[-1].seq, pieces[-1].stream) == (-1, "notice")
    assert "at most 100 bytes" in (pieces[-1].text or "")
    async with h.engine.connect() as conn:
        count = len((await conn.execute(select(job_output.c.id))).all())
    assert count == 4


async def test_follow_returns_as_soon_as_output_arrives(h: Harness) -> None:
    host = await h.host("web-1")
    await h.connect(host)
    job_id = (await h.submit([host])).jobs[0].id

    async def later() -> None:
        await asyncio.sleep(0.2)
        await h.dispatcher.on_output(
            host, JobOutput(job_id=job_id, seq=0, stream="stdout", text="hi")
        )

    task = asyncio.create_task(later())
    started = asyncio.get_running_loop().time()
    _job, pieces = await h.jobs.follow(job_id, after=0, wait=10)
    await task
    assert [p.text for p in pieces] == ["hi"]
    assert asyncio.get_running_loop().time() - started < 5


async def test_batches_over_a_segment_show_one_progress_view(h: Harness) -> None:
    a, b = await h.host("web-1"), await h.host("web-2")
    await h.host("db-1", segment="prod")
    await h.connect(a)
    batch = await h.jobs.submit(
        RESPONDER, "test.respond", {"echo": ""}, Selection(segment="ir"), source="test"
    )
    assert sorted(j.host_id for j in batch.jobs) == sorted([a, b])
    await h.dispatcher.on_status(
        a, JobStatus(job_id=next(j.id for j in batch.jobs if j.host_id == a), state="delivered")
    )
    view = await h.jobs.batch(batch.id)
    assert view.counts == {"delivered": 1, "queued": 1}
    with pytest.raises(NotFound, match="No segment is named"):
        await h.jobs.submit(RESPONDER, "test.respond", {}, Selection(segment="nope"), source="t")


async def test_a_user_losing_access_has_their_pending_response_jobs_withdrawn(h: Harness) -> None:
    host = await h.host("web-1")
    mine = (await h.submit([host])).jobs[0].id
    other = (
        (
            await h.submit(
                [host], user=User(9, "olga", frozenset({"script"}), False, mfa_verified=True)
            )
        )
        .jobs[0]
        .id
    )
    await h.jobs.withdraw_for_user(RESPONDER.id, "disabled")
    withdrawn = await h.jobs.get(mine)
    assert withdrawn.state == "cancelled"
    assert withdrawn.error is not None
    assert "lost access (disabled)" in withdrawn.error
    assert (await h.jobs.get(other)).state == "queued"
    link = await h.connect(host)
    assert [f["job_id"] for f in frames(link, "job")] == [other]


async def test_only_the_platform_names_a_library_script(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = await h.host("web-1")
    with pytest.raises(Invalid, match="library name is set by the platform"):
        await h.submit(
            [host], action="script.run", args={"source": "print(1)", "name": "Process Control v3"}
        )
    batch = await h.submit(
        [host], action="script.run", args={"source": "print(1)", "name": "X v1"}, from_library=True
    )
    assert batch.jobs[0].state == "queued"


async def test_a_submission_whose_jobs_cannot_be_stored_leaves_neither_record_nor_job(
    h: Harness, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = await h.host("web-1")

    class Broken:
        def insert(self) -> Any:
            raise RuntimeError("the database went away")

    with monkeypatch.context() as patched:
        patched.setattr("tether.server.services.jobs.batches", Broken())
        with pytest.raises(RuntimeError):
            await h.submit([host])
    async with engine.connect() as conn:
        actions = (await conn.execute(select(audit_records.c.action))).scalars().all()
    # The record and the jobs commit together: neither claims what the other lacks.
    assert "job.submit" not in actions
    assert await h.jobs.find() == []


async def test_a_submission_whose_checkpoint_cannot_be_written_is_refused_whole(
    h: Harness, engine: AsyncEngine, tmp_path: Path
) -> None:
    host = await h.host("web-1")
    # The checkpoint is flushed to this side file before the commit: make it unwritable.
    (tmp_path / "audit-anchor.json.tmp").mkdir()
    with pytest.raises(Unavailable) as refused:
        await h.submit([host])
    assert str(refused.value) == (
        "The audit log's checkpoint could not be written (Is a directory), so the action was "
        "not carried out; an operator must fix the platform's data directory."
    )
    async with engine.connect() as conn:
        actions = (await conn.execute(select(audit_records.c.action))).scalars().all()
    assert "job.submit" not in actions
    assert await h.jobs.find() == []


async def test_at_start_only_partials_an_unfinished_job_can_resume_are_kept(
    h: Harness, tmp_path: Path
) -> None:
    host = await h.host("web-1")
    store = BlobStore(tmp_path / "files", max_bytes=1 << 20)
    transfers = FileTransfers(store, max_file_bytes=1 << 20)
    waiting = (await h.submit([host], "files.get", args={"path": "/var/log/syslog"})).jobs[0]
    ended = (await h.submit([host], "files.get", args={"path": "/etc/hosts"})).jobs[0]
    await h.jobs.cancel(ended.id, RESPONDER, source="test")
    for transfer_id in (transfer_id_for(waiting.id), transfer_id_for(ended.id), uuid.uuid4()):
        partial = await store.open_partial(transfer_id)
        await partial.write(0, b"some bytes")
    (tmp_path / "files" / "partial" / "not-a-transfer").write_bytes(b"x")
    assert await transfers.sweep_partials(h.engine) == 3
    assert sorted(p.name for p in (tmp_path / "files" / "partial").iterdir()) == [
        str(transfer_id_for(waiting.id))
    ]
