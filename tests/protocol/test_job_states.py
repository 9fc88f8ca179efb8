"""The one job state machine: what may move where, and that nothing leaves an ending."""

import pytest

from tether.protocol import (
    AWAITING_APPROVAL,
    FINAL_AGENT_STATES,
    FINAL_STATES,
    OPEN_STATES,
    STATES,
    UNFINISHED,
    InvalidTransition,
    can_move,
    check_move,
    is_final,
)
from tether.protocol.job_states import TRANSITIONS


def test_every_state_is_declared_once_and_split_into_unfinished_and_final() -> None:
    assert set(STATES) == set(TRANSITIONS)
    assert set(OPEN_STATES) | FINAL_STATES == set(STATES)
    assert set(OPEN_STATES) == {AWAITING_APPROVAL, *UNFINISHED}
    assert not set(OPEN_STATES) & FINAL_STATES
    assert FINAL_AGENT_STATES < FINAL_STATES
    assert {"expired", "rejected"} == FINAL_STATES - FINAL_AGENT_STATES


@pytest.mark.parametrize("ending", sorted(FINAL_STATES))
def test_nothing_leaves_an_ending(ending: str) -> None:
    assert is_final(ending)
    for state in STATES:
        assert not can_move(ending, state)
    with pytest.raises(InvalidTransition, match=f"A job cannot move from {ending} to running."):
        check_move(ending, "running")


def test_the_lifecycle_moves_forward_only() -> None:
    assert can_move("queued", "delivered")
    assert can_move("delivered", "running")
    assert can_move("running", "succeeded")
    assert not can_move("running", "delivered")
    assert not can_move("delivered", "queued")
    # Only the platform decides an expiry, and only for a job its agent never had.
    assert can_move("queued", "expired")
    assert not can_move("running", "expired")


def test_a_job_awaiting_approval_is_never_an_agents_and_ends_only_by_decision() -> None:
    # Not unfinished: the dispatcher and a reconnecting agent never see it.
    assert AWAITING_APPROVAL not in UNFINISHED
    assert can_move(AWAITING_APPROVAL, "queued")
    for ending in ("rejected", "expired", "cancelled"):
        assert can_move(AWAITING_APPROVAL, ending)
    # Not straight to an agent's states: approval queues it first.
    for state in ("delivered", "running", "succeeded", "failed"):
        assert not can_move(AWAITING_APPROVAL, state)
    # Rejected is the platform's alone, like expired.
    assert not can_move("queued", "rejected")
