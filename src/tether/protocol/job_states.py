"""The one job state machine (DESIGN.md section 3), read by the platform, the agent, the API, the
CLI and the UI alike.

    queued -> delivered -> running -> succeeded | failed | timed_out | cancelled
    queued -> expired | failed (refused at dispatch) | cancelled (withdrawn before delivery)
    awaiting_approval -> queued (approved) | rejected | expired | cancelled (withdrawn)

A job waits as `awaiting_approval` when its segment asks for a second person's approval of its
action class (docs/adr/0039); it is never sent to an agent in that state, so it is not among the
`UNFINISHED` states the dispatcher and the agent deal with.

An agent may also report a final state straight from `queued` or `delivered` (a job it refused or
that ended before it started). Nothing leaves a final state.
"""

from typing import Final, Literal, get_args

JobState = Literal[
    "awaiting_approval",
    "queued",
    "delivered",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "expired",
    "rejected",
]
STATES: Final[tuple[str, ...]] = get_args(JobState)

# What an agent may report about a job. `expired` and a `cancelled` while queued are decided by
# the platform alone: the agent never saw those jobs.
AgentJobState = Literal["delivered", "running", "succeeded", "failed", "timed_out", "cancelled"]

FINAL_AGENT_STATES: Final[frozenset[str]] = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled"}
)
FINAL_STATES: Final[frozenset[str]] = FINAL_AGENT_STATES | {"expired", "rejected"}
AWAITING_APPROVAL: Final = "awaiting_approval"
# What the platform may have sent, or will send, to an agent.
UNFINISHED: Final[tuple[str, ...]] = ("queued", "delivered", "running")
# Every state a job can still leave: the unfinished ones and the wait for approval.
OPEN_STATES: Final[tuple[str, ...]] = (AWAITING_APPROVAL, *UNFINISHED)

_ENDINGS: Final[frozenset[str]] = FINAL_AGENT_STATES
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    # Approved, rejected, not approved in time, or withdrawn by its requester.
    AWAITING_APPROVAL: frozenset({"queued", "rejected", "expired", "cancelled"}),
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
