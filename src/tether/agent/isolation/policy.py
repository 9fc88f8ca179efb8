"""What an isolation rule set says, independent of the firewall that enforces it.

The Isolator builds one `IsolationPolicy` from the analyst's mode and allowlist plus the platform
addresses it resolved; each backend (nftables, iptables, Windows Firewall) turns the same policy
into its own rules, so the three cannot disagree about what is allowed (docs/adr/0017).
"""

import ipaddress
from dataclasses import dataclass

from tether.protocol.isolation import AllowRule, IsolationMode

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# DHCP keeps the host's address (losing the lease would cut the platform off too). Client and
# server ports, IPv4 then IPv6; both are privileged, so an unprivileged implant cannot use them.
DHCP4_CLIENT, DHCP4_SERVER = 68, 67
DHCP6_CLIENT, DHCP6_SERVER = 546, 547


@dataclass(frozen=True)
class IsolationPolicy:
    """One isolation rule set: the mode, where the platform is, and the admin's allowlist."""

    mode: IsolationMode
    # The platform's addresses as resolved on the endpoint, and its agent port (TCP).
    platform: tuple[IPAddress, ...]
    platform_port: int
    allow: tuple[AllowRule, ...] = ()

    def __post_init__(self) -> None:
        if not self.platform:
            raise ValueError("An isolation policy needs at least one platform address.")
        if not 1 <= self.platform_port <= 65535:
            raise ValueError(f"{self.platform_port} is not a TCP port.")

    @property
    def platform_v4(self) -> tuple[ipaddress.IPv4Address, ...]:
        return tuple(a for a in self.platform if isinstance(a, ipaddress.IPv4Address))

    @property
    def platform_v6(self) -> tuple[ipaddress.IPv6Address, ...]:
        return tuple(a for a in self.platform if isinstance(a, ipaddress.IPv6Address))

    @property
    def inbound_open(self) -> bool:
        """Whether connections from anywhere may still reach the host (outbound mode)."""
        return self.mode is IsolationMode.OUTBOUND


def sorted_addresses(addresses: "list[IPAddress] | tuple[IPAddress, ...]") -> tuple[IPAddress, ...]:
    """Unique addresses, IPv4 first, each family in numeric order, so rule text is stable."""
    unique = set(addresses)
    return tuple(sorted(unique, key=lambda a: (a.version, int(a))))
