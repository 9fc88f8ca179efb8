"""The new version's trial, watched from the old one, and the hand-off at every start.

After an upgrade the agent replaces itself (same process id, so systemd and whoever started it
keep watching the same process) with `tether-agent upgrade-trial STATE_DIR` of its OWN, known
good, bundle. That supervisor starts the new version's `run` as its child and waits:

- the new version connects and claims the trial (`upgraded.json`): the supervisor stays, a small
  parent passing signals on and leaving with the child's exit status, until the next restart;
- the child exits first, or the window (60 s) passes: the supervisor claims the trial as
  rolled back, kills the child, points `current` back, and replaces itself with the previous
  version's `run`, which ends the upgrade job "rolled back" when it starts.

At every start `run` first calls `hand_off`: when `current` names an upgraded bundle other than
the running one it replaces itself with that bundle's `run`; when a trial is still open (the
machine restarted during one) the previous version supervises it again from the start.

Standard library only, decided in `tether.agent.entry` before anything else is imported: the
supervisor stays resident and should cost little.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from tether.agent.upgrade_files import HANDED_OFF_ENV, TRIAL_ENV, Trial, UpgradeFiles

TRIAL_COMMAND = "upgrade-trial"
POLL_SECONDS = 0.2
# A child that will not die of SIGTERM within this long gets SIGKILL.
KILL_GRACE_SECONDS = 5.0


def replace_process(executable: str, argv: list[str]) -> NoReturn:
    """Become `executable` with `argv` (same process id); the arguments are our own, never a
    shell's, and the executable is a bundle this agent unpacked or was installed as."""
    os.execv(executable, argv)  # noqa: S606


def _running_executable() -> str:
    return str(Path(sys.executable).resolve())


def hand_off(state_root: Path, argv: list[str]) -> None:
    """Replace this process with the upgraded bundle or the open trial's supervisor, if any.

    Only a bundle hands off (a virtualenv agent is upgraded with pip); returns when nothing is
    to be done here. `argv` is this process's own (`tether-agent run ...`).
    """
    if not getattr(sys, "frozen", False) or sys.platform == "win32":
        return
    if os.environ.get(TRIAL_ENV) or os.environ.get(HANDED_OFF_ENV):
        return
    files = UpgradeFiles(state_root)
    trial = files.trial()
    if trial is not None and Path(trial.previous_executable).is_file():
        # The supervisor of this trial is gone (the machine restarted): watch it again.
        replace_process(
            trial.previous_executable,
            [trial.previous_executable, TRIAL_COMMAND, str(state_root)],
        )
    target = files.current_executable()
    if target is None or str(target.resolve()) == _running_executable():
        return
    os.environ[HANDED_OFF_ENV] = "1"
    replace_process(str(target), [str(target), *argv[1:]])


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _stay_with(child: subprocess.Popen[bytes]) -> int:
    """The trial ended in the new version's favour: be its parent until it exits."""
    while True:
        try:
            return child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue


def _roll_back(
    files: UpgradeFiles, trial: Trial, child: "subprocess.Popen[bytes] | None", reason: str
) -> bool:
    """Claim the trial as rolled back and put the previous version back; False when the new
    version claimed it first."""
    if files.claim_rolled_back(reason) is None:
        return False
    if child is not None:
        _stop(child)
    previous_dir = Path(trial.previous_executable).parent
    if previous_dir.parent.resolve() == files.root.resolve():
        files.point_current_at(previous_dir.name)
    else:
        # The previous version is the package's own bundle: no upgrade is current any more.
        files.point_current_at(None)
    return True


def _ending_reason(trial: Trial, child: "subprocess.Popen[bytes] | None", code: int | None) -> str:
    if child is None:
        return "could not be started from where it was unpacked"
    if code is None:
        return f"did not connect to the platform within {trial.window_seconds:g} s"
    return f"exited with status {code} before it connected"


def supervise(state_root: Path) -> int:
    """Run the trial of the version `current` names; returns an exit status or never returns."""
    if sys.platform == "win32":
        return 2
    files = UpgradeFiles(state_root)
    trial = files.trial()
    if trial is None:
        # Nothing on trial (it ended meanwhile): run as the agent.
        replace_process(sys.executable, [sys.executable, "run", "--state-dir", str(state_root)])
    target = files.current_executable()
    env = {**os.environ, TRIAL_ENV: trial.job_id}
    env.pop(HANDED_OFF_ENV, None)
    child: subprocess.Popen[bytes] | None = None
    if target is not None:
        try:
            child = subprocess.Popen([str(target), *trial.run_args], env=env)
        except OSError:
            child = None

    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        else:
            sys.exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    deadline = time.monotonic() + trial.window_seconds
    while True:
        if child is not None and not files.trial_file.exists():
            # The new version claimed the trial (it connected): this supervisor only stays.
            return _stay_with(child)
        code = child.poll() if child is not None else None
        if child is None or code is not None or time.monotonic() >= deadline:
            if not _roll_back(files, trial, child, _ending_reason(trial, child, code)):
                # The new version claimed the trial in the same instant.
                return _stay_with(child) if child is not None else 1
            if stopping:
                # Asked to stop during the trial: the previous version runs at the next start.
                return 128 + stopping[0]
            break
        time.sleep(POLL_SECONDS)
    # This process is the previous version: run it again, as the agent it was, no longer on trial.
    os.environ.pop(TRIAL_ENV, None)
    os.environ.pop(HANDED_OFF_ENV, None)
    replace_process(sys.executable, [sys.executable, *trial.run_args])


def main(argv: list[str]) -> None:
    """`tether-agent upgrade-trial STATE_DIR`."""
    sys.exit(supervise(Path(argv[0])))
