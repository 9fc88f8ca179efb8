"""structlog, imported without rich's traceback renderer (import this before structlog).

structlog.dev imports `rich.traceback` (and with it Pygments) whenever rich is installed, to
pretty-print exceptions on a terminal. rich is installed for the CLI, so every agent paid about
2 MiB of resident memory for lexers it never used (docs/adr/0052). Hiding `rich.traceback` for
the moment structlog is first imported makes structlog fall back to plain tracebacks; the entry
is removed at once, so anything else may still import rich.traceback afterwards.
"""

import sys

if "structlog" not in sys.modules and "rich.traceback" not in sys.modules:
    sys.modules["rich.traceback"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich.traceback"]
