"""Control messages: JSON text frames, one pydantic model per message type.

Every model forbids unknown fields and bounds its strings and lists: an agent may be compromised,
and the platform must be able to reject what it sends without guessing.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

from tether.protocol.errors import ProtocolError

# Text an endpoint reports ends up in terminals and web pages: no control characters, ever.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[str, Field(min_length=1, max_length=255, pattern=PRINTABLE)]
Label = Annotated[str, Field(max_length=128, pattern=PRINTABLE)]
Address = Annotated[str, Field(min_length=2, max_length=64, pattern=r"^[0-9A-Fa-f:.]+$")]


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
    agent_version: Annotated[str, Field(max_length=64, pattern=PRINTABLE)]
    hostname: Name
    os: OsInfo
    addresses: Annotated[list[Address], Field(max_length=64)]
    boot_time: datetime
    # The endpoint owner switched response actions off on this machine (docs/adr/0009). Strict:
    # a JSON true or false only, never "yes" or 1 coerced into a switch position.
    response_disabled_locally: StrictBool = False


class Heartbeat(_Message):
    """Sent by the agent every heartbeat interval so the platform can tell it is alive."""

    type: Literal["heartbeat"] = "heartbeat"


class JobStatus(_Message):
    """The agent's acknowledgement of a job's state change, with the result once it has one."""

    type: Literal["job.status"] = "job.status"
    job_id: Annotated[str, Field(min_length=1, max_length=64)]
    state: Literal["delivered", "running", "succeeded", "failed"]
    result: dict[str, Any] | None = None
    error: Annotated[str, Field(max_length=4096)] | None = None


class Welcome(_Message):
    """The platform's answer to a valid hello."""

    type: Literal["welcome"] = "welcome"
    host_id: str
    server_time: datetime
    heartbeat_seconds: int


class Policy(_Message):
    """What the platform allows on this endpoint: sent after welcome and whenever it changes.

    The agent refuses response actions until the first policy of a connection arrives and while
    the latest one says Active Response is off (docs/adr/0008).
    """

    type: Literal["policy"] = "policy"
    segment: Name
    active_response: StrictBool


class JobRequest(_Message):
    """A job for the agent to run; the action names one of `tether.protocol.ACTIONS`."""

    type: Literal["job"] = "job"
    job_id: Annotated[str, Field(min_length=1, max_length=64)]
    action: Annotated[str, Field(min_length=1, max_length=64)]
    args: dict[str, Any]


AgentMessage = Annotated[Hello | Heartbeat | JobStatus, Field(discriminator="type")]
PlatformMessage = Annotated[Welcome | Policy | JobRequest, Field(discriminator="type")]

_agent_adapter: TypeAdapter[Hello | Heartbeat | JobStatus] = TypeAdapter(AgentMessage)
_platform_adapter: TypeAdapter[Welcome | Policy | JobRequest] = TypeAdapter(PlatformMessage)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "message"
    return f"{where}: {err['msg']}"


def parse_agent_message(frame: str | bytes) -> Hello | Heartbeat | JobStatus:
    """Validate one text frame from an agent, raising ProtocolError with the first problem."""
    if isinstance(frame, bytes):
        raise ProtocolError("A binary frame arrived where a JSON control message was expected.")
    try:
        return _agent_adapter.validate_json(frame)
    except ValidationError as exc:
        raise ProtocolError(f"Malformed agent message ({_first_error(exc)}).") from exc


def parse_platform_message(frame: str | bytes) -> Welcome | Policy | JobRequest:
    """Validate one text frame from the platform, raising ProtocolError with the first problem."""
    if isinstance(frame, bytes):
        raise ProtocolError("A binary frame arrived where a JSON control message was expected.")
    try:
        return _platform_adapter.validate_json(frame)
    except ValidationError as exc:
        raise ProtocolError(f"Malformed platform message ({_first_error(exc)}).") from exc
