"""A minimal Debian root without Python, made once per machine with debootstrap, used through an
overlay so each test gets a fresh copy in a fraction of a second.

The root is `debootstrap --variant=minbase --include=nftables bookworm` from the mirror apt uses
here: no Python at all, and nft, which the agent's isolation needs on a real endpoint too.
"""

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.conftest import cache_lock, tests_cache

RELEASE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = "nftables"


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "installing a package into a Debian root needs root"
    for tool in ("debootstrap", "dpkg-deb", "mount", "chroot"):
        if shutil.which(tool) is None:
            return f"installing a package into a Debian root needs {tool}"
    return None


def skip_unless_available() -> None:
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true: this test must run.", pytrace=False)
    pytest.skip(reason)


def cached_root() -> Path:
    """The pristine root, made now if this machine has none yet (about a minute)."""
    root = tests_cache() / f"{RELEASE}-minbase-{INCLUDE}"
    if (root / "usr" / "bin" / "dpkg").exists():
        return root
    with cache_lock("debian-root"):
        return _make_root(root)


def _make_root(root: Path) -> Path:
    if (root / "usr" / "bin" / "dpkg").exists():
        return root  # another worker made it while this one waited for the lock
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={INCLUDE}",
            RELEASE,
            str(partial),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    partial.rename(root)
    return root


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], capture_output=True, text=True, check=True)


@contextlib.contextmanager
def fresh_root(scratch: Path) -> Iterator[Path]:
    """A writable copy of the cached root (overlayfs) with /proc and /dev, unmounted afterwards."""
    lower = cached_root()
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "root"
    for path in (upper, work, merged):
        path.mkdir(parents=True)
    _mount(
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={lower},upperdir={upper},workdir={work}",
        str(merged),
    )
    mounted = [merged]
    try:
        _mount("-t", "proc", "proc", str(merged / "proc"))
        mounted.append(merged / "proc")
        _mount("--bind", "/dev", str(merged / "dev"))
        mounted.append(merged / "dev")
        yield merged
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
