"""Whether this agent runs response actions now: the platform's policy and the local switch.

The platform checks the same things before it sends a job (tether.server.services.access); the
agent checks again because it is the last line: a job sent just before a switch was turned off,
or by a platform that is wrong or compromised, still meets this gate (docs/adr/0008).
"""

from collections.abc import Callable

from tether.protocol import ActionSpec, Policy

LOCALLY_DISABLED = "Response actions are switched off on this endpoint by its local agent setting."
NO_POLICY = (
    "This agent has not yet received its segment's policy on this connection, "
    "so it refuses response actions."
)


class ResponseGate:
    """The last policy of this connection, and the endpoint owner's local switch."""

    def __init__(self, disabled_locally: Callable[[], bool] = lambda: False) -> None:
        self._disabled_locally = disabled_locally
        self.policy: Policy | None = None

    def reset(self) -> None:
        """A new connection: nothing is allowed until its policy arrives."""
        self.policy = None

    def apply(self, policy: Policy) -> None:
        self.policy = policy

    def disabled_locally(self) -> bool:
        """Read each time, so switching it on takes effect at the next action, not a restart."""
        return self._disabled_locally()

    def refusal(self, spec: ActionSpec) -> str | None:
        """Why `spec` may not run now, or None; actions that are not response actions always may."""
        if not spec.response:
            return None
        if self.disabled_locally():
            return LOCALLY_DISABLED
        if self.policy is None:
            return NO_POLICY
        if not self.policy.active_response:
            return (
                f"Active Response is off in segment {self.policy.segment}, "
                "so this agent refuses response actions."
            )
        return None
