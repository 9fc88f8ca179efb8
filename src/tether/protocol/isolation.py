"""Arguments and results of the isolation actions: `isolation.isolate`, `isolation.release`,
`isolation.status` (DESIGN.md section 5, docs/adr/0017).

The platform sends the mode and the admin-set allowlist; the agent adds the platform itself and
loopback, applies the rules atomically, tests its link to the platform through them and rolls
back when that test fails. Everything the agent reports is a fixed vocabulary or an address, so
a compromised endpoint cannot put free text into the inventory through these results.
"""

import ipaddress
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, field_validator

# At most this many allowlist entries: each becomes a rule, and Windows puts them all in one.
MAX_ALLOW_RULES = 256
MAX_PORTS_PER_RULE = 32

Port = Annotated[StrictInt, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IsolationMode(StrEnum):
    """How much of the network an isolated host keeps."""

    # All outbound traffic blocked except to the platform and the allowlist; inbound connections
    # still allowed, with their replies, so investigators and remote-desktop tools reach the host.
    OUTBOUND = "outbound"
    # New inbound connections blocked too; only the platform, loopback and the allowlist remain.
    FULL = "full"


class AllowRule(_Model):
    """One allowlist entry: a network, optionally only some TCP/UDP ports on it."""

    cidr: Annotated[str, Field(min_length=2, max_length=49)]
    # Empty: every port and protocol. Otherwise these TCP and UDP ports only.
    ports: Annotated[tuple[Port, ...], Field(max_length=MAX_PORTS_PER_RULE)] = ()

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not an IPv4 or IPv6 network such as 10.0.0.0/8."
            ) from exc

    @field_validator("ports")
    @classmethod
    def _sorted(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(set(value)))

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)


AllowList = Annotated[tuple[AllowRule, ...], Field(max_length=MAX_ALLOW_RULES)]


class IsolateArgs(_Model):
    """Arguments of `isolation.isolate`; isolating an isolated host replaces its rules."""

    mode: IsolationMode = IsolationMode.OUTBOUND
    allow: AllowList = ()


class ReleaseArgs(_Model):
    """Arguments of `isolation.release` and `isolation.status`: none."""


Backend = Literal["nftables", "iptables", "windows-firewall"]

# Why an agent reports its isolation on its own (`isolation.report`): a script changed it, the
# endpoint owner released it locally, re-asserting it failed, or the platform's allowlist changed
# while the host was isolated (re-applied, or refused on the endpoint with the reason).
ReportCause = Literal["script", "local", "reassert", "allowlist"]


class IsolationStatus(_Model):
    """What the endpoint's firewall holds now, as the agent found it."""

    isolated: bool
    mode: IsolationMode | None = None
    since: AwareDatetime | None = None
    backend: Backend | None = None
    # The platform addresses the rules let through, as resolved on the endpoint.
    platform: Annotated[tuple[Annotated[str, Field(max_length=45)], ...], Field(max_length=64)] = ()
    allow: AllowList = ()

    @field_validator("platform")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            ipaddress.ip_address(address)
        return value
