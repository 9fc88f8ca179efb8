"""Request and response bodies of the jobs API."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tether.server.api.view_out import ViewOut


class ScriptRef(BaseModel):
    """A library script to run, by name; without a version, the latest one."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=128)]
    version: Annotated[int, Field(ge=1)] | None = None


class HostSelection(BaseModel):
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

    @model_validator(mode="after")
    def _one_selection(self) -> "HostSelection":
        chosen = sum((self.hosts is not None, self.segment is not None, self.all))
        if chosen != 1:
            raise ValueError("name hosts, a segment, or all hosts: exactly one of them")
        return self


class JobSubmit(HostSelection):
    """An action for named hosts, a segment, or every host (exactly one of the three)."""

    action: Annotated[str, Field(min_length=1, max_length=64)]
    args: dict[str, Any] = Field(default_factory=dict)
    # How long a job waits for an offline host (default 7 days).
    ttl_seconds: Annotated[int, Field(ge=1, le=30 * 24 * 3600)] | None = None
    # Never start after this moment, even if the host comes back before the job expires.
    not_after: datetime | None = None
    timeout_seconds: Annotated[float, Field(ge=1, le=24 * 3600)] | None = None
    # With action script.run: run this library script; args.params are checked against its
    # schema and the platform fills in args.source and args.name.
    script: ScriptRef | None = None


class ApprovalOut(ViewOut):
    """A request for a second person's approval (docs/adr/0039) and what became of it."""

    batch_id: str
    action: str
    selection: str
    # The tier the action needs; an approver holds at least this one.
    tier: str
    requested_by: str
    requested_at: datetime
    # Not decided by then, the request expires.
    deadline: datetime
    # "pending", "approved", "rejected" or "expired".
    state: str
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    # Jobs of the batch still waiting for the decision, and one of them to name it by.
    waiting: int = 0
    first_job: str = ""


class ApprovalDecision(BaseModel):
    """Why the request is approved (optional) or rejected (required)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=500)] | None = None


class JobOut(ViewOut):
    id: str
    batch_id: str
    host_id: str
    hostname: str
    action: str
    state: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    not_after: datetime | None
    timeout_seconds: float
    sent_at: datetime | None
    delivered_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_by: str | None
    error: str | None
    result: dict[str, Any] | None = None
    args: dict[str, Any] | None = None
    # The audit record of the job's outcome, once it ended.
    outcome_seq: int | None = None
    # Output the platform could not store because its storage was full.
    output_lost_bytes: int = 0
    # Why an unfinished job has no news (its host is offline, its agent silent).
    waiting: str | None = None
    # Set on a single job's answer when the stored result no longer matches its audit record.
    integrity: str | None = None
    # Who asked, approved or rejected it and why, when its segment needed four eyes.
    approval: ApprovalOut | None = None
    # What ran, as typed or chosen: "cat /etc/hosts", "script triage (depth=2)", not script.run.
    summary: str = ""
    # How far its file transfer is: bytes on the receiving side's disk of the file's size, the
    # recent rate in bytes per second, and when that was measured (None before any byte).
    transfer_bytes: int | None = None
    transfer_size: int | None = None
    transfer_rate: float | None = None
    transfer_at: datetime | None = None


class BatchOut(BaseModel):
    id: str
    action: str
    selection: str
    created_by: str
    created_at: datetime
    # Jobs of the batch by state: the one progress view of a batch.
    counts: dict[str, int]
    jobs: list[JobOut]
    # Hosts left out at submission, with the reason (segment switch off, revoked, ...).
    refused: dict[str, str] = Field(default_factory=dict)
    approval: ApprovalOut | None = None
    # What the requester is told when jobs of the batch wait for approval.
    notice: str | None = None


class OutputPieceOut(ViewOut):
    id: int
    seq: int
    stream: str
    text: str | None
    fields: dict[str, Any] | None


class JobFollowOut(BaseModel):
    job: JobOut
    output: list[OutputPieceOut]
    # Pass as `after` to get only what came next.
    cursor: int


class ActionOut(BaseModel):
    name: str
    description: str
    permission: str
    response: bool
    # The Active Response tier a response action needs (None for the others); a library
    # script needs `library_tier` instead.
    tier: str | None = None
    library_tier: str | None = None
    timeout_seconds: float
    args_schema: dict[str, Any]
