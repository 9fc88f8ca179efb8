"""Printing: rich tables for people, `--json` for scripts."""

import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
errors = Console(stderr=True)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Rows as a table; values are printed as plain text (markup off, endpoint data is hostile)."""
    out = Table(show_header=True, header_style="bold")
    for _key, title in columns:
        out.add_column(title, overflow="fold")
    for row in rows:
        out.add_row(*(_cell(row.get(key)) for key, _ in columns))
    console.print(out)


_CONTROL = dict.fromkeys([*range(0x20), 0x7F], "?")


def plain(value: object) -> str:
    """Text safe for a terminal: control characters (escape sequences) become '?'."""
    return str(value).translate(_CONTROL)


# Escape sequences whole (CSI, OSC up to its terminator, two-byte ESC x), then any other C0/C1
# control character but newline and tab.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[\x20-\x7e]?"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """Untrusted endpoint text made safe to print as it streams: terminal escape sequences,
    carriage returns and C0/C1 control characters are removed; newlines and tabs stay."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(plain(v) for v in value)
    return plain(value)
