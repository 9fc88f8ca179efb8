"""Control messages: JSON text frames, one pydantic model per message type.

Every model forbids unknown fields and bounds its strings and lists: an agent may be compromised,
and the platform must be able to reject what it sends without guessing. The one exception is on
the agent's side: a few platform messages tolerate unknown top-level fields from a newer platform
(`TOLERANT_PLATFORM_MESSAGES`).
"""

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

from tether.protocol.ca_rollover import CaCertificate, CaRekey
from tether.protocol.errors import ProtocolError
from tether.protocol.hostnames import Hostname
from tether.protocol.isolation import AllowList, IsolationStatus, ReportCause
from tether.protocol.job_states import AgentJobState
from tether.protocol.text import ENDPOINT_TEXT
from tether.protocol.transfer import (
    TransferAbort,
    TransferAccept,
    TransferAck,
    TransferDone,
    TransferEnd,
    TransferGrant,
    TransferOpen,
    TransferRequest,
)
from tether.protocol.validation import first_error

# Text an endpoint reports ends up in terminals and web pages: no control characters, ever.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[str, Field(min_length=1, max_length=255, pattern=PRINTABLE)]
# What an endpoint says about itself is shown in tables and pages: no C1 or bidi either.
Label = Annotated[str, Field(max_length=128, pattern=ENDPOINT_TEXT)]
Address = Annotated[str, Field(min_length=2, max_length=64, pattern=r"^[0-9A-Fa-f:.]+$")]
# One of the platform's agent ports as the agent dials it: wss://HOST:PORT (docs/adr/0049).
AGENT_ADDRESS_PATTERN = r"^wss://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}$"
MAX_AGENT_ADDRESSES = 32
AgentAddress = Annotated[str, Field(max_length=300, pattern=AGENT_ADDRESS_PATTERN)]
AgentAddresses = Annotated[tuple[AgentAddress, ...], Field(max_length=MAX_AGENT_ADDRESSES)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OsInfo(_Message):
    """What an endpoint says about its operating system (informational, never trusted)."""

    family: Literal["linux", "windows", "darwin", "other"]
    name: Label
    version: Label


class Hello(_Message):
    """First frame from an agent after the TLS handshake."""

    type: Literal["hello"] = "hello"
    protocol_version: int
    agent_version: Annotated[str, Field(max_length=64, pattern=ENDPOINT_TEXT)]
    hostname: Hostname
    os: OsInfo
    addresses: Annotated[list[Address], Field(max_length=64)]
    boot_time: datetime
    # The endpoint owner switched response actions off on this machine (docs/adr/0009). Strict:
    # a JSON true or false only, never "yes" or 1 coerced into a switch position.
    response_disabled_locally: StrictBool = False
    # What the endpoint's firewall holds for isolation now (docs/adr/0017); the inventory shows
    # it when it differs from what the isolation jobs say (a script or the endpoint owner).
    isolation: IsolationStatus | None = None


class Heartbeat(_Message):
    """Sent by the agent every heartbeat interval so the platform can tell it is alive."""

    type: Literal["heartbeat"] = "heartbeat"


JobId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class JobStatus(_Message):
    """The agent's acknowledgement of a job's state change, with the result once it has one."""

    type: Literal["job.status"] = "job.status"
    job_id: JobId
    state: AgentJobState
    result: dict[str, Any] | None = None
    error: Annotated[str, Field(max_length=4096)] | None = None


# Structured result rows from scripts: flat, bounded, scalar values only, so the platform can
# store, show and export them as CSV without interpreting anything an endpoint sent.
RowKey = Annotated[str, Field(min_length=1, max_length=64, pattern=PRINTABLE)]
RowValue = Annotated[str, Field(max_length=4096)] | int | float | bool | None
# What an agent may send. "notice" is the platform's own stream (its notes on a job's output,
# stored at sequence -1): an endpoint that could send one could print a line identical to the
# platform's, so the model refuses it.
OutputStream = Literal["stdout", "stderr", "log", "row"]
MAX_OUTPUT_TEXT = 64 * 1024


class JobOutput(_Message):
    """One piece of a running job's output, numbered so a resend after a reconnect is harmless.

    `text` carries stdout, stderr and log chunks; `fields` carries one result row.
    """

    type: Literal["job.output"] = "job.output"
    job_id: JobId
    seq: Annotated[int, Field(ge=0, le=10_000_000)]
    stream: OutputStream
    text: Annotated[str, Field(max_length=MAX_OUTPUT_TEXT)] | None = None
    fields: Annotated[dict[RowKey, RowValue], Field(max_length=64)] | None = None


class Welcome(_Message):
    """The platform's answer to a valid hello."""

    type: Literal["welcome"] = "welcome"
    host_id: str
    server_time: datetime
    heartbeat_seconds: int
    # Every agent port of the platform, for the agent to keep and try in turn; empty from a
    # platform that keeps no list (the agent keeps the one it has). Docs/adr/0049.
    agent_addresses: AgentAddresses = ()


class Policy(_Message):
    """What the platform allows on this endpoint: sent after welcome and whenever it changes.

    The agent refuses response actions until the first policy of a connection arrives and while
    the latest one says Active Response is off (docs/adr/0008).
    """

    type: Literal["policy"] = "policy"
    segment: Name
    active_response: StrictBool
    # The admin-set isolation allowlist, for isolation a script asks for (tether.script.isolate);
    # isolation jobs carry their own copy, taken when they were requested.
    isolation_allow: AllowList = ()


class JobRequest(_Message):
    """A job for the agent to run; the action names one of `tether.protocol.ACTIONS`.

    Sent again after a reconnect while the platform has no final state for it: the agent answers
    a job id it already holds with the state it has, and never runs it twice.
    """

    type: Literal["job"] = "job"
    job_id: JobId
    action: Annotated[str, Field(min_length=1, max_length=64)]
    args: dict[str, Any]
    timeout_seconds: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] | None = None
    # Past this moment the agent refuses to start the job: a stale destructive action must not
    # run days later because a host came back.
    not_after: datetime | None = None
    # A round trip with no job record on the platform (reachability pings): the agent runs it
    # without journaling. Only actions that are not response actions may be sent this way.
    ephemeral: StrictBool = False


class IsolationReport(_Message):
    """The endpoint's isolation changed outside an isolation job: a script isolated or released
    it (`job_id` names the script's job), the endpoint owner released it locally, or re-asserting
    it at start or later failed."""

    type: Literal["isolation.report"] = "isolation.report"
    status: IsolationStatus
    cause: ReportCause
    job_id: JobId | None = None
    # Why the change the cause names did not happen (the rules in `status` still hold).
    error: Annotated[str, Field(max_length=1024)] | None = None


class JobCancel(_Message):
    """Stop a job the agent holds; it answers with the job's final state."""

    type: Literal["job.cancel"] = "job.cancel"
    job_id: JobId


class JobAck(_Message):
    """The platform has stored these jobs' final states: the agent may forget their results."""

    type: Literal["job.ack"] = "job.ack"
    job_ids: Annotated[list[JobId], Field(min_length=1, max_length=1000)]


# Either side may send or receive a file, so both unions take every transfer message.
AnyAgentMessage = (
    Hello
    | Heartbeat
    | JobStatus
    | JobOutput
    | TransferOpen
    | TransferAccept
    | TransferAck
    | TransferEnd
    | TransferDone
    | TransferAbort
    | TransferRequest
    | IsolationReport
    | CaRekey
)
AnyPlatformMessage = (
    Welcome
    | Policy
    | JobRequest
    | JobCancel
    | JobAck
    | TransferOpen
    | TransferAccept
    | TransferAck
    | TransferEnd
    | TransferDone
    | TransferAbort
    | TransferGrant
    | CaCertificate
)
AgentMessage = Annotated[AnyAgentMessage, Field(discriminator="type")]
PlatformMessage = Annotated[AnyPlatformMessage, Field(discriminator="type")]

_agent_adapter: TypeAdapter[AnyAgentMessage] = TypeAdapter(AgentMessage)
_platform_adapter: TypeAdapter[AnyPlatformMessage] = TypeAdapter(PlatformMessage)


def parse_agent_message(frame: str | bytes) -> AnyAgentMessage:
    """Validate one text frame from an agent, raising ProtocolError with the first problem."""
    if isinstance(frame, bytes):
        raise ProtocolError("A binary frame arrived where a JSON control message was expected.")
    try:
        return _agent_adapter.validate_json(frame)
    except ValidationError as exc:
        problem, evidence = first_error(exc)
        raise ProtocolError(f"Malformed agent message ({problem}).", evidence=evidence) from exc


# Messages only the platform sends, whose unknown top-level fields an agent ignores: a newer
# platform that adds an optional field keeps working with older agents. Only where ignoring is
# safe, because a field whose absence changes what an agent does comes with a protocol version
# bump, and the platform leaves it out for older agents (tether.protocol.compat). Job arguments,
# nested structures and transfer messages stay strict: an argument an agent skipped would run
# another action than the one asked for.
TOLERANT_PLATFORM_MESSAGES = frozenset({"welcome", "policy", "job", "job.cancel", "job.ack"})


def parse_platform_message(frame: str | bytes) -> AnyPlatformMessage:
    """Validate one text frame from the platform, raising ProtocolError with the first problem.

    Unknown top-level fields of `TOLERANT_PLATFORM_MESSAGES` are ignored (a newer platform's).
    """
    if isinstance(frame, bytes):
        raise ProtocolError("A binary frame arrived where a JSON control message was expected.")
    try:
        return _platform_adapter.validate_json(frame)
    except ValidationError as exc:
        unknown = _unknown_top_level_fields(exc)
        if unknown:
            return _without_fields(frame, unknown, exc)
        problem, evidence = first_error(exc)
        raise ProtocolError(f"Malformed platform message ({problem}).", evidence=evidence) from exc


def _unknown_top_level_fields(exc: ValidationError) -> frozenset[str]:
    """The fields a frame may drop when every error is an unknown top-level field of a message
    type that tolerates them; empty otherwise (the frame is refused as it is)."""
    unknown: set[str] = set()
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        if (
            err["type"] != "extra_forbidden"
            or len(loc) != 2
            or loc[0] not in TOLERANT_PLATFORM_MESSAGES
        ):
            return frozenset()
        unknown.add(str(loc[1]))
    return frozenset(unknown)


def _without_fields(
    frame: str, unknown: frozenset[str], exc: ValidationError
) -> AnyPlatformMessage:
    """`frame` validated again without its `unknown` top-level fields (the fast path, a frame
    with none, never comes here)."""
    message = json.loads(frame)
    for name in unknown:
        message.pop(name, None)
    try:
        # Back through JSON, so the fields left are read exactly as in the first attempt.
        return _platform_adapter.validate_json(json.dumps(message))
    except ValidationError as again:
        problem, evidence = first_error(again)
        raise ProtocolError(f"Malformed platform message ({problem}).", evidence=evidence) from exc
