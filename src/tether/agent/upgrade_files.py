"""Where an upgraded agent lives in its state directory, and the files that say how a trial ends.

    <state>/upgrades/<version>/         an unpacked bundle (its `tether-agent` executable inside)
    <state>/upgrades/current            symbolic link to the version to run; absent: the package's
    <state>/upgrades/trial.json         a new version is on trial (job, versions, window, argv)
    <state>/upgrades/upgraded.json      the new version connected: the trial ended in its favour
    <state>/upgrades/rolled-back.json   it did not: the previous version runs again

A trial ends exactly once: the new agent claims it by renaming `trial.json` to `upgraded.json`,
the supervisor by renaming it to `rolled-back.json`; a rename either happens or finds the file
gone, so both can never win (docs/adr/0051). Standard library only: the supervisor imports this
and nothing heavy, since it stays resident beside the agent it watches.
"""

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# Set for the new version's process by the supervisor watching it: that process is the one on
# trial, and must neither hand off to another bundle nor start a supervisor of its own.
TRIAL_ENV = "TETHER_AGENT_TRIAL"
# Set once `run` handed off to the upgraded bundle, so that bundle never hands off again.
HANDED_OFF_ENV = "TETHER_AGENT_HANDED_OFF"
# How long a new version has to connect, in seconds (tests shorten it).
WINDOW_ENV = "TETHER_AGENT_UPGRADE_WINDOW"
# The platform's upgrade-signing public key, pinned at enrollment, in the state directory.
UPGRADE_KEY_FILE = "upgrade-key.pub"
EXECUTABLE = "tether-agent.exe" if sys.platform == "win32" else "tether-agent"


@dataclass(frozen=True)
class Trial:
    """A new version on trial: what the supervisor and both agents read."""

    job_id: str
    version: str
    previous: str
    # The executable that ran before (the package's or an earlier upgrade's): the rollback runs it.
    previous_executable: str
    # The `tether-agent` arguments the agent was started with (`run --state-dir ...`).
    run_args: list[str]
    window_seconds: float
    reason: str = ""


class UpgradeFiles:
    """The upgrades folder of one state directory."""

    def __init__(self, state_root: Path) -> None:
        self.root = state_root / "upgrades"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def trial_file(self) -> Path:
        return self.root / "trial.json"

    @property
    def upgraded_file(self) -> Path:
        return self.root / "upgraded.json"

    @property
    def rolled_back_file(self) -> Path:
        return self.root / "rolled-back.json"

    def version_dir(self, version: str) -> Path:
        return self.root / version

    def ensure(self) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)

    def current_executable(self) -> Path | None:
        """The upgraded bundle `current` names, if it is one; None runs the package's."""
        if not self.current.is_symlink():
            return None
        folder = self.current.resolve()
        # Only a bundle this agent unpacked into its own upgrades folder runs from here.
        if folder.parent != self.root.resolve():
            return None
        executable = folder / EXECUTABLE
        return executable if executable.is_file() else None

    def point_current_at(self, version: str | None) -> None:
        """Make `current` name `version` (None: remove it) in one rename, never half-done."""
        if version is None:
            with contextlib.suppress(FileNotFoundError):
                self.current.unlink()
            return
        staged = self.root / f".current-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        # Relative, so the state directory can be moved or restored from a backup whole.
        staged.symlink_to(version)
        os.replace(staged, self.current)

    def current_version(self) -> str | None:
        if not self.current.is_symlink():
            return None
        return os.readlink(self.current)

    def write_trial(self, trial: Trial) -> None:
        staged = self.trial_file.with_suffix(".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        descriptor = os.open(staged, flags, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(asdict(trial), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, self.trial_file)

    @staticmethod
    def _read(path: Path) -> Trial | None:
        try:
            data = json.loads(path.read_text())
            return Trial(
                job_id=str(data["job_id"]),
                version=str(data["version"]),
                previous=str(data["previous"]),
                previous_executable=str(data["previous_executable"]),
                run_args=[str(a) for a in data["run_args"]],
                window_seconds=float(data["window_seconds"]),
                reason=str(data.get("reason", "")),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def trial(self) -> Trial | None:
        return self._read(self.trial_file)

    def upgraded(self) -> Trial | None:
        return self._read(self.upgraded_file)

    def rolled_back(self) -> Trial | None:
        return self._read(self.rolled_back_file)

    def _claim(self, ending: Path) -> bool:
        try:
            os.rename(self.trial_file, ending)
        except FileNotFoundError:
            return False
        return True

    def claim_upgraded(self) -> bool:
        """The new version connected: end the trial in its favour, unless it already ended."""
        return self._claim(self.upgraded_file)

    def claim_rolled_back(self, reason: str) -> Trial | None:
        """End the trial as rolled back with `reason`; None if the new version won first."""
        trial = self.trial()
        if trial is None or not self._claim(self.rolled_back_file):
            return None
        ended = Trial(**{**asdict(trial), "reason": reason})
        staged = self.rolled_back_file.with_suffix(".tmp")
        staged.write_text(json.dumps(asdict(ended)))
        os.replace(staged, self.rolled_back_file)
        return ended

    def forget(self, ending: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            ending.unlink()
