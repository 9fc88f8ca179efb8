"""The rows scripts emit, as table columns and as a CSV file safe to open in a spreadsheet;
the web pages (`tether.server.web.row_export`) and `tether run --csv` both write it from here.

Row keys and values come from the endpoint. In a spreadsheet, a cell starting with = + - @ (or a
tab or carriage return, which some programs skip before looking for those) is a formula that can
run commands or leak data, so such cells get a leading apostrophe, which spreadsheets read as
"this is text" (OWASP's CSV injection advice). Keys are guarded the same way as values, and
so is the hostname (the endpoint names itself). Control characters and bidirectional overrides
are written as visible escapes first (`tether.protocol.text.readable`), so a cell cannot hide
a formula behind them nor read differently from what it is.
"""

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from tether.protocol.text import readable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
HOST_COLUMN = "host"


def cell_text(value: Any) -> str:
    """A row value as text: strings as they are, everything else as JSON (5, true, null)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def columns_of(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every key of `rows`, in the order they first appear."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


def guarded(text: str) -> str:
    """`text` made inert in a spreadsheet: unsafe characters escaped, then a leading
    apostrophe before a formula character."""
    text = readable(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def rows_csv(host_rows: Iterable[tuple[str, dict[str, Any]]]) -> str:
    """The CSV of (hostname, row) pairs: a host column first, then every key of every row."""
    pairs = list(host_rows)
    columns = columns_of(row for _, row in pairs)
    if HOST_COLUMN in columns:
        # A script emitting a "host" key keeps it; the host column stays the first one.
        columns.remove(HOST_COLUMN)
        header = [HOST_COLUMN, "row " + HOST_COLUMN, *columns]
        keys = [HOST_COLUMN, *columns]
    else:
        header = [HOST_COLUMN, *columns]
        keys = columns
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([guarded(h) for h in header])
    for hostname, row in pairs:
        cells = [cell_text(row[k]) if k in row else "" for k in keys]
        writer.writerow([guarded(hostname), *(guarded(c) for c in cells)])
    return out.getvalue()
