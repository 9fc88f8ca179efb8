"""The version this agent reports: the bundle's VERSION file, else the installed tether's.

A bundle built for an upgrade carries its version in `VERSION` beside the executable
(`tether agent upgrade-bundle --version`), so one build can be shipped as several versions and a
re-versioned bundle is the same code under another name (docs/adr/0051).
"""

import sys
from pathlib import Path

from tether import __version__
from tether.protocol.upgrade import VERSION_FILE, valid_version


def bundle_dir() -> Path | None:
    """The directory of the running bundle, or None outside a bundle (a virtualenv agent)."""
    if not getattr(sys, "frozen", False):
        return None
    return Path(sys.executable).resolve().parent


def running_version() -> str:
    """This agent's version, as the hello says it and upgrades compare it."""
    folder = bundle_dir()
    if folder is not None:
        try:
            text = (folder / VERSION_FILE).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return __version__
        if valid_version(text):
            return text
    return __version__
