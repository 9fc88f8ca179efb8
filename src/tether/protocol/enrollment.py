"""Enrollment: the token an admin hands to an endpoint, and the request it makes with it.

The token is one copy-pasteable string holding everything a new endpoint needs: where the platform
is, the secret that authorises enrollment, and the SHA-256 fingerprint of the platform CA, which the
endpoint pins before it trusts anything the platform says.
"""

import base64
import binascii
import json
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.protocol.errors import ProtocolError
from tether.protocol.hostnames import Hostname
from tether.protocol.messages import AgentAddresses

TOKEN_PREFIX = "tether-enroll-v1."
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class InvalidEnrollmentToken(ProtocolError):
    """The string given as an enrollment token cannot be one."""


class EnrollmentToken(BaseModel):
    """The decoded content of an enrollment token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_url: Annotated[str, Field(pattern=r"^https://[^\s/]+(:\d+)?$", max_length=300)]
    agent_url: Annotated[str, Field(pattern=r"^wss://[^\s/]+(:\d+)?$", max_length=300)]
    secret: Annotated[str, Field(min_length=32, max_length=128)]
    ca_sha256: Annotated[str, Field(pattern=_FINGERPRINT.pattern)]

    def encode(self) -> str:
        """The single-line form printed to the admin."""
        raw = json.dumps(self.model_dump(), separators=(",", ":")).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> "EnrollmentToken":
        """Parse the printed form, raising InvalidEnrollmentToken with the reason."""
        text = text.strip()
        if not text.startswith(TOKEN_PREFIX):
            raise InvalidEnrollmentToken(
                f"This is not a Tether enrollment token (it should start with {TOKEN_PREFIX!r})."
            )
        body = text[len(TOKEN_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return cls.model_validate_json(raw)
        except (binascii.Error, ValueError, ValidationError) as exc:
            raise InvalidEnrollmentToken(
                "The enrollment token is damaged; copy it again in full."
            ) from exc


class EnrollRequest(BaseModel):
    """What an endpoint posts to `/api/v1/enroll`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: Annotated[str, Field(min_length=32, max_length=128)]
    csr_pem: Annotated[str, Field(min_length=100, max_length=8192)]
    hostname: Hostname
    # Set by agents that read `agent_addresses` in the answer (docs/adr/0049); older agents
    # refuse unknown fields there, so the platform sends the list only when this is true.
    reads_agent_addresses: bool = False


class EnrollResponse(BaseModel):
    """The platform's answer: the endpoint's identity and certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host_id: str
    certificate_pem: str
    ca_pem: str
    agent_url: str
    # Every agent port of the platform (wss://HOST:PORT), when the request asked for them.
    agent_addresses: AgentAddresses = ()
