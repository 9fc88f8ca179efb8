"""First steps of a script's child process, before the script runs: tie its life to the agent.

Standard library only: it runs in the child, started by the agent's bootstrap line, and must not
slow the start or need what a script would not have (docs/adr/0031).

1. Linux: ask the kernel to SIGKILL this process when the agent dies (PR_SET_PDEATHSIG). The
   request only covers a parent that dies after it is made, so the parent is checked afterwards:
   if it is no longer the agent, the agent already died and the child leaves at once.
2. Wait for the agent's go on stdin: one byte, written once the agent has journaled this
   process (pid, group, create time; and on Windows, put it in the job object that dies with the
   agent). End of file instead means the agent died first: the child leaves without running
   anything, so a script the journal does not know about never runs.
3. Give the script an empty stdin, as before.
"""

import os
import sys

# What the agent writes to the child's stdin once the child is journaled: "start the script".
GO = b"1"
# Exit status of a child whose agent died before the script could start.
EXIT_AGENT_GONE = 75

# <sys/prctl.h>, and Linux's SIGKILL (the signal module has no SIGKILL on Windows).
_PR_SET_PDEATHSIG = 1
_SIGKILL = 9


def _die_with_parent() -> None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        # Without it the agent's next start still ends this tree from the journal.
        pass


def wait_for_agent(agent_pid: int) -> None:
    """Return once the agent says go; exit the process if the agent is already gone."""
    if sys.platform.startswith("linux"):
        _die_with_parent()
        if os.getppid() != agent_pid:
            os._exit(EXIT_AGENT_GONE)
    try:
        go = os.read(0, 1)
    except OSError:
        go = b""
    if go != GO:
        os._exit(EXIT_AGENT_GONE)
    devnull = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    os.dup2(devnull, 0)
    os.close(devnull)
