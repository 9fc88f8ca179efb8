"""docs/performance.md is shared: each benchmark owns one section between its own markers.

A benchmark rewrites its section and leaves the rest of the file (the other benchmarks' sections,
text written by hand outside any markers) as it was.
"""

import re
from pathlib import Path

TITLE = "# Performance\n\nTargets are the budget in DESIGN.md section 9. Each section below is written by the benchmark it names, from its latest real run; a run rewrites its own section only.\n"


def _markers(name: str, script: str) -> tuple[str, str]:
    return f"<!-- begin {name}: written by benchmarks/{script}.py -->", f"<!-- end {name} -->"


def write_section(report: Path, name: str, text: str, script: str | None = None) -> None:
    """Put `text` between the markers of section `name` in `report`, or append it if absent;
    `script` names the benchmark when it is not `name` (one script, several sections)."""
    begin, end = _markers(name, script or name)
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    current = report.read_text() if report.is_file() else TITLE
    pattern = re.compile(
        # The name and its colon, whichever script the marker names.
        re.escape(f"<!-- begin {name}:") + r"[^\n]*-->.*?" + re.escape(end) + r"\n?",
        re.DOTALL,
    )
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current, count=1)
    else:
        updated = current.rstrip() + "\n\n" + block
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(updated)
