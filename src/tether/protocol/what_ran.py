"""What a job ran, in the words a responder typed or chose: `cat /etc/hosts`, `py 1 + 1`,
`script triage (depth=2)`, `files.list /var/log`, rather than the bare action name.

The Jobs and Host pages show it; a shell command is recognised only when its source is exactly
what the shell builds (protocol/shell.py), so a hand-written script cannot pose as a `cat`.
"""

from collections.abc import Mapping
from typing import Any

from tether.protocol.action_names import (
    AGENT_UPGRADE,
    FILES_GET,
    FILES_HASH,
    FILES_LIST,
    FILES_PUT,
    ISOLATION_ISOLATE,
    PROCESSES_KILL,
    PROCESSES_LIST,
    SCRIPT_RUN,
)
from tether.protocol.shell import cat_path_of, python_code_of

# Long enough for a path or a one-liner, short enough for a table cell.
MAX_CHARS = 160
# The argument each action is best known by, after the action's name.
_MAIN_ARGUMENT = {
    FILES_LIST: "path",
    FILES_GET: "path",
    FILES_PUT: "path",
    FILES_HASH: "path",
    PROCESSES_KILL: "pid",
    PROCESSES_LIST: "name",
    ISOLATION_ISOLATE: "mode",
    AGENT_UPGRADE: "version",
}


def what_ran(action: str, args: Mapping[str, Any] | None) -> str:
    """One line naming what the job ran, at most MAX_CHARS characters."""
    args = args or {}
    if action == SCRIPT_RUN:
        text = _script(args)
    else:
        main = args.get(_MAIN_ARGUMENT.get(action, ""))
        text = f"{action} {main}" if isinstance(main, str | int) and main != "" else action
    # One line: an endpoint path or a one-liner may hold a newline.
    text = " ".join(text.split())
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def _script(args: Mapping[str, Any]) -> str:
    source = args.get("source")
    if (path := cat_path_of(source)) is not None:
        return f"cat {path}"
    if (code := python_code_of(source)) is not None:
        return f"py {code}"
    name = args.get("name")
    named = f"script {name}" if isinstance(name, str) and name else "script (own source)"
    params = args.get("params")
    if isinstance(params, Mapping) and params:
        pairs = ", ".join(f"{key}={value}" for key, value in params.items())
        return f"{named} ({pairs})"
    return named
