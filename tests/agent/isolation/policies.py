"""Sample policies the rule-generation tests share."""

import ipaddress

from tether.agent.isolation.policy import IsolationPolicy
from tether.protocol.isolation import AllowRule, IsolationMode

PLATFORM_V4 = ipaddress.IPv4Address("192.0.2.10")
PLATFORM_V6 = ipaddress.IPv6Address("2001:db8::10")


def policy(
    mode: IsolationMode = IsolationMode.OUTBOUND, *allow: AllowRule, v6: bool = True
) -> IsolationPolicy:
    platform = (PLATFORM_V4, PLATFORM_V6) if v6 else (PLATFORM_V4,)
    return IsolationPolicy(mode, platform, 8444, tuple(allow))
