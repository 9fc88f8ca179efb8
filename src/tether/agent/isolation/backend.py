"""The interface every isolation backend implements, and how backends run their tools.

A backend owns one thing on the endpoint's firewall, its isolation rules, and offers three
operations on it: replace them atomically with a policy's rules, remove them whole, and say
whether (and how) they are there. The implementations sit beside this module: `nftables`, `iptables`,
`windows`.
"""

import asyncio
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Protocol

from tether.agent.errors import IsolationFailed
from tether.agent.isolation.policy import IsolationPolicy
from tether.agent.windows_tools import decode_native
from tether.protocol.isolation import Backend

# A firewall tool that has not answered in this long is stuck (a held xtables lock, say).
COMMAND_TIMEOUT_SECONDS = 30.0
# How much of a tool's own error message goes into the analyst's sentence.
MAX_TOOL_ERROR_CHARS = 300


class FirewallBackend(Protocol):
    """One way of enforcing an IsolationPolicy on this endpoint's firewall."""

    name: Backend

    async def apply(self, policy: IsolationPolicy) -> None:
        """Replace the isolation rules, if any, with `policy`'s; IsolationFailed when refused."""
        ...

    async def remove(self) -> None:
        """Remove the isolation rules whole; nothing happens when there are none."""
        ...

    async def installed(self) -> bool:
        """Whether the firewall holds isolation rules now."""
        ...

    async def listing(self) -> str | None:
        """The isolation rules as the firewall lists them now; None when there are none.

        Two listings are equal exactly when the rules are, so the Isolator notices rules that
        someone changed (an accept slipped in) as well as rules that are gone.
        """
        ...


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def first_error_line(text: str) -> str:
    """The first non-empty line of a tool's output, control characters escaped, clipped.

    It goes inside a one-line sentence the analyst reads, so it may not break that line.
    """
    line = next((candidate.strip() for candidate in text.splitlines() if candidate.strip()), "")
    # The caller ends the sentence.
    line = line.rstrip(".")
    escaped = line.encode("unicode_escape").decode("ascii")
    if len(escaped) > MAX_TOOL_ERROR_CHARS:
        escaped = escaped[: MAX_TOOL_ERROR_CHARS - 3] + "..."
    return escaped or "no error message"


def resolve_program(program: str) -> str:
    """The full path `program` is started from.

    A bare name is looked up on PATH on POSIX (never in the current directory); on Windows it
    is refused, because CreateProcess would look in the current directory first: Windows tools
    are named by full path (tether.agent.windows_tools).
    """
    if os.path.isabs(program):
        return program
    if sys.platform == "win32":
        raise IsolationFailed(f"The agent starts {program} only by its full path.")
    found = shutil.which(program)
    if found is None or not os.path.isabs(found):
        raise IsolationFailed(f"{program} is not installed on this endpoint.")
    return found


async def run_command(
    argv: list[str], stdin: str | None = None, timeout: float = COMMAND_TIMEOUT_SECONDS
) -> CommandResult:
    """Run a firewall tool without blocking the agent's event loop; never raises on exit status.

    Output is decoded as the tool writes it (the OEM code page on Windows, UTF-8 elsewhere).
    """
    program = resolve_program(argv[0])
    try:
        process = await asyncio.create_subprocess_exec(
            program,
            *argv[1:],
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise IsolationFailed(f"{argv[0]} is not installed on this endpoint.") from exc
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate(stdin.encode() if stdin is not None else None)
    except TimeoutError as exc:
        process.kill()
        await process.wait()
        raise IsolationFailed(f"{argv[0]} did not finish within {timeout:g} s.") from exc
    # communicate() returned, so the process has exited and has a status.
    status = process.returncode if process.returncode is not None else -1
    return CommandResult(status, decode_native(out), decode_native(err))


def tool_available(name: str) -> bool:
    return shutil.which(name) is not None
