"""Request and response bodies of the isolation routes."""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tether.protocol.isolation import MAX_ALLOW_RULES, AllowRule, IsolationMode


class IsolationOut(BaseModel):
    """A host's isolation: `state` is one of not isolated, isolated, isolation pending or
    unisolation pending; `failed` is the newest request's failure, beside the state that holds."""

    model_config = ConfigDict(from_attributes=True)

    state: str
    mode: str | None
    since: datetime | None
    by: str | None
    failed: str | None
    job_id: str | None
    # The state is the agent's own report, newer than the isolation jobs and different from
    # them: a script or the endpoint owner changed it, or re-asserting it failed.
    reported_by_endpoint: bool


class IsolationRequest(BaseModel):
    """Named hosts, a segment, or every host (exactly one of the three)."""

    model_config = ConfigDict(extra="forbid")

    hosts: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=255)]], Field(max_length=10_000)
        ]
        | None
    ) = None
    segment: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    all: bool = False
    # Ignored by release. `outbound` keeps inbound connections; `full` blocks them too.
    mode: IsolationMode = IsolationMode.OUTBOUND
    # Never applied after this moment, even if the host comes back before.
    not_after: datetime | None = None

    @model_validator(mode="after")
    def _one_selection(self) -> "IsolationRequest":
        chosen = sum((self.hosts is not None, self.segment is not None, self.all))
        if chosen != 1:
            raise ValueError("name hosts, a segment, or all hosts: exactly one of them")
        return self


class AllowlistIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: Annotated[list[AllowRule], Field(max_length=MAX_ALLOW_RULES)]
