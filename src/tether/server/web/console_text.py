"""A command's result as the web console prints it: plain text, never markup.

The console writes this text into xterm.js, which draws characters, not HTML; console.js still
strips terminal escape sequences from it, since an endpoint chose most of these strings.
"""

import json
from typing import Any


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _listing(result: dict[str, Any]) -> str:
    lines = [f"{result.get('path', '')}:"]
    for entry in result.get("entries", []):
        kind = {"dir": "d", "symlink": "l", "file": "-"}.get(entry.get("type"), "?")
        target = f" -> {entry['target']}" if entry.get("target") else ""
        lines.append(
            f"{kind} {_cell(entry.get('mode')):>4} {_cell(entry.get('owner')):<10} "
            f"{_cell(entry.get('size')):>12} {_cell(entry.get('mtime'))[:19]:<19} "
            f"{entry.get('name', '')}{target}"
        )
    if result.get("truncated"):
        lines.append("[the listing was cut short]")
    return "\n".join(lines)


def _processes(result: dict[str, Any]) -> str:
    lines = [f"{'PID':>7} {'PPID':>7} {'USER':<12} {'NAME':<20} COMMAND"]
    for p in result.get("processes", []):
        lines.append(
            f"{_cell(p.get('pid')):>7} {_cell(p.get('ppid')):>7} {_cell(p.get('user')):<12} "
            f"{_cell(p.get('name')):<20} {_cell(p.get('command_line'))}"
        )
    if result.get("truncated"):
        lines.append("[the list was cut short]")
    return "\n".join(lines)


def result_text(result: dict[str, Any] | None) -> str:
    """A directory listing or process list as columns, flat results as `key: value` lines,
    anything else as indented JSON."""
    if not result:
        return ""
    if isinstance(result.get("entries"), list) and "path" in result:
        return _listing(result)
    if isinstance(result.get("processes"), list):
        return _processes(result)
    if all(not isinstance(v, dict | list) for v in result.values()):
        return "\n".join(f"{key}: {_cell(value)}" for key, value in result.items())
    return json.dumps(result, indent=2, ensure_ascii=False)
