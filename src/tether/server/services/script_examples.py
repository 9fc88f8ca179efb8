"""Example scripts shipped with Tether, put into the library at platform start.

An example is a pair of files in one directory: `NAME.py` (the source) and `NAME.json`
({"name", "description", "parameters"}). Each is saved by "tether" only while no script of that
name exists, deleted ones included: a responder's edit or deletion is never undone by a restart.
"""

import json
import logging
from importlib import resources
from importlib.resources.abc import Traversable

from tether.server.errors import PlatformError
from tether.server.services.scripts import ScriptLibrary

log = logging.getLogger(__name__)

EXAMPLES_PACKAGE = "tether.script.examples"
EXAMPLES_ACTOR = "tether"
EXAMPLES_SOURCE = "platform start"


def shipped_examples() -> Traversable | None:
    """The directory of the shipped examples, or None when this install has none."""
    try:
        return resources.files(EXAMPLES_PACKAGE)
    except ModuleNotFoundError:
        return None


async def load_examples(library: ScriptLibrary, directory: Traversable) -> list[str]:
    """Save every example pair of `directory` whose name is not taken; returns the names saved.

    A broken example is logged and skipped: it must not keep the platform from starting.
    """
    loaded: list[str] = []
    entries = sorted(directory.iterdir(), key=lambda entry: entry.name)
    names = {entry.name for entry in entries}
    for meta in entries:
        if not meta.name.endswith(".json") or not meta.is_file():
            continue
        code_name = meta.name.removesuffix(".json") + ".py"
        if code_name not in names:
            continue
        try:
            spec = json.loads(meta.read_text(encoding="utf-8"))
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ValueError("it holds no script name")
            name = spec["name"]
            if await library.exists(name):
                continue
            _, created = await library.save(
                name,
                directory.joinpath(code_name).read_text(encoding="utf-8"),
                str(spec.get("description", "")),
                spec.get("parameters"),
                actor=EXAMPLES_ACTOR,
                source_addr=EXAMPLES_SOURCE,
            )
        except (OSError, ValueError, PlatformError) as exc:
            log.warning("Example script %s was not loaded: %s", meta.name, exc)
            continue
        if created:
            loaded.append(name)
    return loaded
