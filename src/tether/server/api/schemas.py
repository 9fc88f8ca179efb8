"""Request and response bodies of the REST API (what the OpenAPI document shows)."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tether.protocol import Approval
from tether.server.api.isolation_schemas import IsolationOut
from tether.server.api.view_out import ViewOut


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_In):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    client: Literal["cli", "ui", "api"] = "api"


class LoginResponse(BaseModel):
    # With stage "second_factor" the token is good only for POST /auth/login/mfa; with "enroll"
    # only for setting up a second factor (and logout, whoami).
    token: str
    username: str
    roles: list[str]
    expires_at: datetime
    stage: Literal["full", "second_factor", "enroll"] = "full"
    mfa_verified: bool = False
    # With stage "enroll": the one sentence saying how to get an enrollment code and enroll.
    message: str | None = None


class SecondFactorRequest(_In):
    token: Annotated[str, Field(min_length=1, max_length=128)]
    code: Annotated[str | None, Field(pattern=r"^[0-9]{6}$")] = None
    recovery_code: Annotated[str | None, Field(min_length=8, max_length=32)] = None
    client: Literal["cli", "ui", "api"] = "api"


class WhoAmI(BaseModel):
    username: str
    roles: list[str]
    permissions: list[str]
    # The Active Response tier (collect, respond, script), or None without the role.
    tier: str | None = None
    mfa_enabled: bool = False
    mfa_verified: bool = False
    # True while the session may only set up a second factor.
    enrollment_only: bool = False
    external: bool = False
    organisation: str | None = None


class TokenCreate(_In):
    segment: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    uses: Annotated[int, Field(ge=1, le=100_000)] = 1
    expires_in_seconds: Annotated[int, Field(ge=60, le=365 * 86400)] = 86400


class TokenCreated(BaseModel):
    id: int
    token: str
    segment: str
    uses: int
    expires_at: datetime


class TokenOut(ViewOut):
    id: int
    segment: str
    max_uses: int
    uses: int
    expires_at: datetime
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None


class TokenRevoke(_In):
    # The token's number, or the token text itself; in the body, never in a URL, so a leaked
    # token being revoked is not written to access logs once more.
    token: Annotated[str, Field(min_length=1, max_length=1024)]


class HostOut(ViewOut):
    id: str
    hostname: str
    os_family: str
    os_name: str
    os_version: str
    addresses: list[str]
    segment: str
    online: bool
    last_seen: datetime | None
    agent_version: str
    enrolled_at: datetime
    boot_time: datetime | None
    revoked: bool
    response_disabled_locally: bool
    isolation: IsolationOut
    protocol_version: int | None = None
    # The platform node holding the agent's connection, on a platform of several nodes.
    node: str | None = None


SegmentName = Annotated[str, Field(min_length=1, max_length=64)]


class SegmentCreate(_In):
    name: SegmentName
    active_response: bool = False


class SegmentChange(_In):
    """Rename, switch Active Response, set four-eyes approval; at least one is given."""

    name: SegmentName | None = None
    active_response: bool | None = None
    # Which actions need a second person's approval (docs/adr/0039), and how long a request
    # may wait for one (5 minutes to 7 days).
    approval: Approval | None = None
    approval_timeout_seconds: Annotated[int, Field(ge=300, le=7 * 86400)] | None = None


class SegmentOut(ViewOut):
    name: str
    active_response: bool
    # Live hosts; revoked ones still in the segment are counted apart.
    hosts: int
    created_at: datetime
    approval: str = "off"
    approval_timeout_seconds: int = 86400
    revoked_hosts: int = 0


class HostMove(_In):
    segment: SegmentName


class ResponseAccessOut(BaseModel):
    allowed: bool


class PingRequest(_In):
    hosts: (
        Annotated[list[Annotated[str, Field(max_length=255)]], Field(max_length=100_000)] | None
    ) = None
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0


class PingOut(BaseModel):
    asked: int
    answered: int
    failed: dict[str, str]
    seconds: float
    round_trip_ms_p50: float | None
    round_trip_ms_max: float | None
    # Each answering host's round trip in milliseconds, by host id.
    round_trip_ms: dict[str, float]


class AuditRecordOut(BaseModel):
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    outcome: str
    source: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class VerifyOut(BaseModel):
    intact: bool
    records: int
    head_seq: int
    head_hash: str
    checkpoint_seq: int | None
    first_bad_seq: int | None
    problem: str
    # Genuine records that change how the log reads: a restore, a key rotation.
    notes: list[str] = []


class Problem(BaseModel):
    detail: str
