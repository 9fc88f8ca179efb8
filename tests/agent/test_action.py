from typing import Any

from pydantic import BaseModel

from tether.agent.action import Handler, run_action
from tether.agent.actions import HANDLERS
from tether.protocol import ACTIONS, JobRequest, NoopArgs, NoopResult


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
    assert set(HANDLERS) == set(ACTIONS)


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
