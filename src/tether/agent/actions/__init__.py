"""Action handlers, by the name declared in `tether.protocol.ACTIONS`.

Imported on first use, not at start-up: an idle agent never loads the script machinery, the
process walk or the transfer engine, which kept its resident memory megabytes higher than it
needed (docs/adr/0052). The first job of a kind pays the import once.
"""

import importlib
from collections.abc import Iterator, Mapping

from tether.agent.action import Handler

# Action name -> (module under tether.agent.actions, function).
WHERE: dict[str, tuple[str, str]] = {
    "system.noop": ("system", "noop"),
    "processes.list": ("processes", "list_processes"),
    "processes.kill": ("processes", "kill_processes"),
    "files.list": ("files", "list_files"),
    "files.hash": ("files", "hash_file"),
    "files.get": ("transfers", "get_file"),
    "files.put": ("transfers", "put_file"),
    "script.run": ("scripts", "run"),
    "isolation.isolate": ("isolation", "isolate"),
    "isolation.release": ("isolation", "release"),
    "isolation.status": ("isolation", "status"),
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
