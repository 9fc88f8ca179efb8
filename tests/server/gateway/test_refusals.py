"""Refusals of a host go on record bounded: ten a minute one by one, then one summary."""

import json

from tether.server.gateway.refusals import Penalties, RefusalRecords
from tether.server.services.audit import AuditLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def records(audit: AuditLog) -> list[tuple[str, str, dict[str, object]]]:
    return [(r.action, r.target, json.loads(r.details)) async for r in audit.iter_records()]


async def refuse(refusals: RefusalRecords, target: str, kind: str = "bad_frame") -> None:
    await refusals.refuse(
        target, source="127.0.0.1:5000", kind=kind, reason=f"Refused ({kind}).", details={}
    )


async def test_a_hosts_first_refusals_are_recorded_one_by_one(audit: AuditLog) -> None:
    refusals = RefusalRecords(audit, clock=Clock())
    for _ in range(10):
        await refuse(refusals, "host:a")
    stored = await records(audit)
    assert len(stored) == 10
    assert stored[0] == ("agent.connect", "host:a", {"reason": "Refused (bad_frame)."})


async def test_past_ten_a_minute_refusals_are_counted_into_one_summary(audit: AuditLog) -> None:
    clock = Clock()
    refusals = RefusalRecords(audit, clock=clock)
    for _ in range(10):
        await refuse(refusals, "host:a")
    for _ in range(500):
        await refuse(refusals, "host:a", "over budget: control frames")
    await refuse(refusals, "host:a", "refused_until_its_penalty_ends")
    await refuse(refusals, "host:b")  # another host has its own allowance
    assert len(await records(audit)) == 11
    await refusals.flush()  # the minute is not over: nothing yet
    assert len(await records(audit)) == 11
    clock.now += 60
    await refusals.flush()
    stored = await records(audit)
    assert len(stored) == 12
    action, target, details = stored[-1]
    assert (action, target) == ("agent.connect", "host:a")
    assert details["summary"] is True
    assert details["reasons"] == {
        "over budget: control frames": 500,
        "refused_until_its_penalty_ends": 1,
    }
    assert details["reason"] == (
        "501 more refusals of this host within a minute were counted, not recorded one by one."
    )
    assert details["last_reason"] == "Refused (refused_until_its_penalty_ends)."
    # A new minute starts a new allowance.
    await refuse(refusals, "host:a")
    assert len(await records(audit)) == 13


async def test_a_window_that_ends_is_summarized_by_the_next_refusal_too(audit: AuditLog) -> None:
    clock = Clock()
    refusals = RefusalRecords(audit, clock=clock, individual=1)
    await refuse(refusals, "host:a")
    await refuse(refusals, "host:a")
    clock.now += 61
    await refuse(refusals, "host:a")
    stored = await records(audit)
    assert [d.get("summary", False) for _, _, d in stored] == [False, True, False]


async def test_open_summaries_are_written_at_shutdown(audit: AuditLog) -> None:
    refusals = RefusalRecords(audit, clock=Clock(), individual=0)
    await refuse(refusals, "host:a")
    assert await records(audit) == []
    await refusals.flush(everything=True)
    (only,) = await records(audit)
    assert only[2]["reasons"] == {"bad_frame": 1}


def test_a_penalty_ends_when_its_time_is_up() -> None:
    clock = Clock()
    penalties = Penalties(clock=clock)
    assert penalties.remaining("abc") is None
    penalties.impose("abc", "host-1", 60)
    assert penalties.remaining("abc") == (60, "host-1")
    clock.now += 59.6
    assert penalties.remaining("abc") == (1, "host-1")
    clock.now += 1
    assert penalties.remaining("abc") is None
