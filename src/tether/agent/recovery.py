"""At agent start, before anything else: end truthfully what a stopped agent process left.

A killed agent cannot report on its jobs, so its next start does, from the journal
(docs/adr/0031):
- a job delivered but not started stays delivered and runs, once, when the platform sends it
  again (the platform resends every unfinished job on connect, after the policy);
- a script job whose child was never told to start goes back to delivered, for the same reason:
  the script did not run;
- a script job whose child was journaled: whatever is left of its process tree is killed first
  (the child dies with the agent; processes it started may not), then the job ends failed with
  a sentence saying so;
- a `files.put` whose temporary file was still there ends saying the destination was left as
  it was (the file is renamed into place only once complete and verified);
- any other running job ends failed saying whether it completed is unknown: a transfer, a kill
  or an isolation change has no process of its own to ask.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from tether.agent import endings, script_process
from tether.agent.journal import Journal
from tether.agent.transfer import remove_leftover_partials
from tether.protocol import JobStatus
from tether.protocol.action_names import FILES_PUT, SCRIPT_RUN

log = logging.getLogger("tether.agent.recovery")

SCRIPT_ACTION = SCRIPT_RUN
PUT_ACTION = FILES_PUT


@dataclass(frozen=True)
class Recovery:
    """What the start found: jobs ended, jobs that will run when sent again, processes killed,
    jobs whose partly received files were removed."""

    ended: int = 0
    waiting: int = 0
    killed: int = 0
    partials_removed: int = 0


def _script_ending(
    journal: Journal, job_id: str, stopped: datetime | None, now: datetime
) -> tuple[str | None, int]:
    """Kill what is left of a script job's tree; its sentence (None: the script never started)
    and how many processes were killed."""
    record = journal.process_of(job_id)
    if record is None:
        return None, 0
    killed = script_process.kill_survivors(record)
    if killed:
        return endings.script_survivors_ended(stopped, killed, now), killed
    if record.exit_code is not None:
        return endings.script_exited_unreported(stopped, record.exit_code), 0
    return endings.script_ended_with_agent(stopped), 0


def recover(
    journal: Journal, now: datetime | None = None, keep: frozenset[str] = frozenset()
) -> Recovery:
    """End, or make ready to run, every job an earlier agent process left unfinished, except
    those in `keep` (an upgrade whose new version is on trial in this very process)."""
    now = now or datetime.now(UTC)
    stopped = journal.last_alive()
    unfinished = [job for job in journal.unfinished() if job.job_id not in keep]
    running = [job for job in unfinished if job.state == "running"]
    waiting = len(unfinished) - len(running)
    # Scripts first: no process of a stopped agent's job works on while the rest is decided.
    sentences: dict[str, str | None] = {}
    killed = 0
    for job in running:
        if job.action == SCRIPT_ACTION:
            sentences[job.job_id], job_killed = _script_ending(journal, job.job_id, stopped, now)
            killed += job_killed
    # Their temporary files are no longer anyone's; one still there was never put in place.
    cut_short = remove_leftover_partials(journal)
    ended = 0
    for job in running:
        if job.action == SCRIPT_ACTION:
            sentence = sentences[job.job_id]
        elif job.action == PUT_ACTION and job.job_id in cut_short:
            sentence = endings.put_cut_short(stopped)
        else:
            sentence = endings.running_unknown(stopped)
        if sentence is None:
            journal.back_to_delivered(job.job_id)
            waiting += 1
            continue
        journal.finish(JobStatus(job_id=job.job_id, state="failed", error=sentence))
        log.warning("Job %s (%s) ended at start: %s", job.job_id, job.action, sentence)
        ended += 1
    return Recovery(ended=ended, waiting=waiting, killed=killed, partials_removed=len(cut_short))
