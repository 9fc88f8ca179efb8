"""The isolation this endpoint should be in, kept in the agent's state directory.

Written after every change that succeeded and read at agent start, so isolation survives agent
restarts and reboots: the firewall forgets its rules at a reboot, this file does not. Written
atomically with mode 0600 (`StateDir.write_private`); only root / SYSTEM may change it.
"""

import asyncio
import contextlib
import ipaddress
import logging
import os
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from tether.agent.errors import IsolationFailed
from tether.agent.isolation.policy import IPAddress, IsolationPolicy, sorted_addresses
from tether.agent.state import StateDir
from tether.protocol.isolation import AllowList, Backend, IsolationMode, IsolationStatus

log = logging.getLogger("tether.agent.isolation")

FILE_NAME = "isolation.json"
LOCK_NAME = "isolation.lock"
# How often a waiting process looks whether the other one has finished its change.
LOCK_POLL_SECONDS = 0.05


class DesiredIsolation(BaseModel):
    """Isolated or not, and if so how; what the agent re-asserts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    isolated: bool = False
    mode: IsolationMode | None = None
    since: AwareDatetime | None = None
    allow: AllowList = ()
    # The platform addresses last applied: kept when the platform's name cannot be resolved
    # under isolation (its DNS server is usually outside the allowlist).
    platform: tuple[str, ...] = ()
    platform_port: Annotated[int, Field(ge=0, le=65535)] = 0
    backend: Backend | None = None

    @field_validator("platform")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # A hand-edited file with a bad address is damaged, not a crash at the next check.
        for address in value:
            ipaddress.ip_address(address)
        return value

    @classmethod
    def isolated_by(
        cls, policy: IsolationPolicy, since: datetime, backend: Backend
    ) -> "DesiredIsolation":
        return cls(
            isolated=True,
            mode=policy.mode,
            since=since,
            allow=policy.allow,
            platform=tuple(str(a) for a in policy.platform),
            platform_port=policy.platform_port,
            backend=backend,
        )

    def addresses(self) -> tuple[IPAddress, ...]:
        return sorted_addresses([ipaddress.ip_address(a) for a in self.platform])

    def policy(self) -> IsolationPolicy | None:
        """The rule set last applied, or None when not isolated or never applied."""
        if not self.isolated or self.mode is None or not self.platform:
            return None
        return IsolationPolicy(self.mode, self.addresses(), self.platform_port, self.allow)

    def status(self, installed: bool) -> IsolationStatus:
        """The wire status: `installed` is what the firewall holds, the rest what was asked."""
        if not installed:
            return IsolationStatus(isolated=False)
        return IsolationStatus(
            isolated=True,
            mode=self.mode,
            since=self.since,
            backend=self.backend,
            platform=self.platform,
            allow=self.allow,
        )


def _try_lock(fd: int) -> bool:
    """Take the lock on `fd` without waiting; False when another process holds it."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        # Windows releases a byte-range lock at close only eventually: release it now.
        os.lseek(fd, 0, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    # POSIX: closing the descriptor releases the flock.


class IsolationStore:
    """Reads and writes `isolation.json` in one agent state directory."""

    def __init__(self, state: StateDir) -> None:
        self._state = state

    @property
    def path(self) -> Path:
        return self._state.root / FILE_NAME

    def load(self) -> DesiredIsolation:
        """The stored state; not isolated when there is none; IsolationFailed when damaged."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return DesiredIsolation()
        except OSError as exc:
            raise IsolationFailed(f"{self.path} cannot be read ({exc.strerror}).") from exc
        try:
            return DesiredIsolation.model_validate_json(text)
        except ValidationError as exc:
            raise IsolationFailed(
                f"{self.path} is damaged, so the agent does not know whether this host should be isolated."
            ) from exc

    def save(self, desired: DesiredIsolation) -> None:
        self._state.write_private(self.path, desired.model_dump_json(indent=2).encode())

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the isolation lock of this state directory, shared with other processes.

        The agent and the owner's `tether agent isolation release` are two processes: without
        this, a release could land between the agent's apply and its write, and be undone.
        Polled with a non-blocking lock (flock; on Windows a byte-range lock on the first
        byte), so a cancelled wait leaves no thread holding a lock.
        """
        self._state.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Never through a link planted under the lock's name.
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(self._state.root / LOCK_NAME, flags, 0o600)
        try:
            # Another process holds it: nothing here can signal, so poll.
            while True:
                if _try_lock(fd):
                    break
                await asyncio.sleep(LOCK_POLL_SECONDS)
            try:
                yield
            finally:
                _unlock(fd)
        finally:
            os.close(fd)
