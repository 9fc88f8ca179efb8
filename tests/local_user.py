"""An unprivileged local account, for the tests where another user on the endpoint is the attacker.

The account is made with `useradd` when missing (no home, no login shell) and its steps run
with `runuser -u NAME --`, as a real separate process. That needs root: without it the test is
skipped with the reason, except under CI=true, where it fails (CI runs as root).
"""

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

NAME = "tether-mallory"


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int

    def run(self, *command: str) -> None:
        """Run `command` as this user; it must succeed."""
        subprocess.run(["runuser", "-u", self.name, "--", *command], check=True, timeout=30)


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}. CI=true: the unprivileged-user tests must run.", pytrace=False)
    print(f"skipped: {reason}")
    pytest.skip(reason)


def other_user() -> LocalUser:
    """The unprivileged account `tether-mallory`, created if missing."""
    if os.geteuid() != 0:
        _skip_or_fail("acting as another local user needs root (useradd, runuser, chown)")
    for tool in ("useradd", "runuser"):
        if shutil.which(tool) is None:
            _skip_or_fail(f"{tool} is not installed")
    try:
        entry = pwd.getpwnam(NAME)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME],
            check=True,
            timeout=30,
        )
        entry = pwd.getpwnam(NAME)
    return LocalUser(NAME, entry.pw_uid, entry.pw_gid)


def shared_tmp() -> Path:
    """A fresh folder like /tmp (root's, sticky, writable by all) that every user can reach.

    pytest's own tmp_path sits below a root-only folder, which another user cannot enter.
    """
    folder = Path(tempfile.mkdtemp(prefix="tether-shared-", dir="/tmp"))
    os.chmod(folder, 0o1777)
    return folder
