"""Recording job endings at fan-out scale: N agents report a final state at once.

    .venv/bin/python benchmarks/endings.py --hosts 2000 --runs 3

Each ending is a state change plus a `job.outcome` audit record committed together (ADR 0030).
Agents' reports are recorded in groups (one transaction and one signed checkpoint for every report
that arrived while the previous group was written). The baseline, measured in the same run on a
fresh database each time, records every report in a transaction of its own, as a naive
implementation would; the figures are medians and the ratio between the two.

In process, on SQLite (the embedded default): the platform's services with in-memory agent links,
so the figure is the platform's own cost of recording, not the network's.
"""

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

import sections
from tether.protocol import PROTOCOL_VERSION, JobStatus
from tether.server.services.access import ResponseAccess
from tether.server.services.audit import AuditLog
from tether.server.services.checkpoints import CheckpointSigner
from tether.server.services.dispatch import Dispatcher
from tether.server.services.job_events import JobEvents
from tether.server.services.jobs import Jobs, Selection
from tether.server.services.presence import Presence
from tether.server.services.users import User
from tether.server.store.db import create_engine, sqlite_url
from tether.server.store.migrate import upgrade
from tether.server.store.tables import audit_records, hosts, segments

REPO = Path(__file__).resolve().parent.parent
USER = User(1, "bench", frozenset({"admin", "responder"}), False, mfa_verified=True)


class Link:
    """An agent connection that only counts what it is sent."""

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.connected_at = datetime.now(UTC)
        self.protocol_version = PROTOCOL_VERSION
        self.acks = 0

    async def send_text(self, text: str) -> None:
        if '"job.ack"' in text:
            self.acks += 1

    async def call(self, action: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {}

    async def send_policy(self, policy: Any) -> None:
        return None

    async def disconnect(self, code: Any, reason: str) -> None:
        return None

    def abort(self) -> None:
        return None


async def one_run(work: Path, count: int, grouped: bool) -> dict[str, float]:
    url = sqlite_url(str(work / "tether.db"))
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    CheckpointSigner.create_key(work / "audit.key")
    signer = CheckpointSigner(work / "audit.key", work / "anchor.json")
    checkpoints = 0

    def counted(_checkpoint: object) -> None:
        nonlocal checkpoints
        checkpoints += 1

    signer.add_listener(counted)
    audit = AuditLog(engine, signer)
    presence = Presence(engine)
    events = JobEvents()
    access = ResponseAccess(engine)
    dispatcher = Dispatcher(engine, audit, presence, access, events)
    jobs = Jobs(engine, audit, access, dispatcher, events)
    if not grouped:
        # The baseline: every report in a transaction of its own.
        async def alone(key: str, item: tuple[str, JobStatus]) -> set[str]:
            return await dispatcher._record_endings({key: item})

        dispatcher._endings.submit = alone  # type: ignore[method-assign]
    async with engine.begin() as conn:
        await conn.execute(
            insert(segments).values(
                name="bench", active_response=True, created_at=datetime.now(UTC)
            )
        )
        segment_id = (
            await conn.execute(select(segments.c.id).where(segments.c.name == "bench"))
        ).scalar_one()
        ids = [str(uuid.uuid4()) for _ in range(count)]
        await conn.execute(
            insert(hosts),
            [
                {
                    "id": host_id,
                    "hostname": f"host-{n}",
                    "segment_id": segment_id,
                    "cert_serial": uuid.uuid4().hex,
                    "cert_sha256": "0" * 64,
                    "enrolled_at": datetime.now(UTC),
                }
                for n, host_id in enumerate(ids)
            ],
        )
    links = [Link(h) for h in ids]
    for link in links:
        presence.attach(link)
    batch = await jobs.submit(
        USER, "system.noop", {"echo": "x"}, Selection(host_ids=ids), source="bench", reserved=True
    )
    by_host = {j.host_id: j.id for j in await jobs.find(batch_id=batch.id, limit=count)}
    for host_id, job_id in by_host.items():
        await dispatcher.on_status(host_id, JobStatus(job_id=job_id, state="running"))
    async with engine.connect() as conn:
        before = len((await conn.execute(select(audit_records.c.seq))).all())
    signed_before = checkpoints
    started = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(
        *(
            dispatcher.on_status(
                host_id, JobStatus(job_id=job_id, state="succeeded", result={"echo": "x"})
            )
            for host_id, job_id in by_host.items()
        )
    )
    elapsed = time.perf_counter() - started
    cpu_used = time.process_time() - cpu
    async with engine.connect() as conn:
        after = len((await conn.execute(select(audit_records.c.seq))).all())
    acked = sum(link.acks for link in links)
    await engine.dispose()
    if after - before != count or acked != count:
        raise SystemExit(
            f"expected {count} outcome records and acks, got {after - before}, {acked}"
        )
    if not (await audit_intact(url, work)):
        raise SystemExit("the chain did not verify after the run")
    return {
        "seconds": elapsed,
        "cpu_us_per_ending": cpu_used / count * 1e6,
        "checkpoints": float(checkpoints - signed_before),
    }


async def audit_intact(url: str, work: Path) -> bool:
    engine = create_engine(url)
    try:
        report = await AuditLog(
            engine, CheckpointSigner(work / "audit.key", work / "anchor.json")
        ).verify()
    finally:
        await engine.dispose()
    return report.intact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "performance.md")
    args = parser.parse_args()
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.runs):
        # Alternated, so both see the same machine load over the run.
        for grouped in (False, True):
            with tempfile.TemporaryDirectory() as work:
                results[grouped].append(asyncio.run(one_run(Path(work), args.hosts, grouped)))

    def median(grouped: bool, key: str) -> float:
        return statistics.median(r[key] for r in results[grouped])

    grouped_s, alone_s = median(True, "seconds"), median(False, "seconds")
    lines = [
        "## Recording job endings at fan-out scale (`benchmarks/endings.py`)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite): {args.hosts} agents "
        f"report `succeeded` at once; each ending is a state change and a `job.outcome` record "
        f"committed together (ADR 0030). Medians of {args.runs} runs, alternating, fresh database "
        "each.",
        "",
        "| | grouped (as shipped) | one transaction per ending (baseline) | ratio |",
        "|---|---|---|---|",
        f"| all {args.hosts} endings recorded and acknowledged | {grouped_s:.2f} s | "
        f"{alone_s:.2f} s | {alone_s / grouped_s:.1f}x faster |",
        f"| platform CPU per ending | {median(True, 'cpu_us_per_ending'):.0f} us | "
        f"{median(False, 'cpu_us_per_ending'):.0f} us | |",
        f"| signed checkpoints written | {median(True, 'checkpoints'):.0f} | "
        f"{median(False, 'checkpoints'):.0f} | |",
        "",
        "Every run checks that each agent got its acknowledgement, that there is exactly one "
        "outcome record per job, and that the chain verifies afterwards.",
    ]
    text = "\n".join(lines)
    print(text)
    sections.write_section(args.report, "endings", text)


if __name__ == "__main__":
    main()
