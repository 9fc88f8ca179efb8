"""A real agent killed with SIGKILL while jobs run (docs/adr/0031): its scripts die with it and
the platform stores an ending that says so; a job delivered but not started runs once after."""

import signal
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from .conftest import running_agent
from .harness import Children, Cli, Platform, wait_for, wait_online
from .test_actions import finished, output, run

pytestmark = pytest.mark.e2e

# The agent runs this many jobs at once; one more waits, delivered, for a free slot.
SLOTS = 8


def last_alive(state_dir: Path) -> datetime:
    """The agent's last sign of life in its journal: the time its endings name."""
    with sqlite3.connect(state_dir / "journal.db") as db:
        row = db.execute("SELECT alive_at FROM life WHERE id = 1").fetchone()
    assert row is not None, "the agent journaled no sign of life while its jobs ran"
    return datetime.fromisoformat(row[0])


def stdout(api: object, job_id: str) -> str:
    return "".join(p["text"] or "" for p in output(api, job_id) if p["stream"] == "stdout")  # type: ignore[arg-type]


def test_scripts_die_with_a_killed_agent_and_a_job_never_started_runs_once_after(
    responding: tuple[Platform, Cli, Children], tmp_path: Path
) -> None:
    platform, admin, children = responding
    agent = running_agent(platform, admin, children, tmp_path / "victim", segment="ir")
    marker, counter = tmp_path / "marker", tmp_path / "counter"
    with admin.api() as api:
        worker = run(
            api,
            agent.host_id,
            "script.run",
            {
                "source": "import os, time\n"
                "print('pid', os.getpid(), flush=True)\n"
                "time.sleep(10)\n"
                f"open({str(marker)!r}, 'w').write('the script did its work')\n"
            },
        )
        fillers = [
            run(
                api,
                agent.host_id,
                "script.run",
                {"source": "import time\nprint('up', flush=True)\ntime.sleep(300)\n"},
            )
            for _ in range(SLOTS - 1)
        ]
        waiting = run(
            api,
            agent.host_id,
            "script.run",
            {"source": f"open({str(counter)!r}, 'a').write('ran\\n')\n"},
        )
        wait_for(
            lambda: (
                stdout(api, worker).endswith("\n")
                and all(stdout(api, f) == "up\n" for f in fillers)
            ),
            timeout=60,
            what="every slot's script to be running",
        )
        # The worker started before this moment, so a surviving one would write its marker
        # within 10 s of it: that, not 10 s from the kill, is how long the marker is watched.
        seen_running = time.monotonic()
        assert api.get(f"/jobs/{waiting}").json()["state"] == "delivered"
        script = psutil.Process(int(stdout(api, worker).split()[1]))
        assert not marker.exists(), "the machine was too slow to kill the agent in time"

        assert agent.proc is not None
        agent.proc.popen.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        # The script died with its agent: it never does the work it was waiting to do.
        wait_for(lambda: not script.is_running(), timeout=5, what="the script to die")
        wait_online(api, agent.host_id, online=False, timeout=30)
        time.sleep(max(0.0, seen_running + 11 - time.monotonic()))
        assert not marker.exists()
        # While the agent is away the platform has no ending to store yet.
        assert api.get(f"/jobs/{worker}").json()["state"] == "running"

        stopped = last_alive(agent.state_dir)
        agent.start()
        ended = (
            f"The agent stopped at about {stopped.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC while "
            "the script was running; the script was ended with it; output sent before then is "
            "kept."
        )
        for job_id in [worker, *fillers]:
            job = finished(api, job_id)
            assert (job["state"], job["error"]) == ("failed", ended)
        # What the scripts printed before the agent died is kept.
        assert stdout(api, worker) == f"pid {script.pid}\n"
        assert all(stdout(api, f) == "up\n" for f in fillers)
        # The job that was only delivered ran after the restart, exactly once.
        assert finished(api, waiting)["state"] == "succeeded"
        assert counter.read_text() == "ran\n"
        time.sleep(1)
        assert counter.read_text() == "ran\n"
        assert not marker.exists()
    # The analyst reads the same sentence from the CLI.
    assert ended in admin.ok("job", "show", worker)
