"""`tether server join`: a new node of a platform from a copy of an existing node's data
directory (docs/adr/0050).

Nothing crosses the network: the operator copies the first node's data directory (or just the
files named in JOIN_FILES) to the new machine by whatever means they trust, and this makes a
data directory of the new node from it, with its own listen addresses and name. The new node
holds the same CA, server certificate, audit signing key and MFA sealing key as every other
node, so agents and analysts trust it, and it appends to the one audit chain in the database.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tether.server.config import CONFIG_FILE, Settings, settings_error
from tether.server.errors import ConfigurationError
from tether.server.services.backup_archive import KEY_FILES
from tether.server.services.pki import write_private
from tether.server.store.db import is_sqlite

# What a node needs of the platform: the secrets (mode 0600), the public certificates, the
# retired audit keys (so `audit verify` accepts records signed before a rotation), and the
# settings. The audit anchor is copied when present: a newer anchor only helps verification.
PUBLIC_FILES = ("ca.pem", "server.pem", "audit-keys-retired.json", "audit-anchor.json")
JOIN_FILES = (CONFIG_FILE, *PUBLIC_FILES, *KEY_FILES)
_REQUIRED = (CONFIG_FILE, "ca.pem", "server.pem", *KEY_FILES)
# Settings the new node takes from the command line, never from the copy (the file store's
# directory is kept: a shared mount usually has the same path on every node).
_OWN_SETTINGS = ("listen", "agent_listen", "node_name")


@dataclass(frozen=True)
class Joined:
    settings: Settings
    copied: list[str]


def join(source: Path, target: Path, **own: Any) -> Joined:
    """Make `target` the data directory of a new node of the platform whose data directory
    was copied to `source`; `own` holds this node's listen, agent_listen and node_name (None:
    the default) and file_store_dir (None: the copy's)."""
    source, target = source.resolve(), target.resolve()
    if source == target:
        raise ConfigurationError("Join from a copy of another node's data directory, not into it.")
    if (target / CONFIG_FILE).exists():
        raise ConfigurationError(f"{target} already holds a Tether platform; nothing was changed.")
    missing = [name for name in _REQUIRED if not (source / name).is_file()]
    if missing:
        raise ConfigurationError(
            f"{source} is not a copy of a node's data directory: {', '.join(missing)} missing."
        )
    try:
        stored = json.loads((source / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"Cannot read {source / CONFIG_FILE}: {exc}.") from exc
    if not isinstance(stored, dict):
        raise ConfigurationError(f"{source / CONFIG_FILE} is not a settings file.")
    stored.pop("role", None)
    for key in _OWN_SETTINGS:
        stored.pop(key, None)
    given = {k: v for k, v in own.items() if v is not None}
    try:
        settings = Settings(**{**stored, **given, "data_dir": target})
    except ValidationError as exc:
        raise settings_error(exc) from exc
    if is_sqlite(settings.db_url) or not settings.redis_url:
        raise ConfigurationError(
            f"The platform in {source} is a single node (it needs both a PostgreSQL "
            "database_url and a redis_url for others to join); see docs/operations.md."
        )
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    copied: list[str] = []
    for name in KEY_FILES:
        write_private(target / name, (source / name).read_bytes())
        copied.append(name)
    for name in PUBLIC_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(name)
    # Written last, as init does: its presence marks a complete data directory.
    keep = [k for k in stored if k in Settings.model_fields and k != "data_dir"]
    data = settings.model_dump(mode="json", include={*keep, *given})
    (target / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")
    copied.append(CONFIG_FILE)
    return Joined(settings, copied)
