"""Tests that need root: real packets in network namespaces. This module builds the
namespaces: an endpoint, the outside, the platform.

    endpoint namespace --veth-- root namespace (the "platform" side: a platform process runs here)
           |
         veth
           |
    outside namespace (anywhere else on the network)

`topology(guest=True)` adds a "guest" namespace routed through the endpoint, as a container or a
VM on it would be. Addresses: `platform_v4/v6` (root side), `endpoint_v4/v6` (endpoint, platform
link), `endpoint_outside_v4/v6` and `outside_v4/v6` (the outside link), `guest_v4/v6`.

`topology()` builds it and always tears it down, also when the test fails. Names and the
root-side subnets are unique per process and topology (pid-based), so two test runs on one
machine never collide; the root namespace's firewall is never touched, and its only change is
one veth interface with a /30 and a /64 on it.

    with netns.topology() as net:
        server = net.listen(None, net.platform_v4)            # in the root namespace
        assert net.can_connect(net.endpoint, net.platform_v4, port_of(server))
        net.run(net.endpoint, "nft", "list", "ruleset")

Tests call `skip_unless_available()` (or use `unavailable()`): without root, `ip netns` or `nft`
they are skipped with the reason, except under CI=true, where they fail.
"""

import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import TypeVar

import pytest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

CLONE_NEWNET = 0x40000000
# Root-side /30s come from the shared address space (RFC 6598), rarely routed on test hosts;
# the outside link lives only between two private namespaces, so it can be fixed.
ROOT_POOL = ipaddress.IPv4Network("100.64.0.0/10")
OUTSIDE_V4 = ipaddress.IPv4Network("198.51.100.0/24")
OUTSIDE_V6 = ipaddress.IPv6Network("2001:db8:1::/64")
GUEST_V4 = ipaddress.IPv4Network("192.168.77.0/24")
GUEST_V6 = ipaddress.IPv6Network("2001:db8:2::/64")
_serial = count()


def unavailable() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"network namespace tests need {tool}"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


def skip_unless_available() -> None:
    """Skip the calling test with the reason, or fail it under CI=true, which must run it."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true: these tests must run.", pytrace=False)
    pytest.skip(reason)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _routed() -> list[ipaddress.IPv4Network]:
    routes = json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]")
    networks = []
    for route in routes:
        dst = route.get("dst", "")
        with contextlib.suppress(ValueError):
            networks.append(ipaddress.IPv4Network(dst if dst != "default" else "0.0.0.0/32"))
    return networks


def _root_subnet(key: int) -> ipaddress.IPv4Network:
    """A /30 from ROOT_POOL that no route of the root namespace overlaps, chosen by `key`."""
    blocks = ROOT_POOL.num_addresses // 4
    taken = _routed()
    for step in range(blocks):
        index = (key + step * 7919) % blocks
        candidate = ipaddress.IPv4Network((int(ROOT_POOL.network_address) + 4 * index, 30))
        if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
            return candidate
    raise RuntimeError("No free /30 in 100.64.0.0/10 for a test namespace.")


@dataclass
class Topology:
    """The namespaces and addresses of one topology; `None` as a namespace is the root one."""

    endpoint: str
    outside: str
    # The platform side: addresses of the root namespace on the endpoint's link.
    platform_v4: ipaddress.IPv4Address
    platform_v6: ipaddress.IPv6Address
    # The endpoint's addresses on that link, and on the outside link.
    endpoint_v4: ipaddress.IPv4Address
    endpoint_v6: ipaddress.IPv6Address
    endpoint_outside_v4: ipaddress.IPv4Address
    endpoint_outside_v6: ipaddress.IPv6Address
    # The outside namespace's addresses.
    outside_v4: ipaddress.IPv4Address
    outside_v6: ipaddress.IPv6Address
    # The root-side interface (deleted at teardown).
    root_link: str
    # With topology(guest=True): a namespace routed through the endpoint, as a container or VM
    # on it would be (the endpoint forwards; "outside" routes the guest's subnets back to it).
    guest: str | None = None
    guest_v4: ipaddress.IPv4Address | None = None
    guest_v6: ipaddress.IPv6Address | None = None
    _sockets: list[socket.socket] = field(default_factory=list)

    def exec_argv(self, namespace: str | None, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside `namespace` (`ip netns exec`, which also bind-mounts
        /etc/netns/NAMESPACE/* over /etc)."""
        return list(argv) if namespace is None else ["ip", "netns", "exec", namespace, *argv]

    def run(
        self, namespace: str | None, *argv: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside `namespace`; RuntimeError with its stderr when it fails."""
        result = subprocess.run(
            self.exec_argv(namespace, argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {namespace}: {result.stderr.strip()}")
        return result

    def nft_ruleset(self, namespace: str) -> str:
        return self.run(namespace, "nft", "list", "ruleset").stdout

    def hosts_file(self, namespace: str) -> Path:
        return Path("/etc/netns") / namespace / "hosts"

    def write_hosts(self, namespace: str, text: str) -> None:
        """Set /etc/hosts as processes in `namespace` see it.

        Written in place (same inode): a process already running under `ip netns exec` has the
        file bind-mounted and would never see a replaced one.
        """
        path = self.hosts_file(namespace)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            handle.seek(0)
            handle.truncate()
            handle.write(text)

    def socket_in(
        self, namespace: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A socket that lives in `namespace`, created from this process.

        A socket belongs to the namespace it was created in, whichever thread uses it later;
        a short-lived thread enters the namespace (setns affects only the calling thread) to
        create it. Closed at teardown if the test has not.
        """
        if namespace is None:
            created = socket.socket(family, kind)
        else:
            created = _in_namespace(namespace, lambda: socket.socket(family, kind))
        self._sockets.append(created)
        return created

    def listen(self, namespace: str | None, address: IPAddress, port: int = 0) -> socket.socket:
        """A TCP listener on `address` in `namespace` (port 0: any free port)."""
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        server = self.socket_in(namespace, family)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((str(address), port))
        server.listen(16)
        return server

    def connect(
        self, namespace: str | None, address: IPAddress, port: int, timeout: float = 1.0
    ) -> socket.socket:
        """A TCP connection from `namespace`; OSError (TimeoutError included) when refused."""
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        client = self.socket_in(namespace, family)
        client.settimeout(timeout)
        client.connect((str(address), port))
        return client

    def can_connect(
        self, namespace: str | None, address: IPAddress, port: int, timeout: float = 1.0
    ) -> bool:
        try:
            client = self.connect(namespace, address, port, timeout)
        except OSError:
            return False
        client.close()
        return True

    def pids(self, namespace: str) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", namespace, check=False).stdout.split()]


def _in_namespace(namespace: str, work: Callable[[], T]) -> T:
    """`work()` run in a thread that has entered `namespace`'s network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    outcome: list[T] = []
    failure: list[BaseException] = []

    def enter_and_work() -> None:
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
            finally:
                os.close(fd)
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=enter_and_work, name=f"netns {namespace}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


@contextlib.contextmanager
def topology(guest: bool = False) -> Iterator[Topology]:
    """Build the endpoint, outside and platform sides (and a guest behind the endpoint when
    asked); tear everything down afterwards."""
    pid = os.getpid()
    serial = next(_serial)
    tag = f"{pid:x}{serial:x}"
    endpoint, outside = f"tether-{pid}-{serial}-endpoint", f"tether-{pid}-{serial}-outside"
    root_link = f"tt{tag}p"
    subnet = _root_subnet(zlib.crc32(f"{pid}/{serial}".encode()))
    platform_v4, endpoint_v4 = subnet[1], subnet[2]
    v6 = ipaddress.IPv6Network(f"fd7e:{pid >> 16:x}:{pid & 0xFFFF:x}:{serial:x}::/64")
    platform_v6, endpoint_v6 = v6[1], v6[2]
    net = Topology(
        endpoint=endpoint,
        outside=outside,
        platform_v4=platform_v4,
        platform_v6=platform_v6,
        endpoint_v4=endpoint_v4,
        endpoint_v6=endpoint_v6,
        endpoint_outside_v4=OUTSIDE_V4[1],
        endpoint_outside_v6=OUTSIDE_V6[1],
        outside_v4=OUTSIDE_V4[2],
        outside_v6=OUTSIDE_V6[2],
        root_link=root_link,
    )
    if guest:
        net.guest = f"tether-{pid}-{serial}-guest"
        net.guest_v4, net.guest_v6 = GUEST_V4[2], GUEST_V6[2]
    try:
        for namespace in (endpoint, outside):
            _add_namespace(net, namespace)
        _ip("link", "add", root_link, "type", "veth", "peer", "name", "plat0", "netns", endpoint)
        _ip(
            "link",
            "add",
            "out0",
            "netns",
            endpoint,
            "type",
            "veth",
            "peer",
            "name",
            "out0",
            "netns",
            outside,
        )
        _ip("addr", "add", f"{platform_v4}/30", "dev", root_link)
        _ip("-6", "addr", "add", f"{platform_v6}/64", "dev", root_link, "nodad")
        _ip("link", "set", root_link, "up")
        for namespace, link, v4, v6_address in (
            (endpoint, "plat0", f"{endpoint_v4}/30", f"{endpoint_v6}/64"),
            (endpoint, "out0", f"{net.endpoint_outside_v4}/24", f"{net.endpoint_outside_v6}/64"),
            (outside, "out0", f"{net.outside_v4}/24", f"{net.outside_v6}/64"),
        ):
            _ip("-n", namespace, "addr", "add", v4, "dev", link)
            _ip("-n", namespace, "-6", "addr", "add", v6_address, "dev", link, "nodad")
            _ip("-n", namespace, "link", "set", link, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        if net.guest is not None:
            _add_guest(net)
        yield net
    finally:
        for sock in net._sockets:
            sock.close()
        for namespace in (endpoint, outside, *([net.guest] if net.guest else [])):
            # Only processes this test started can be in these namespaces.
            for process in net.pids(namespace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process, 9)
            _ip("netns", "del", namespace, check=False)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)
        _ip("link", "del", root_link, check=False)


def _add_guest(net: Topology) -> None:
    guest = net.guest
    if guest is None:
        return
    _add_namespace(net, guest)
    _ip(
        "link",
        "add",
        "guest0",
        "netns",
        net.endpoint,
        "type",
        "veth",
        "peer",
        "name",
        "guest0",
        "netns",
        guest,
    )
    for namespace, index in ((net.endpoint, 1), (guest, 2)):
        _ip("-n", namespace, "addr", "add", f"{GUEST_V4[index]}/24", "dev", "guest0")
        _ip("-n", namespace, "-6", "addr", "add", f"{GUEST_V6[index]}/64", "dev", "guest0", "nodad")
        _ip("-n", namespace, "link", "set", "guest0", "up")
    _ip("-n", guest, "link", "set", "lo", "up")
    _ip("-n", guest, "route", "add", "default", "via", str(GUEST_V4[1]))
    _ip("-n", guest, "-6", "route", "add", "default", "via", str(GUEST_V6[1]))
    _ip("-n", net.outside, "route", "add", str(GUEST_V4), "via", str(net.endpoint_outside_v4))
    _ip("-n", net.outside, "-6", "route", "add", str(GUEST_V6), "via", str(net.endpoint_outside_v6))
    for setting in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
        net.run(net.endpoint, "sysctl", "-q", "-w", setting)


def _add_namespace(net: Topology, namespace: str) -> None:
    _ip("netns", "add", namespace)
    # No duplicate address detection on links created here (link-local addresses included):
    # a tentative address cannot be used for a second or two, which made first packets flaky.
    for setting in ("net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0"):
        net.run(namespace, "sysctl", "-q", "-w", setting)
