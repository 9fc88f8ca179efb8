"""Arguments and results of the process actions: `processes.list` and `processes.kill`.

Everything the endpoint reports (names, command lines, users, paths) is escaped by the agent
(`tether.protocol.text`) and validated here against ENDPOINT_TEXT, so the platform refuses a
result carrying control characters instead of passing them on to a terminal.
"""

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictInt

from tether.protocol.text import ENDPOINT_TEXT

# At most this many processes in one listing; `truncated` says when there were more.
MAX_PROCESSES = 20_000
# A command line longer than this is cut, ending in TRUNCATION_MARKER.
MAX_COMMAND_LINE = 4096

Pid = Annotated[StrictInt, Field(ge=0, le=2**32)]
ProcessName = Annotated[str, Field(max_length=1024, pattern=ENDPOINT_TEXT)]
UserName = Annotated[str, Field(max_length=256, pattern=ENDPOINT_TEXT)]
EndpointPath = Annotated[str, Field(max_length=4096, pattern=ENDPOINT_TEXT)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

# Why an executable has no hash: a fixed vocabulary, never endpoint text.
HashUnavailable = Literal[
    "no executable", "not found", "access denied", "not a regular file", "read failed"
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProcessListArgs(_Model):
    """Arguments of `processes.list`; the filters combine (all must match)."""

    # SHA-256 of each process's executable; slower, each distinct file is read once per listing.
    hashes: StrictBool = False
    # Part of the process name, compared without regard to case.
    name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    pid: Pid | None = None
    # The process owner as the endpoint names it; on Windows `DOMAIN\\user` or just `user`.
    user: Annotated[str, Field(min_length=1, max_length=256)] | None = None


class ProcessInfo(_Model):
    """One process; a field the agent could not read (access denied, a zombie) is null."""

    pid: Pid
    ppid: Pid | None
    name: ProcessName | None
    user: UserName | None
    # Arguments joined by spaces, escaped, cut at MAX_COMMAND_LINE characters.
    command_line: Annotated[str, Field(max_length=MAX_COMMAND_LINE, pattern=ENDPOINT_TEXT)] | None
    started: AwareDatetime | None
    executable: EndpointPath | None
    sha256: Sha256 | None = None
    # Set when hashes were asked for and this executable could not be hashed.
    hash_unavailable: HashUnavailable | None = None


class ProcessList(_Model):
    """Result of `processes.list`, ordered by pid."""

    processes: Annotated[list[ProcessInfo], Field(max_length=MAX_PROCESSES)]
    # More processes matched than are listed: the entry cap or the result's byte budget was hit.
    truncated: StrictBool


class ProcessKillArgs(_Model):
    """Arguments of `processes.kill`."""

    pid: Annotated[StrictInt, Field(gt=0, le=2**32)]
    # Also kill every descendant of the process.
    tree: StrictBool = False


# killed: the process ended; gone: it had already ended when its turn came; denied: the endpoint
# refused the agent; survived: still running after the wait (stuck in the kernel, or protected).
KillOutcome = Literal["killed", "gone", "denied", "survived"]


class KilledProcess(_Model):
    """What happened to one process of a kill."""

    pid: Pid
    name: ProcessName | None
    outcome: KillOutcome


class ProcessKillResult(_Model):
    """Result of `processes.kill`: the target first, then its descendants."""

    pid: Pid
    processes: Annotated[list[KilledProcess], Field(min_length=1, max_length=MAX_PROCESSES)]
    # Some descendants were killed but are not listed: the result's byte budget was hit.
    truncated: StrictBool = False
