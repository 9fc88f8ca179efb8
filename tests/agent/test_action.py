import asyncio
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from tether.agent.action import MAX_ERROR_CHARS, Handler, ResultBudget, run_action, run_blocking
from tether.agent.actions import HANDLERS
from tether.agent.errors import ActionError
from tether.protocol import (
    ACTIONS,
    MAX_FRAME_BYTES,
    TRUNCATION_MARKER,
    JobRequest,
    NoopArgs,
    NoopResult,
)


def job(action: str = "system.noop", **args: Any) -> JobRequest:
    return JobRequest(job_id="j1", action=action, args=args)


async def test_noop_succeeds_with_its_declared_result() -> None:
    status = await run_action(job(echo="hi"), HANDLERS)
    assert (status.job_id, status.state, status.result, status.error) == (
        "j1",
        "succeeded",
        {"echo": "hi"},
        None,
    )


def test_every_declared_action_has_a_handler() -> None:
    # agent.upgrade needs the agent's state directory: each AgentConnection adds its handler
    # (tests/packaging/test_upgrade.py runs it in the packaged agent).
    assert set(HANDLERS) | {"agent.upgrade"} == set(ACTIONS)


async def test_unknown_action_fails_with_a_clear_message() -> None:
    status = await run_action(job("system.format_disk"), HANDLERS)
    assert status.state == "failed"
    assert status.error == "This agent does not know the action 'system.format_disk'."


async def test_declared_action_without_handler_fails() -> None:
    status = await run_action(job(), {})
    assert status.state == "failed"
    assert status.error is not None
    assert "does not know the action 'system.noop'" in status.error


async def test_bad_arguments_fail_without_calling_the_handler() -> None:
    called: list[object] = []

    async def handler(args: NoopArgs) -> NoopResult:
        called.append(args)
        return NoopResult(echo="")

    handlers: dict[str, Handler] = {"system.noop": handler}
    for bad in ({"echo": "x" * 257}, {"unexpected": 1}, {"echo": 5}):
        status = await run_action(job(**bad), handlers)
        assert status.state == "failed"
        assert status.error is not None
        assert status.error.startswith("Invalid arguments for system.noop: ")
    assert called == []


async def test_handler_exception_becomes_a_failed_status() -> None:
    async def broken(args: NoopArgs) -> NoopResult:
        raise PermissionError("access denied to /etc/shadow")

    status = await run_action(job(), {"system.noop": broken})
    assert status.state == "failed"
    assert status.error == "PermissionError: access denied to /etc/shadow"


async def test_handler_returning_the_wrong_model_fails() -> None:
    class Other(BaseModel):
        value: int = 1

    async def wrong(args: NoopArgs) -> BaseModel:
        return Other()

    status = await run_action(job(), {"system.noop": wrong})
    assert status.state == "failed"
    assert status.error == "The system.noop handler returned Other, not its declared result."


async def test_action_error_message_is_the_job_error_as_it_is() -> None:
    async def refuses(args: NoopArgs) -> NoopResult:
        raise ActionError("No process has the pid 123 on this endpoint.")

    status = await run_action(job(), {"system.noop": refuses})
    assert status.state == "failed"
    assert status.error == "No process has the pid 123 on this endpoint."


async def test_long_error_messages_are_clipped_to_what_the_status_holds() -> None:
    async def verbose(args: NoopArgs) -> NoopResult:
        raise ActionError("x" * 10_000)

    async def crashing(args: NoopArgs) -> NoopResult:
        raise RuntimeError("y" * 10_000)

    for handler in (verbose, crashing):
        status = await run_action(job(), {"system.noop": handler})
        assert status.state == "failed"
        assert status.error is not None
        assert len(status.error) == MAX_ERROR_CHARS
        assert status.error.endswith(TRUNCATION_MARKER)


async def test_result_over_the_frame_limit_fails_instead_of_being_sent() -> None:
    class Huge(NoopResult):
        model_config = {"extra": "allow"}

    async def huge(args: NoopArgs) -> NoopResult:
        return Huge(echo="", blob="z" * MAX_FRAME_BYTES)

    status = await run_action(job(), {"system.noop": huge})
    assert status.state == "failed"
    assert status.error is not None
    assert "over the 1048576-byte frame limit" in status.error
    assert len(status.model_dump_json()) < 10_000


def test_result_budget_counts_json_bytes_and_stays_spent() -> None:
    entry = NoopResult(echo="é" * 10)  # 2 bytes each in UTF-8
    size = len(entry.model_dump_json().encode()) + 1
    assert size == len('{"echo":""}') + 20 + 1
    budget = ResultBudget(limit=2 * size)
    assert budget.fits(entry)
    assert budget.fits(entry)
    assert budget.remaining == 0
    assert not budget.fits(NoopResult(echo=""))
    assert not ResultBudget(limit=size - 1).fits(entry)


async def test_blocking_work_runs_in_a_thread_and_hears_a_cancel() -> None:
    seen: dict[str, Any] = {}
    started = threading.Event()

    def work(stop: threading.Event) -> str:
        seen["thread"] = threading.current_thread()
        started.set()
        began = time.monotonic()
        seen["stopped"] = stop.wait(timeout=10)
        seen["waited"] = time.monotonic() - began
        return "done"

    assert await run_blocking(lambda stop: "quick") == "quick"
    task = asyncio.create_task(run_blocking(work))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if "waited" in seen:
            break
        await asyncio.sleep(0.02)
    assert seen["thread"] is not threading.main_thread()
    assert seen["stopped"] is True
    assert seen["waited"] < 5
