"""The sentences a job ends with when the agent process stopped under it, defined once.

Each says what the agent knows and nothing more (docs/adr/0031): a script's process tree is
ended with its agent, so a script job is never called failed while its process works on; a job
that never started is never said to have not finished; and whether output was lost is said.
`stopped` is the agent's last sign of life, journaled every `ALIVE_SECONDS` while jobs run, or
None when the journal holds none (a journal from an older agent).
"""

from datetime import UTC, datetime

# While jobs run, the agent journals that it is alive this often; the time a crash is reported
# at is therefore at most this much earlier than the real moment.
ALIVE_SECONDS = 2.0


def _when(stopped: datetime | None) -> str:
    if stopped is None:
        return ""
    return f" at about {stopped.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def script_ended_with_agent(stopped: datetime | None) -> str:
    """The script's processes died with the agent (none was found alive at the next start)."""
    return (
        f"The agent stopped{_when(stopped)} while the script was running; the script was ended "
        "with it; output sent before then is kept."
    )


def script_survivors_ended(stopped: datetime | None, survivors: int, restarted: datetime) -> str:
    """Processes of the script outlived the agent and were ended when it started again."""
    return (
        f"The agent stopped{_when(stopped)} while the script was running; {survivors} of the "
        f"script's processes kept running until the agent started again at "
        f"{restarted.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC and ended them; output sent before "
        "the agent stopped is kept, later output is lost."
    )


def script_exited_unreported(stopped: datetime | None, exit_code: int) -> str:
    """The script ended by itself, but the agent stopped before it journaled the job's result."""
    return (
        f"The script ended with exit code {exit_code}, but the agent stopped{_when(stopped)} "
        "before it recorded the job's result; output sent before then is kept."
    )


def running_unknown(stopped: datetime | None) -> str:
    """A job without a process of its own (a transfer, a kill, isolation) was under way."""
    return (
        f"The agent stopped{_when(stopped)} while this job was running; whether it completed is "
        "unknown."
    )


def put_cut_short(stopped: datetime | None) -> str:
    """A file being deployed was still in its temporary file: the destination was not touched."""
    return (
        f"The agent stopped{_when(stopped)} while receiving the file; the partly received copy "
        "was removed and the destination was left as it was."
    )


def not_started_late(not_after: datetime) -> str:
    """A job journaled but not started came back to an agent past its not-after time."""
    return (
        "Not started: the agent stopped before it could start this job and was back only after "
        f"the job's not-after time ({not_after.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)."
    )
