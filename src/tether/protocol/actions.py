"""Endpoint actions, each declared once: name, argument and result models, permission, limits.

The agent looks up its handler by name, the platform validates arguments against the same model
before persisting a job, and the CLI and UI list what exists from here.
"""

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from tether.protocol.permissions import Permission


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ActionSpec:
    """One endpoint capability."""

    name: str
    args: type[BaseModel]
    result: type[BaseModel]
    permission: Permission
    timeout_seconds: float
    description: str
    # A response action changes or reads endpoint content. It needs the Active Response role and
    # a segment with Active Response on, and the agent refuses it unless its policy allows it.
    # True unless declared otherwise, so a new action forgetting the flag fails closed.
    response: bool = True


class NoopArgs(_Model):
    """Arguments of `system.noop`: an optional token echoed back."""

    echo: str = Field(default="", max_length=256)


class NoopResult(_Model):
    """Result of `system.noop`."""

    echo: str = Field(max_length=256)


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            name="system.noop",
            args=NoopArgs,
            result=NoopResult,
            permission=Permission.HOSTS_MANAGE,
            timeout_seconds=30.0,
            description="Round trip to the agent and back; touches nothing on the endpoint.",
            response=False,
        ),
    )
}


def action(name: str) -> ActionSpec:
    """The declaration of action `name`, or KeyError when no such action exists."""
    return ACTIONS[name]
