"""Request and response bodies of the isolation routes."""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from tether.protocol.isolation import MAX_ALLOW_RULES, AllowRule, IsolationMode
from tether.server.api.job_schemas import HostSelection


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


class IsolationRequest(HostSelection):
    """Named hosts, a segment, or every host (exactly one of the three)."""

    # Ignored by release. `outbound` keeps inbound connections; `full` blocks them too.
    mode: IsolationMode = IsolationMode.OUTBOUND
    # Never applied after this moment, even if the host comes back before.
    not_after: datetime | None = None
    # Why (a ticket, a detection): kept in the request's audit record; one line, 500 at most.
    reason: str | None = None


class AllowlistIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: Annotated[list[AllowRule], Field(max_length=MAX_ALLOW_RULES)]
