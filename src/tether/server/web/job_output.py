"""One job's stored output as the pages show it: the text pieces in order, the rows as a table.

Shared by a script run's results (one section per host) and the job page.
"""

from dataclasses import dataclass

from tether.protocol import FINAL_STATES
from tether.server.services.jobs import JobView
from tether.server.services.platform import Platform
from tether.server.web.row_export import cell_text, columns_of

# What one look at a job reads: the page stays light while the CSV export has every row.
SHOWN_PIECES = 2000


@dataclass(frozen=True)
class ShownOutput:
    """A job with the first part of its output, ready for a template."""

    job: JobView
    # (stream, text) pieces of everything but rows, in order.
    text: list[tuple[str, str]]
    columns: list[str]
    rows: list[list[str]]
    truncated: bool

    @property
    def done(self) -> bool:
        return self.job.state in FINAL_STATES


async def shown_output(platform: Platform, job: JobView) -> ShownOutput:
    pieces = await platform.jobs.output(job.id, limit=SHOWN_PIECES)
    text = [(p.stream, p.text) for p in pieces if p.stream != "row" and p.text]
    fields = [p.fields or {} for p in pieces if p.stream == "row"]
    columns = columns_of(fields)
    rows = [[cell_text(f[c]) if c in f else "" for c in columns] for f in fields]
    return ShownOutput(job, text, columns, rows, truncated=len(pieces) >= SHOWN_PIECES)
