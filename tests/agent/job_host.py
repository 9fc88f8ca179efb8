"""A stand-in agent process for the crash tests: the real job runner, journal and `script.run`
handler, fed jobs from the command line, writing every frame it would send to a file.

    python -m tests.agent.job_host STATE_DIR FRAMES_FILE SLOTS JOB_JSON...

SLOTS is how many jobs may run at once (the agent's is 8), so a test can keep one delivered.

It runs until killed; the tests kill it with SIGKILL, as a crash would.
"""

import asyncio
import json
import sys
from pathlib import Path

import tether.agent.jobs
from tether.agent.actions import HANDLERS
from tether.agent.gate import ResponseGate
from tether.agent.jobs import JobRunner
from tether.agent.journal import Journal
from tether.protocol import JobRequest, Policy


async def serve(state: Path, frames: Path, jobs: list[JobRequest]) -> None:
    gate = ResponseGate()
    gate.apply(Policy(segment="ir", active_response=True))
    runner = JobRunner(Journal(state / "journal.db"), HANDLERS, gate)
    alive = asyncio.create_task(runner.keep_alive())
    with frames.open("a", encoding="utf-8") as out:

        async def send(text: str) -> None:
            out.write(text + "\n")
            out.flush()

        await runner.attach(send)
        for job in jobs:
            await runner.on_job(job)
        await alive


def main() -> None:
    state, frames = Path(sys.argv[1]), Path(sys.argv[2])
    tether.agent.jobs.MAX_CONCURRENT_JOBS = int(sys.argv[3])
    jobs = [JobRequest.model_validate(json.loads(arg)) for arg in sys.argv[4:]]
    asyncio.run(serve(state, frames, jobs))


if __name__ == "__main__":
    main()
