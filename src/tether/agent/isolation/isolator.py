"""The Isolator: isolate, release, report and re-assert this endpoint's isolation.

Used by the isolation action handlers, by the agent at start and every
TETHER_ISOLATION_CHECK_SECONDS while it runs, and by the endpoint owner's local
`tether agent isolation` commands. One change at a time (a lock); every change that adds rules
is tested by connecting to the platform through them and rolled back when that fails, and only
a change that held is written to the state directory (docs/adr/0017).
"""

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from tether.agent.errors import IsolationFailed
from tether.agent.isolation.backend import FirewallBackend, tool_available
from tether.agent.isolation.iptables import IptablesBackend
from tether.agent.isolation.nftables import NftablesBackend
from tether.agent.isolation.policy import IPAddress, IsolationPolicy, sorted_addresses
from tether.agent.isolation.state import DesiredIsolation, IsolationStore
from tether.agent.isolation.windows import WindowsFirewallBackend
from tether.agent.state import StateDir
from tether.protocol.isolation import AllowRule, IsolationMode, IsolationStatus

log = logging.getLogger("tether.agent.isolation")

BACKEND_ENV = "TETHER_ISOLATION_BACKEND"
CHECK_SECONDS_ENV = "TETHER_ISOLATION_CHECK_SECONDS"
DEFAULT_CHECK_SECONDS = 60.0
# How long the self-test waits for the platform's port to answer through the new rules.
PROBE_TIMEOUT_SECONDS = 5.0
# IsolationStatus reports at most this many platform addresses; a name with more is unusual
# enough that the first ones (IPv4 first, in order) are the ones the rules allow.
MAX_PLATFORM_ADDRESSES = 64
# A name that does not resolve within this long is treated as unresolvable (DNS is usually
# blocked under isolation, and a blocked resolver only times out).
RESOLVE_TIMEOUT_SECONDS = 10.0

# (addresses, port, timeout) -> whether any address accepted a TCP connection.
Probe = Callable[[Sequence[IPAddress], int, float], Awaitable[bool]]


async def tcp_probe(addresses: Sequence[IPAddress], port: int, timeout: float) -> bool:
    """Whether a TCP connection to `port` on any of `addresses` opens within `timeout`."""

    async def connect(address: IPAddress) -> bool:
        try:
            async with asyncio.timeout(timeout):
                _reader, writer = await asyncio.open_connection(str(address), port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    tasks = [asyncio.create_task(connect(address)) for address in addresses]
    try:
        for finished in asyncio.as_completed(tasks):
            if await finished:
                return True
        return False
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def check_seconds_from_environment() -> float:
    """TETHER_ISOLATION_CHECK_SECONDS, read when the agent starts (default 60)."""
    raw = os.environ.get(CHECK_SECONDS_ENV)
    if raw is None:
        return DEFAULT_CHECK_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0.05 <= seconds <= 86400:
        raise ValueError(
            f"{CHECK_SECONDS_ENV}={raw!r} is not a number of seconds from 0.05 to 86400."
        )
    return seconds


def choose_backend(forced: str | None = None, state_dir: Path | None = None) -> FirewallBackend:
    """The firewall backend for this endpoint: Windows Firewall, else nftables, else iptables.

    `forced` ("nftables" or "iptables"; TETHER_ISOLATION_BACKEND when the agent starts) picks one
    of the Linux backends even when the other is there, for tests and odd hosts.
    """
    if sys.platform == "win32":
        return WindowsFirewallBackend(script_dir=state_dir)
    if forced not in (None, "", "nftables", "iptables"):
        raise IsolationFailed(f"{BACKEND_ENV} must be nftables or iptables, not {forced!r}.")
    if forced in (None, "", "nftables") and tool_available("nft"):
        return NftablesBackend()
    if forced in (None, "", "iptables") and tool_available("iptables-restore"):
        return IptablesBackend()
    if forced:
        raise IsolationFailed(
            f"{forced} is not installed on this endpoint, so it cannot be isolated."
        )
    raise IsolationFailed(
        "Neither nft nor iptables is installed on this endpoint, so it cannot be isolated."
    )


def check_privileges() -> None:
    """IsolationFailed unless the agent may change the firewall (root, or Administrator)."""
    if sys.platform == "win32":
        import ctypes

        if not ctypes.windll.shell32.IsUserAnAdmin():
            raise IsolationFailed(
                "The agent is not running as Administrator, so it cannot change the firewall."
            )
    elif os.geteuid() != 0:
        raise IsolationFailed("The agent is not running as root, so it cannot change the firewall.")


def platform_endpoint(agent_url: str) -> tuple[str, int]:
    """The platform's host name (or address) and agent port from the agent's WebSocket URL."""
    parts = urlsplit(agent_url)
    if not parts.hostname:
        raise IsolationFailed(f"The platform address {agent_url} names no host.")
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError as exc:
        raise IsolationFailed(f"The platform address {agent_url} has an invalid port.") from exc
    return parts.hostname, port


# Why the isolation changed: an isolation job (its result tells the platform) or a script.
ChangeCause = Literal["job", "script"]
OnChange = Callable[[IsolationStatus, ChangeCause, str | None], Awaitable[None]]


class Isolator:
    """This endpoint's isolation: one change at a time, tested, rolled back, remembered."""

    def __init__(
        self,
        state: StateDir,
        agent_url: str,
        *,
        backend: FirewallBackend | None = None,
        probe: Probe = tcp_probe,
        probe_timeout: float = PROBE_TIMEOUT_SECONDS,
        require_privileges: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`backend` None: chosen at first use (choose_backend with TETHER_ISOLATION_BACKEND),
        so an agent that is never isolated never looks for firewall tools."""
        self.store = IsolationStore(state)
        self._state_root = state.root
        self._host, self._port = platform_endpoint(agent_url)
        self._backend = backend
        self._probe = probe
        self._probe_timeout = probe_timeout
        self._require_privileges = require_privileges
        self._clock = clock
        self._lock = asyncio.Lock()
        # Told of every change this process makes, with its cause: the agent reports the ones
        # no isolation job reports (tether.agent.isolation_watch).
        self.on_change: OnChange | None = None
        # The platform's allowlist as its latest policy said: for isolation a script asks for
        # (isolation jobs carry their own copy).
        self.default_allow: tuple[AllowRule, ...] = ()
        # How the firewall listed the rules right after this process last applied them: a
        # different listing later means someone changed them.
        self._applied_listing: str | None = None

    def backend(self) -> FirewallBackend:
        """The backend in use; IsolationFailed when this endpoint cannot be isolated."""
        if self._require_privileges:
            check_privileges()
        if self._backend is None:
            self._backend = choose_backend(os.environ.get(BACKEND_ENV), self._state_root)
        return self._backend

    async def resolve_platform(self) -> tuple[IPAddress, ...]:
        """The platform's IPv4 and IPv6 addresses now; IsolationFailed when there are none."""
        try:
            return sorted_addresses([ipaddress.ip_address(self._host)])
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
                found = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise IsolationFailed(
                f"The platform's name {self._host} could not be resolved."
            ) from exc
        addresses = []
        for _family, _type, _proto, _name, sockaddr in found:
            text = str(sockaddr[0])
            # A link-local address needs its interface (fe80::1%eth0), which rules cannot name.
            if "%" not in text:
                addresses.append(ipaddress.ip_address(text))
        if not addresses:
            raise IsolationFailed(
                f"The platform's name {self._host} resolved to no usable address."
            )
        return sorted_addresses(addresses)[:MAX_PLATFORM_ADDRESSES]

    async def _addresses(self, last_known: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
        try:
            return await self.resolve_platform()
        except IsolationFailed as exc:
            if not last_known:
                raise
            # Under isolation the DNS server is usually out of reach: the addresses that
            # worked last time are the best knowledge there is.
            log.warning("%s Keeping the last known platform addresses.", exc)
            return last_known

    def _load_for_change(self) -> DesiredIsolation:
        try:
            return self.store.load()
        except IsolationFailed as exc:
            # An analyst's explicit change replaces a damaged file; nothing to keep from it.
            log.warning("%s It will be replaced.", exc)
            return DesiredIsolation()

    async def isolate(
        self,
        mode: IsolationMode,
        allow: tuple[AllowRule, ...] = (),
        *,
        cause: ChangeCause = "job",
        job_id: str | None = None,
    ) -> IsolationStatus:
        """Isolate the host (or replace its isolation), test the platform link, remember it.

        IsolationFailed, with the firewall as it was, when the rules cannot be applied or the
        platform cannot be reached through them.
        """
        status = await self._isolate(mode, allow)
        await self._changed(status, cause, job_id)
        return status

    async def _isolate(self, mode: IsolationMode, allow: tuple[AllowRule, ...]) -> IsolationStatus:
        async with self._lock, self.store.exclusive():
            backend = self.backend()
            desired = self._load_for_change()
            previous_policy = desired.policy()
            addresses = await self._addresses(previous_policy.platform if previous_policy else ())
            policy = IsolationPolicy(mode, addresses, self._port, tuple(allow))
            installed = await backend.installed()
            # Rolling back restores the rules in place, which are those last recorded; rules
            # present but never recorded (a lost state file) cannot be rebuilt and go.
            previous = previous_policy if installed else None
            await self._apply_tested(backend, policy, previous)
            since = desired.since if (desired.isolated and installed and desired.since) else None
            new = DesiredIsolation.isolated_by(policy, since or self._clock(), backend.name)
            try:
                self.store.save(new)
            except OSError as exc:
                # Unrecorded isolation would silently end at the next reboot.
                await self._roll_back(backend, previous)
                raise IsolationFailed(
                    f"The isolation could not be recorded in {self.store.path} ({exc.strerror}), "
                    "so it was rolled back and nothing changed."
                ) from exc
            log.info(
                "Isolated (%s mode, platform %s port %d, %d allowlist entries, %s)",
                mode.value,
                ", ".join(str(a) for a in addresses),
                self._port,
                len(policy.allow),
                backend.name,
            )
            return new.status(installed=True)

    async def release(
        self, *, cause: ChangeCause = "job", job_id: str | None = None
    ) -> IsolationStatus:
        """Remove the isolation rules whole and remember that; harmless when not isolated."""
        async with self._lock, self.store.exclusive():
            backend = self.backend()
            await backend.remove()
            self._applied_listing = None
            self.store.save(DesiredIsolation())
            log.info("Released from isolation (%s)", backend.name)
            status = IsolationStatus(isolated=False)
        await self._changed(status, cause, job_id)
        return status

    async def _changed(
        self, status: IsolationStatus, cause: ChangeCause, job_id: str | None
    ) -> None:
        if self.on_change is not None:
            await self.on_change(status, cause, job_id)

    async def status(self) -> IsolationStatus:
        """What the firewall holds now, with the mode and allowlist that were asked for."""
        async with self._lock, self.store.exclusive():
            backend = self.backend()
            desired = self.store.load()
            return desired.status(installed=await backend.installed())

    async def reassert(self) -> str:
        """Put the remembered isolation back if the firewall lost it or the platform moved.

        Called at agent start before connecting and periodically. Never raises: it returns (and
        logs) what it did. An isolated host stays isolated: when new rules fail their test, or
        the platform does not answer after a reboot, the last applied rules stay in force.
        """
        try:
            async with self._lock, self.store.exclusive():
                return await self._reassert()
        except IsolationFailed as exc:
            log.error("Isolation could not be re-asserted: %s", exc)
            return f"failed: {exc}"
        except Exception:
            log.exception("Isolation could not be re-asserted")
            return "failed"

    async def _reassert(self) -> str:
        desired = self.store.load()
        policy = desired.policy()
        if policy is None:
            return "not isolated"
        backend = self.backend()
        addresses = await self._addresses(policy.platform)
        # The agent URL's port too: re-enrolling with another platform port moves the platform.
        wanted = dataclasses.replace(policy, platform=addresses, platform_port=self._port)
        listing = await backend.listing()
        if wanted == policy:
            if listing is not None and listing == self._applied_listing:
                return "in place"
            await backend.apply(policy)
            self._applied_listing = await backend.listing()
            if (
                listing is not None
                and self._applied_listing is not None
                and listing == self._applied_listing
            ):
                # First look by this agent process: the rules were already exactly these.
                return "in place"
            what = "missing" if listing is None else "changed by someone else"
            if await self._reachable(policy):
                log.warning("Isolation rules were %s and are restored.", what)
                return "restored" if listing is None else "repaired"
            # After a reboot the network or the platform may not be up yet; the rules that
            # held when isolation was decided stay, and the next check resolves again.
            log.warning(
                "Isolation rules were %s and are restored; the platform does not answer yet.", what
            )
            return "restored, platform unreachable"
        log.warning(
            "The platform moved from %s port %d to %s port %d; applying new isolation rules.",
            ", ".join(str(a) for a in policy.platform),
            policy.platform_port,
            ", ".join(str(a) for a in addresses),
            self._port,
        )
        try:
            await self._apply_tested(backend, wanted, previous=policy)
        except IsolationFailed as exc:
            log.error("%s The previous isolation rules stay in force.", exc)
            return "kept previous rules"
        self.store.save(
            DesiredIsolation.isolated_by(wanted, desired.since or self._clock(), backend.name)
        )
        return "re-applied"

    async def adopt_allowlist(self, allow: tuple[AllowRule, ...]) -> str:
        """Take the platform's allowlist from its latest policy; an isolated host gets rules
        with it at once (tested, the previous rules kept when the test fails), so an admin's
        change reaches the hosts already isolated, not only later isolations.

        Never raises: returns (and logs) what it did, like `reassert`.
        """
        self.default_allow = tuple(allow)
        try:
            async with self._lock, self.store.exclusive():
                desired = self.store.load()
                policy = desired.policy()
                if policy is None or policy.allow == self.default_allow:
                    return "unchanged"
                backend = self.backend()
                wanted = dataclasses.replace(policy, allow=self.default_allow)
                await self._apply_tested(backend, wanted, previous=policy)
                self.store.save(
                    DesiredIsolation.isolated_by(
                        wanted, desired.since or self._clock(), backend.name
                    )
                )
        except IsolationFailed as exc:
            log.error("The new isolation allowlist could not be applied: %s", exc)
            return f"failed: {exc}"
        except Exception:
            log.exception("The new isolation allowlist could not be applied")
            return "failed"
        log.info(
            "Isolation rules re-applied with the platform's new allowlist (%d entries)",
            len(self.default_allow),
        )
        return "re-applied"

    async def _reachable(self, policy: IsolationPolicy) -> bool:
        return await self._probe(policy.platform, policy.platform_port, self._probe_timeout)

    async def _apply_tested(
        self, backend: FirewallBackend, policy: IsolationPolicy, previous: IsolationPolicy | None
    ) -> None:
        try:
            await backend.apply(policy)
        except Exception:
            # iptables applies IPv4 and IPv6 separately: one of them may hold the new rules.
            await self._roll_back(backend, previous)
            raise
        if await self._reachable(policy):
            self._applied_listing = await backend.listing()
            return
        await self._roll_back(backend, previous)
        shown = ", ".join(str(a) for a in policy.platform)
        raise IsolationFailed(
            f"The platform ({shown} port {policy.platform_port}) was unreachable through the "
            "new isolation rules, so they were rolled back and nothing changed."
        )

    async def _roll_back(self, backend: FirewallBackend, previous: IsolationPolicy | None) -> None:
        try:
            if previous is None:
                await backend.remove()
            else:
                await backend.apply(previous)
            self._applied_listing = await backend.listing()
            return
        except Exception:
            log.exception("Restoring the previous isolation rules failed; removing them all")
        # Never leave rules that were not tested: an unreachable agent cannot be released.
        try:
            await backend.remove()
        except Exception as exc:
            log.exception("Removing the isolation rules failed too")
            raise IsolationFailed(
                "The isolation rules could not be rolled back; check the host firewall by hand."
            ) from exc
