"""The agent's own check: response actions need the connection's policy on and no local switch."""

from pathlib import Path

import pytest

from tether.agent.action import Handler, run_action
from tether.agent.gate import LOCALLY_DISABLED, NO_POLICY, ResponseGate
from tether.agent.state import StateDir
from tether.protocol import (
    ACTIONS,
    ActionSpec,
    JobRequest,
    NoopArgs,
    NoopResult,
    Permission,
    Policy,
)

# A response action that exists only in these tests: no real one exists yet.
TOUCH = ActionSpec(
    name="test.touch",
    args=NoopArgs,
    result=NoopResult,
    permission=Permission.ACTIVE_RESPONSE,
    timeout_seconds=5.0,
    description="Pretends to change the endpoint.",
)
ACTIONS_WITH_TOUCH = {**ACTIONS, TOUCH.name: TOUCH}
ON = Policy(segment="lab", active_response=True)
OFF = Policy(segment="lab", active_response=False)


@pytest.fixture
def ran() -> list[str]:
    return []


@pytest.fixture
def handlers(ran: list[str]) -> dict[str, Handler]:
    async def touch(args: NoopArgs) -> NoopResult:
        ran.append(args.echo)
        return NoopResult(echo=args.echo)

    async def noop(args: NoopArgs) -> NoopResult:
        ran.append("noop")
        return NoopResult(echo=args.echo)

    return {"test.touch": touch, "system.noop": noop}


async def run(
    gate: ResponseGate | None, handlers: dict[str, Handler], action: str = "test.touch"
) -> tuple[str, str | None]:
    job = JobRequest(job_id="j1", action=action, args={"echo": "x"})
    status = await run_action(job, handlers, gate, actions=ACTIONS_WITH_TOUCH)
    return status.state, status.error


async def test_response_action_runs_when_the_policy_allows(
    handlers: dict[str, Handler], ran: list[str]
) -> None:
    gate = ResponseGate()
    gate.apply(ON)
    assert await run(gate, handlers) == ("succeeded", None)
    assert ran == ["x"]


async def test_refused_before_any_policy_arrived_and_without_a_gate(
    handlers: dict[str, Handler], ran: list[str]
) -> None:
    assert await run(ResponseGate(), handlers) == ("failed", NO_POLICY)
    assert await run(None, handlers) == ("failed", NO_POLICY)
    assert ran == []


async def test_refused_while_the_policy_says_off(
    handlers: dict[str, Handler], ran: list[str]
) -> None:
    gate = ResponseGate()
    gate.apply(ON)
    gate.apply(OFF)
    assert await run(gate, handlers) == (
        "failed",
        "Active Response is off in segment lab, so this agent refuses response actions.",
    )
    assert ran == []


async def test_a_new_connection_forgets_the_last_policy(
    handlers: dict[str, Handler], ran: list[str]
) -> None:
    gate = ResponseGate()
    gate.apply(ON)
    gate.reset()
    assert await run(gate, handlers) == ("failed", NO_POLICY)
    assert ran == []


async def test_local_switch_wins_over_the_platform(
    handlers: dict[str, Handler], ran: list[str]
) -> None:
    switch = [True]
    gate = ResponseGate(lambda: switch[0])
    gate.apply(ON)
    assert await run(gate, handlers) == ("failed", LOCALLY_DISABLED)
    switch[0] = False  # read at each action: no restart needed either way
    assert await run(gate, handlers) == ("succeeded", None)
    assert ran == ["x"]


async def test_actions_that_are_not_response_actions_always_run(
    handlers: dict[str, Handler], ran: list[str]
) -> None:
    gate = ResponseGate(lambda: True)
    gate.apply(OFF)
    assert await run(gate, handlers, "system.noop") == ("succeeded", None)
    assert await run(None, handlers, "system.noop") == ("succeeded", None)
    assert ran == ["noop", "noop"]


def test_state_directory_file_is_the_local_switch(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert state.response_switch == tmp_path / "disable-active-response"
    assert state.response_disabled_locally() is False
    state.response_switch.touch()
    assert state.response_disabled_locally() is True
