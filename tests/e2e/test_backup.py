"""Backup and restore with real processes: a backup taken while a script streams output, the
platform restored into a new directory and started there, the agent enrolled before the backup
reconnecting and running a new job, the one enrolled after it told to enroll again, and
`tether audit verify` intact, naming the restore and explaining the records the CLI's memory
saw that the restore took back."""

import json
import subprocess
from pathlib import Path

from tether.server.gateway.server import UNKNOWN_HOST

from .conftest import enrolled_agent, running_agent
from .harness import Children, Platform, tether_command, wait_for, wait_online

# Streams until the test says stop (a file beside it), so the backup surely runs mid-job.
TICKING = """
import pathlib, time
stop = pathlib.Path({stop!r})
i = 0
while not stop.exists() and i < 1200:
    print("tick", i, flush=True)
    i += 1
    time.sleep(0.1)
"""


def _server(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tether_command(), "server", *args],
        capture_output=True,
        text=True,
        env=platform.env,
        timeout=120,
        check=False,
    )


def test_backup_while_a_job_streams_then_restore_reconnect_and_verify(
    tmp_path: Path, children: Children
) -> None:
    platform = Platform(tmp_path / "p", children)
    platform.root.mkdir()
    platform.init()
    platform.start()
    admin = platform.login(tmp_path / "admin-cli")
    admin.ok("segment", "create", "ir")
    admin.ok("segment", "set", "ir", "--active-response", "on")
    before = running_agent(platform, admin, children, tmp_path / "before", segment="ir")
    script = tmp_path / "ticking.py"
    stop = tmp_path / "stop"
    script.write_text(TICKING.format(stop=str(stop)))
    streaming = admin.json("run", before.host_id, str(script), "--detach", "--json")
    job_id = streaming["jobs"][0]["id"]
    wait_for(
        lambda: admin.json("job", "show", job_id, "--json")["job"]["state"] == "running",
        timeout=30,
        what="the script to start",
    )

    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a long enough passphrase\n")
    archive = tmp_path / "platform.tbk"
    made = _server(
        platform, "backup", "--data", str(platform.data), "--output", str(archive),
        "--passphrase-file", str(passphrase),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "keys encrypted" in made.stdout
    assert "a long enough passphrase" not in made.stdout + made.stderr
    assert "a long enough passphrase" not in platform.log()
    head = int(made.stdout.split("audit head ")[1].split(",")[0])
    assert admin.json("job", "show", job_id, "--json")["job"]["state"] == "running"

    # Life goes on after the backup: the CLI remembers a checkpoint past its head, and a host
    # enrolls that the backup does not know.
    after = enrolled_agent(platform, admin, children, tmp_path / "after", segment="ir")
    assert admin.run("audit", "verify").returncode == 0
    remembered = json.loads(next((tmp_path / "admin-cli" / "audit-witness").iterdir()).read_text())
    assert remembered["checkpoint"]["seq"] > head
    # Restored while the old platform still runs (into a new directory, as after a lost
    # disk), so the agent's reconnect waits only for the switch-over.
    restored = tmp_path / "restored"
    done = _server(
        platform, "restore", str(archive), "--data", str(restored),
        "--passphrase-file", str(passphrase),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"the restore is record {head + 1}" in done.stdout
    assert platform.stop() == 0
    # The platform is lost mid-job: the script ends meanwhile, and the agent keeps its ending
    # in its journal for whichever platform it reaches next.
    stop.touch()
    platform.data = restored
    platform.start()
    with admin.api() as api:
        wait_online(api, before.host_id, timeout=30)
    # The job that was running at the backup ends on the restored platform.
    wait_for(
        lambda: admin.json("job", "show", job_id, "--json")["job"]["state"] == "succeeded",
        timeout=60,
        what="the job from before the backup to end",
    )
    quick = tmp_path / "quick.py"
    quick.write_text("print('after the restore')\n")
    ran = admin.run("run", before.host_id, str(quick), timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "after the restore" in ran.stdout

    # The host enrolled after the backup is told to enroll again, and stops.
    after.start()
    assert after.proc is not None
    assert after.proc.wait(30) != 0
    assert UNKNOWN_HOST in after.proc.output()

    verified = admin.run("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    said = " ".join(verified.stdout.split())
    assert said.startswith("Intact:")
    assert "the platform was restored from the backup taken at" in said
    assert f"(head {head}); records after {head} that a witness saw" in said
    assert "taken back by a restore" in said
