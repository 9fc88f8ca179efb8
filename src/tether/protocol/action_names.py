"""The name of every endpoint action, spelled once.

`tether.protocol.actions` declares each action under one of these names; everything else (the
agent's handler table, the shell, the platform's services, the CLI, the pages) refers to an
action through these constants, never through a string of its own, so a renamed or misspelled
action is an import error rather than a job no agent understands. A leaf module, so that the
modules `actions` itself uses (the shell's `cat`) can name actions without an import cycle.
tests/protocol/test_action_names.py fails on a literal action name anywhere else in src/.
"""

from typing import Final

SYSTEM_NOOP: Final = "system.noop"
PROCESSES_LIST: Final = "processes.list"
PROCESSES_KILL: Final = "processes.kill"
FILES_LIST: Final = "files.list"
FILES_HASH: Final = "files.hash"
FILES_GET: Final = "files.get"
FILES_PUT: Final = "files.put"
SCRIPT_RUN: Final = "script.run"
ISOLATION_ISOLATE: Final = "isolation.isolate"
ISOLATION_RELEASE: Final = "isolation.release"
ISOLATION_STATUS: Final = "isolation.status"
# Reserved: sent only by the upgrade service, which signs what it sends (docs/adr/0051).
AGENT_UPGRADE: Final = "agent.upgrade"
