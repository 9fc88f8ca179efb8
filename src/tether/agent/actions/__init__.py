"""Action handlers, by the name declared in `tether.protocol.ACTIONS`.

Imported on first use, not at start-up: an idle agent never loads the script machinery, the
process walk or the transfer engine, which kept its resident memory megabytes higher than it
needed (docs/adr/0052). The first job of a kind pays the import once.
"""

import importlib
from collections.abc import Iterator, Mapping

from tether.agent.action import Handler
from tether.protocol.action_names import (
    FILES_GET,
    FILES_HASH,
    FILES_LIST,
    FILES_PUT,
    ISOLATION_ISOLATE,
    ISOLATION_RELEASE,
    ISOLATION_STATUS,
    PROCESSES_KILL,
    PROCESSES_LIST,
    SCRIPT_RUN,
    SYSTEM_NOOP,
)

# Action name -> (module under tether.agent.actions, function).
WHERE: dict[str, tuple[str, str]] = {
    SYSTEM_NOOP: ("system", "noop"),
    PROCESSES_LIST: ("processes", "list_processes"),
    PROCESSES_KILL: ("processes", "kill_processes"),
    FILES_LIST: ("files", "list_files"),
    FILES_HASH: ("files", "hash_file"),
    FILES_GET: ("transfers", "get_file"),
    FILES_PUT: ("transfers", "put_file"),
    SCRIPT_RUN: ("scripts", "run"),
    ISOLATION_ISOLATE: ("isolation", "isolate"),
    ISOLATION_RELEASE: ("isolation", "release"),
    ISOLATION_STATUS: ("isolation", "status"),
}


class LazyHandlers(Mapping[str, Handler]):
    """The handlers, each module imported when one of its actions is first asked for."""

    def __init__(self, where: Mapping[str, tuple[str, str]]) -> None:
        self._where = dict(where)
        self._loaded: dict[str, Handler] = {}

    def __getitem__(self, name: str) -> Handler:
        handler = self._loaded.get(name)
        if handler is None:
            module, function = self._where[name]
            found: Handler = getattr(
                importlib.import_module(f"tether.agent.actions.{module}"), function
            )
            handler = self._loaded[name] = found
        return handler

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


HANDLERS: Mapping[str, Handler] = LazyHandlers(WHERE)
