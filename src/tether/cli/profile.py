"""The CLI's config folder: server address, pinned CA and session, one identity per folder.

`TETHER_CONFIG_DIR` overrides the XDG default, so one person can keep several identities (an
admin and a responder, two platforms) side by side.
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tether.cli.errors import CliError


def config_dir() -> Path:
    explicit = os.environ.get("TETHER_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "Tether"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tether"


@dataclass(frozen=True)
class Profile:
    server: str
    ca_pem: str
    token: str | None
    username: str | None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` (mode 0600, in a folder of mode 0700), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if sys.platform != "win32":
        os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def load() -> Profile:
    path = config_dir() / "profile.json"
    try:
        data = json.loads(path.read_text())
        return Profile(
            server=str(data["server"]),
            ca_pem=str(data["ca_pem"]),
            token=data.get("token"),
            username=data.get("username"),
        )
    except FileNotFoundError as exc:
        raise CliError("Not logged in; run 'tether login --server URL --ca FILE' first.") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"{path} is damaged; run 'tether login' again.") from exc


def save(profile: Profile) -> None:
    write_private(config_dir() / "profile.json", json.dumps(profile.__dict__, indent=2))
