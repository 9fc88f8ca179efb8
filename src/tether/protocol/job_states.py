"""The one job state machine (DESIGN.md section 3), read by the platform, the agent, the API, the
CLI and the UI alike.

    queued -> delivered -> running -> succeeded | failed | timed_out | cancelled
    queued -> expired | failed (refused at dispatch) | cancelled (withdrawn before delivery)

An agent may also report a final state straight from `queued` or `delivered` (a job it refused or
that ended before it started). Nothing leaves a final state.
"""

from typing import Final, Literal, get_args

JobState = Literal[
    "queued", "delivered", "running", "succeeded", "failed", "timed_out", "cancelled", "expired"
]
STATES: Final[tuple[str, ...]] = get_args(JobState)

# What an agent may report about a job. `expired` and a `cancelled` while queued are decided by
# the platform alone: the agent never saw those jobs.
AgentJobState = Literal["delivered", "running", "succeeded", "failed", "timed_out", "cancelled"]

FINAL_AGENT_STATES: Final[frozenset[str]] = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled"}
)
FINAL_STATES: Final[frozenset[str]] = FINAL_AGENT_STATES | {"expired"}
UNFINISHED: Final[tuple[str, ...]] = ("queued", "delivered", "running")

_ENDINGS: Final[frozenset[str]] = FINAL_AGENT_STATES
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "queued": frozenset({"delivered", "running", "expired"} | _ENDINGS),
    "delivered": frozenset({"running"} | _ENDINGS),
    "running": _ENDINGS,
    **{state: frozenset() for state in FINAL_STATES},
}


class InvalidTransition(ValueError):
    """A state change the machine does not allow."""


def is_final(state: str) -> bool:
    return state in FINAL_STATES


def can_move(current: str, new: str) -> bool:
    """True when a job in `current` may move to `new`."""
    return new in TRANSITIONS.get(current, frozenset())


def check_move(current: str, new: str) -> None:
    """Raise InvalidTransition unless a job in `current` may move to `new`."""
    if not can_move(current, new):
        raise InvalidTransition(f"A job cannot move from {current} to {new}.")
