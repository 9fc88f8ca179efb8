"""The agent's signed self-upgrade (`agent.upgrade`): what is signed, what is sent, how it ends.

The platform signs a short statement, never the bundle's bytes themselves: the purpose, the
version, the SHA-256 and the size of the bundle archive (`signed_statement`). The agent checks
that signature with the public key it learned at enrollment before it fetches a byte, then
checks the received archive against the SHA-256 and size the statement names (docs/adr/0051).
"""

import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# What the signature covers starts with this, so a signature made for anything else (an audit
# checkpoint, another format of this statement) never verifies as an upgrade.
PURPOSE = "tether-agent-upgrade-v1"
# A version names a directory on the endpoint: no separator, no leading dot, nothing unprintable.
VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}$"
_VERSION = re.compile(VERSION_PATTERN)
# The archive holds `tether-agent/` (the bundle directory) with this file in it.
VERSION_FILE = "VERSION"
BUNDLE_DIRECTORY = "tether-agent"
# How long a new version has to connect before its agent rolls back by itself.
DEFAULT_WINDOW_SECONDS = 60.0
# Ed25519: 32-byte public keys, 64-byte signatures, both carried as hex.
_HEX64 = r"^[0-9a-f]{64}$"
_HEX128 = r"^[0-9a-f]{128}$"

# The three endings of an upgrade job, as the platform records them.
Outcome = Literal["upgraded", "rolled back", "refused", "failed"]
# A rolled-back upgrade's error starts with this; a refusal's with REFUSED.
ROLLED_BACK = "Rolled back"
REFUSED = "Refused"


def valid_version(text: str) -> bool:
    """Whether `text` may be an agent version (it becomes a directory name on endpoints)."""
    return bool(_VERSION.match(text)) and ".." not in text


def signed_statement(version: str, sha256: str, size: int) -> bytes:
    """The exact bytes the upgrade signature covers."""
    body = {"purpose": PURPOSE, "sha256": sha256, "size": size, "version": version}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpgradeArgs(_Model):
    """Arguments of `agent.upgrade`: the bundle archive by SHA-256, its version, the signature."""

    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    sha256: Annotated[str, Field(pattern=_HEX64)]
    size: Annotated[StrictInt, Field(ge=1)]
    # Ed25519 over `signed_statement(version, sha256, size)`, by the platform's upgrade key.
    signature: Annotated[str, Field(pattern=_HEX128)]


class UpgradeResult(_Model):
    """An upgrade that took: the version now running (it connected) and the one before."""

    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    previous: Annotated[str, Field(max_length=64)]


def outcome_of(state: str, error: str | None) -> Outcome:
    """How an ended `agent.upgrade` job reads: upgraded, rolled back, refused, or failed."""
    if state == "succeeded":
        return "upgraded"
    text = error or ""
    if text.startswith(ROLLED_BACK):
        return "rolled back"
    if text.startswith(REFUSED):
        return "refused"
    return "failed"
