"""The `script.run` action: Python source with parameters, run by the agent in a child process.

The whole source travels in the job's arguments, so the audit record of the submission holds the
full script text (DESIGN.md sections 6 and 7).
"""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SCRIPT_BYTES = 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScriptRunArgs(_Model):
    """Arguments of `script.run`."""

    source: Annotated[str, Field(min_length=1, max_length=MAX_SCRIPT_BYTES)]
    params: Annotated[dict[str, Any], Field(max_length=64)] = Field(default_factory=dict)
    # The library script this source came from, if any, for the record ("Process Control v3").
    name: Annotated[str, Field(max_length=128)] | None = None
    max_output_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 8 * 1024 * 1024
    max_rows: Annotated[int, Field(ge=0, le=100_000)] = 10_000


class ScriptRunResult(_Model):
    """Result of `script.run`; stdout, stderr and rows arrive as the job's streamed output."""

    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False
    output_truncated: bool = False
    rows_truncated: bool = False
    error: Annotated[str, Field(max_length=4096)] | None = None


def exit_code_sentence(code: int) -> str:
    """How the agent ends a job whose script exited with a non-zero `code` (and no other cause),
    spelled once: the live consoles recognise it (`tether.protocol.shell.said_why_it_failed`)."""
    return f"The script exited with code {code}."
