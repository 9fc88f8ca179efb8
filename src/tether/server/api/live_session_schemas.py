"""Request and response bodies of the live sessions API."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tether.server.api.job_schemas import ScriptRef


class LiveSessionStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The host's id, or its hostname when exactly one host has it.
    host: Annotated[str, Field(min_length=1, max_length=255)]


class LiveCommand(BaseModel):
    """One command of a session: an action and its arguments, as for `POST /jobs`."""

    model_config = ConfigDict(extra="forbid")

    action: Annotated[str, Field(min_length=1, max_length=64)]
    args: dict[str, Any] = Field(default_factory=dict)
    # The client's working directory when it sent this command, kept on the session so other
    # views (the web console) can show where the shell is.
    cwd: Annotated[str, Field(max_length=4096)] | None = None
    timeout_seconds: Annotated[float, Field(ge=1, le=24 * 3600)] | None = None
    # With action script.run: run this library script (the shell's `run`); the platform puts
    # its source in, and the run needs the respond tier instead of script.
    script: ScriptRef | None = None


class LiveSessionOut(BaseModel):
    id: str
    host_id: str
    hostname: str
    user: str
    started_at: datetime
    last_activity_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    cwd: str | None
    commands: int
    open: bool
    # When the session ends by itself if nothing happens in it (while it is open).
    idle_expires_at: datetime | None
