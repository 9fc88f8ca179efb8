"""Facts about this endpoint for the hello message (informational; identity is the certificate)."""

import ipaddress
import platform
import socket
import sys
from datetime import UTC, datetime
from typing import Literal

import psutil

from tether.agent.version import running_version
from tether.protocol import MAX_HOSTNAME, PROTOCOL_VERSION, Hello, OsInfo, safe_text

OsFamily = Literal["linux", "windows", "darwin", "other"]


def os_family() -> OsFamily:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "win32":
        return "windows"
    if sys.platform == "darwin":
        return "darwin"
    return "other"


def addresses(limit: int = 64) -> list[str]:
    """Non-loopback IPv4 and IPv6 addresses of every interface."""
    found: list[str] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = entry.address.split("%", 1)[0]
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            if not ip.is_loopback and text not in found:
                found.append(text)
    return found[:limit]


def hello(hostname: str | None = None) -> Hello:
    return Hello(
        protocol_version=PROTOCOL_VERSION,
        agent_version=running_version(),
        # Escaped: the platform refuses a hostname with control or bidi characters in it.
        hostname=safe_text(hostname or socket.gethostname(), MAX_HOSTNAME) or "unknown",
        os=OsInfo(
            family=os_family(),
            name=safe_text(platform.system(), 128),
            version=safe_text(platform.release(), 128),
        ),
        addresses=addresses(),
        boot_time=datetime.fromtimestamp(psutil.boot_time(), UTC),
    )
