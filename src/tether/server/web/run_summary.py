"""The summary of a script run on many hosts: counts by state and one line per host.

A run on a device segment can reach hundreds of hosts; re-sending every host's output each
second (as the few-host page does) would grow with hosts x output. The summary reads no output
at all (one grouped count per job), and its poll carries a token naming what the browser
already shows: when nothing changed the answer is an empty 204, otherwise only the lines that
changed come back (htmx out-of-band swaps). A host's full output and rows are on its job page.
"""

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from tether.protocol import FINAL_STATES
from tether.server.services.jobs import BatchView, JobView
from tether.server.services.platform import Platform

# Tokens remembered (each maps a run's job ids to what their lines showed). A poll whose token
# was forgotten (another platform process, a restart, many open runs) simply gets every line.
SEEN_TOKENS = 64
_seen: OrderedDict[str, dict[str, str]] = OrderedDict()


@dataclass(frozen=True)
class HostLine:
    job: JobView
    pieces: int
    rows: int

    @property
    def fingerprint(self) -> str:
        """Everything the line shows; a change here is what makes the line be sent again."""
        job = self.job
        shown = (job.state, job.error or "", job.cancel_requested_by or "", self.pieces, self.rows)
        return hashlib.sha256(repr(shown).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSummary:
    lines: list[HostLine]
    # (state, how many jobs), states in a stable order.
    counts: list[tuple[str, int]]
    token: str

    @property
    def running(self) -> bool:
        return not all(line.job.state in FINAL_STATES for line in self.lines)


def _by_host(job: JobView) -> tuple[str, str]:
    return job.hostname, job.host_id


async def run_summary(platform: Platform, batch: BatchView) -> RunSummary:
    """The run's lines and the token for them, remembered so a later poll can send the diff."""
    tally = await platform.jobs.output_tally(batch.id)
    lines = [HostLine(job, *tally.get(job.id, (0, 0))) for job in sorted(batch.jobs, key=_by_host)]
    shown = {line.job.id: line.fingerprint for line in lines}
    counts = sorted(batch.counts.items())
    digest = hashlib.sha256(repr(counts).encode())
    for job_id, fingerprint in shown.items():
        digest.update(f"{job_id}:{fingerprint};".encode())
    token = digest.hexdigest()[:24]
    _seen[token] = shown
    _seen.move_to_end(token)
    while len(_seen) > SEEN_TOKENS:
        _seen.popitem(last=False)
    return RunSummary(lines, counts, token)


def changed_lines(summary: RunSummary, seen: str) -> list[HostLine]:
    """The lines that differ from what the token `seen` showed (all when it is unknown)."""
    before = _seen.get(seen)
    if before is None:
        return summary.lines
    return [line for line in summary.lines if before.get(line.job.id) != line.fingerprint]
