"""Bodies of the team (users), second-factor and settings routes."""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from tether.protocol import Role
from tether.server.api.schemas import _In
from tether.server.api.view_out import ViewOut

Organisation = Annotated[str, Field(min_length=1, max_length=60)]


class MfaEnrollment(BaseModel):
    secret: str
    uri: str
    qr_svg: str


class MfaEnrollStart(_In):
    # The one-time code an admin issued; needed unless this session passed a second factor.
    enrollment_code: Annotated[str | None, Field(max_length=64)] = None


DEFAULT_CODE_HOURS = 24


class EnrollmentCodeRequest(_In):
    hours: Annotated[int, Field(ge=1, le=168)] = DEFAULT_CODE_HOURS


class EnrollmentCodeOut(ViewOut):
    username: str
    # Shown once: only its hash is kept.
    code: str
    expires_at: datetime


class MfaConfirm(_In):
    code: Annotated[str, Field(pattern=r"^[0-9]{6}$")]


class RecoveryCodes(BaseModel):
    # Shown once: only their hashes are kept.
    recovery_codes: list[str]


class UserCreate(_In):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    roles: Annotated[list[Role], Field(max_length=len(Role))] = []
    external: bool = False
    organisation: Organisation | None = None
    access_expires_at: datetime | None = None


class ExternalUpdate(_In):
    external: bool
    organisation: Organisation | None = None
    access_expires_at: datetime | None = None


class UserOut(ViewOut):
    username: str
    roles: list[str]
    disabled: bool
    external: bool
    organisation: str | None
    access_expires_at: datetime | None
    mfa_enabled: bool
    created_at: datetime


class SettingsOut(ViewOut):
    mfa_required_for_everyone: bool
    external_access_suspended: bool


class SettingsUpdate(_In):
    mfa_required_for_everyone: bool | None = None
    external_access_suspended: bool | None = None


class AgentAddressesBody(_In):
    """The agent ports agents may dial, HOST:PORT each (docs/adr/0049); empty: the agent
    port's own address."""

    addresses: Annotated[list[Annotated[str, Field(max_length=300)]], Field(max_length=64)]


class AgentAddressesOut(BaseModel):
    addresses: list[str]
    # What agents are told now: the list as URLs, or the agent port's own address.
    agents_dial: list[str]
