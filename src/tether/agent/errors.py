"""Errors of the agent; each message is shown to the operator as it is."""

from tether.errors import TetherError


class AgentError(TetherError):
    """Base for everything the agent reports on purpose."""


class EnrollmentFailed(AgentError):
    """Enrollment did not complete; nothing was written to the state directory."""


class NotEnrolled(AgentError):
    """The state directory holds no identity."""


class AgentRefused(AgentError):
    """The platform refuses this agent for a reason reconnecting cannot fix."""


class ActionError(AgentError):
    """An action could not do what was asked, for a reason the analyst can act on.

    The message is one plain sentence and becomes the job's error as it is, without the type
    name that unexpected exceptions carry.
    """


class IsolationFailed(ActionError):
    """Isolation could not be changed; the firewall holds what it held before, unless said."""
