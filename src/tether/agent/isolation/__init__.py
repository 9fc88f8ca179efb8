"""Host isolation on the endpoint: policy, firewall backends, remembered state, the Isolator.

`backend` holds the interface; `nftables`, `iptables` and `windows` implement it; `isolator`
decides what to apply and when (docs/adr/0017).
"""

from tether.agent.isolation.backend import FirewallBackend
from tether.agent.isolation.iptables import IptablesBackend
from tether.agent.isolation.isolator import (
    Isolator,
    check_seconds_from_environment,
    choose_backend,
    tcp_probe,
)
from tether.agent.isolation.nftables import NftablesBackend
from tether.agent.isolation.policy import IsolationPolicy
from tether.agent.isolation.state import DesiredIsolation, IsolationStore
from tether.agent.isolation.windows import WindowsFirewallBackend

__all__ = [
    "DesiredIsolation",
    "FirewallBackend",
    "IptablesBackend",
    "IsolationPolicy",
    "IsolationStore",
    "Isolator",
    "NftablesBackend",
    "WindowsFirewallBackend",
    "check_seconds_from_environment",
    "choose_backend",
    "tcp_probe",
]
