"""Triage: a first look at an endpoint. One row per process started, and per file changed, in
the last `days` days, newest first; processes first, then files in the places where intruders
drop tools. Changes nothing.

The README's first script: `tether run HOST src/tether/script/examples/triage.py --param days=3`.
"""

import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import tether.script
from tether.script import row

PARAMS = ("days", "paths", "limit")
MAX_DAYS = 365
MAX_LIMIT = 5000
MAX_TEXT = 4096  # what one row field holds
# Where dropped tools and persistence usually land, when the caller names no directories
# (read only, so the shared temporary directories are no risk here).
DEFAULT_PATHS = (
    ["C:\\Windows\\Temp", "C:\\ProgramData", "C:\\Users\\Public"]
    if os.name == "nt"
    else ["/tmp", "/var/tmp", "/dev/shm", "/etc/cron.d", "/etc/systemd/system"]  # noqa: S108
)


def fail(sentence: str) -> NoReturn:
    """Stop the script with one sentence on stderr and exit code 1, no traceback."""
    sys.exit(sentence)


def read_params() -> tuple[int, list[str], int]:
    raw = tether.script.params
    if not isinstance(raw, dict):
        fail("The parameters must be an object.")
    unknown = sorted(set(raw) - set(PARAMS))
    if unknown:
        fail(f"Unknown parameter {unknown[0]!r}; expected {', '.join(PARAMS)}.")
    days = raw.get("days", 1)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        fail(f"Parameter 'days' must be a whole number from 1 to {MAX_DAYS}.")
    paths = raw.get("paths")
    if paths is None:
        chosen = [p for p in DEFAULT_PATHS if os.path.isdir(p)] or [tempfile.gettempdir()]
    elif isinstance(paths, str) and paths.strip():
        # One string, comma-separated, so `--param paths=/tmp,/opt` works from the CLI.
        chosen = [p.strip() for p in paths.split(",") if p.strip()]
    else:
        fail("Parameter 'paths' must be directories separated by commas.")
    for path in chosen:
        if not os.path.isabs(path):
            fail(f"Path {path!r} must be absolute.")
    limit = raw.get("limit", 500)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        fail(f"Parameter 'limit' must be a whole number from 1 to {MAX_LIMIT}.")
    return days, chosen, limit


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def recent_processes(since: float) -> list[dict[str, Any]]:
    found = []
    for process in tether.script.processes():
        started = process["create_time"]
        if started is None or started < since:
            continue
        found.append(
            {
                "kind": "process",
                "when": when(started),
                "pid": process["pid"],
                "name": process["name"],
                "user": process["username"],
                "path": process["exe"],
                "detail": " ".join(process["cmdline"] or [])[:MAX_TEXT],
                "_order": started,
            }
        )
    return found


def recent_files(paths: list[str], since: float, budget: int) -> list[dict[str, Any]]:
    """Files under `paths` changed since `since`; the walk stops after `budget` entries looked
    at, so a huge directory cannot keep the script running until its time limit."""
    found: list[dict[str, Any]] = []
    seen = 0
    for top in paths:
        if not os.path.isdir(top):
            tether.script.log(f"{top} is not a directory here; skipped.")
            continue
        for directory, subdirectories, names in os.walk(top, onerror=None):
            subdirectories.sort()
            for name in sorted(names):
                seen += 1
                if seen > budget:
                    tether.script.log(f"Stopped after looking at {budget} files.")
                    return found
                path = Path(directory, name)
                try:
                    info = path.lstat()
                except OSError:
                    continue
                changed = max(info.st_mtime, info.st_ctime)
                if changed < since:
                    continue
                found.append(
                    {
                        "kind": "file",
                        "when": when(changed),
                        "pid": None,
                        "name": name,
                        "user": None,
                        "path": str(path)[:MAX_TEXT],
                        "detail": f"{info.st_size} bytes, mode {oct(info.st_mode & 0o7777)}",
                        "_order": changed,
                    }
                )
    return found


def main() -> None:
    days, paths, limit = read_params()
    since = time.time() - days * 86400
    processes = sorted(recent_processes(since), key=lambda r: r["_order"], reverse=True)
    files = sorted(recent_files(paths, since, 50 * limit), key=lambda r: r["_order"], reverse=True)
    entries = processes + files
    for entry in entries[:limit]:
        entry.pop("_order")
        row(**entry)
    if len(entries) > limit:
        tether.script.log(f"Showing {limit} of {len(entries)} entries; raise limit for more.")
    print(
        f"{len(processes)} process(es) started and {len(files)} file(s) changed in the last "
        f"{days} day(s) under {', '.join(paths)}."
    )


if __name__ == "__main__":
    main()
