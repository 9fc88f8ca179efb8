"""The agent bundle, built once per machine and source version (minutes cold, instant warm).

Builds go to $TETHER_BUNDLE_CACHE, else /var/cache/tether-tests/bundles (root) or the user's cache,
so CI and developers pay for a build only when the agent's sources or libraries change.
"""

import importlib.util
import os
from pathlib import Path

import pytest

from tether.packaging.bundle import Bundle, build_bundle


def tests_cache() -> Path:
    """Where the tests keep what is slow to make: bundles, the Debian root."""
    chosen = os.environ.get("TETHER_TEST_CACHE")
    if chosen:
        return Path(chosen)
    if os.geteuid() == 0:
        return Path("/var/cache/tether-tests")
    return Path.home() / ".cache" / "tether-tests"


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
    return build_bundle(bundle_cache())
