"""Printing: rich tables for people, `--json` for scripts.

Anything an endpoint sent (process names, command lines, output, errors, row values) is hostile:
it passes through `plain` (one line) or `terminal_text` (streamed text) before it reaches a
terminal, so it cannot retitle the window, clear the screen, move the cursor or plant links.
"""

import json
import os
import re
import sys
from collections.abc import Collection, Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
errors = Console(stderr=True)


def emit_json(data: Any) -> None:
    """`data` as JSON for scripts: the same values, but every character a terminal or a reader
    could be fooled by (C1 controls, DEL, bidirectional overrides) written as a \\u escape,
    as JSON already writes C0 controls, so printing it is harmless and parsing it exact."""
    sys.stdout.write(json_text(json.dumps(data, indent=2, ensure_ascii=False)) + "\n")


def json_text(text: str) -> str:
    """JSON text with C1 controls, DEL and bidirectional overrides written as \\u escapes:
    the same values to a parser, nothing a terminal acts on."""
    return _JSON_UNSAFE.sub(_json_escape, text)


_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    truncate: Collection[str] = (),
) -> None:
    """Rows as a table; values are plain text (no markup, no control characters).

    Values of the columns named in `truncate` are cut with an ellipsis to what the terminal
    has left beside the other columns, instead of folding over many lines.
    """
    cells = [{key: _cell(row.get(key)) for key, _ in columns} for row in rows]
    widths = {
        key: max(cell_len(title), *(cell_len(c[key]) for c in cells)) for key, title in columns
    }
    # Each column costs three characters of border and padding, the table one more.
    natural = sum(widths.values()) + 3 * len(columns) + 1
    # Piped or redirected with no COLUMNS asked for: each row on one line at its natural width,
    # never folded at the 80 columns a terminal library assumes when it has no terminal.
    unbounded = not console.is_terminal and "COLUMNS" not in os.environ
    width = max(console.width, natural) if unbounded else console.width
    if truncate and cells:
        others = sum(w for key, w in widths.items() if key not in truncate)
        room = max(_MIN_TRUNCATED, width - others - 3 * len(columns) - 1)
        for c in cells:
            for key in truncate:
                if len(c[key]) > room:
                    c[key] = c[key][: room - 1] + "…"
    out = Table(show_header=True, header_style="bold")
    for _key, title in columns:
        out.add_column(title, overflow="fold")
    for c in cells:
        # Text, not str: a str cell is read as console markup, and "[link=...]" in a process
        # name would become a hyperlink.
        out.add_row(*(Text(c[key]) for key, _ in columns))
    # A console of that width for this table (rich never prints wider than its console).
    (Console(width=width) if unbounded else console).print(out)


_MIN_TRUNCATED = 16


# C0 controls, DEL and the C1 controls (0x9b alone is a CSI on some terminals), and the Unicode
# bidirectional overrides that make a hostname or a name read differently from what it is.
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_CONTROL = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0), *_BIDI], "?")
_STREAM_CONTROL = {c: r for c, r in _CONTROL.items() if chr(c) not in "\n\t"} | {ord("\r"): ""}
# Whole escape sequences, dropped rather than shown piecemeal: CSI (ESC [ or 0x9b ... final),
# OSC/DCS/APC/PM/SOS strings (up to BEL or ST), and two-character escapes.
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)


def plain(value: object) -> str:
    """Text safe for a terminal on one line: control characters (escape sequences, newlines)
    become '?'."""
    return str(value).translate(_CONTROL)


def terminal_text(text: str) -> str:
    """Streamed text safe for a terminal: escape sequences are removed, carriage returns
    dropped, other control characters become '?'; newlines and tabs stay."""
    return _ESCAPE.sub("", text).translate(_STREAM_CONTROL)


def one_line(value: object, width: int = 200) -> str:
    """Endpoint text squeezed into one short line (for errors in tables and summaries)."""
    text = " ".join(terminal_text(str(value)).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, dict):
        return plain(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return plain(value)
