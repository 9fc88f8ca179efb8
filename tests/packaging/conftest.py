"""The agent bundle, built once per machine and source version (minutes cold, instant warm).

Builds go to $TETHER_BUNDLE_CACHE, else /var/cache/tether-tests/bundles (root) or the user's cache,
so CI and developers pay for a build only when the agent's sources or libraries change.
"""

import contextlib
import fcntl
import importlib.util
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import clean_env, tether_command
from tether.packaging.bundle import Bundle, build_bundle


def tests_cache() -> Path:
    """Where the tests keep what is slow to make: bundles, the Debian root."""
    chosen = os.environ.get("TETHER_TEST_CACHE")
    if chosen:
        return Path(chosen)
    if os.geteuid() == 0:
        return Path("/var/cache/tether-tests")
    return Path.home() / ".cache" / "tether-tests"


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """One maker at a time across test workers (pytest-xdist): the second waits, then finds the
    first's result in the cache instead of building the same thing beside it."""
    cache = tests_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def bundle_cache() -> Path:
    return Path(os.environ.get("TETHER_BUNDLE_CACHE") or tests_cache() / "bundles")


@pytest.fixture(scope="session")
def agent_bundle() -> Bundle:
    if importlib.util.find_spec("PyInstaller") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "PyInstaller is missing; CI=true: the bundle tests must run.", pytrace=False
            )
        pytest.skip("the agent bundle needs PyInstaller (pip install tether[platform])")
    with cache_lock("bundle"):
        return build_bundle(bundle_cache())


@pytest.fixture(scope="module")
def platform_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised platform data directory; packages need no running platform."""
    root = tmp_path_factory.mktemp("package-platform")
    done = subprocess.run(
        [
            *tether_command(),
            "server",
            "init",
            "--data",
            str(root / "data"),
            "--hostname",
            "platform.example",
            "--admin-password-file",
            str(root / "admin-password"),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return root / "data"
