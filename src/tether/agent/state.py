"""Where the agent keeps its identity, per operating system, and how it reads and writes it."""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tether.agent.errors import NotEnrolled
from tether.agent.state_guard import create_exclusive, secure_state_dir


def default_state_dir() -> Path:
    """`/var/lib/tether-agent` on Linux, `%ProgramData%\\Tether\\agent` on Windows."""
    if sys.platform == "win32":
        return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "Tether" / "agent"
    return Path("/var/lib/tether-agent")


@dataclass(frozen=True)
class Identity:
    """What enrollment produced: who this endpoint is and where its platform lives."""

    host_id: str
    server_url: str
    agent_url: str


class StateDir:
    """The files of one agent identity."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def secure(self, *, create: bool = True) -> "StateDir":
        """Refuse the directory if another account could touch it, and create it if missing
        unless told not to (tether.agent.state_guard); from then on `root` is its real path.
        Returns self."""
        self.root = secure_state_dir(self.root, create=create)
        return self

    @property
    def key(self) -> Path:
        return self.root / "agent.key"

    @property
    def cert(self) -> Path:
        return self.root / "agent.pem"

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def identity_file(self) -> Path:
        return self.root / "identity.json"

    @property
    def journal(self) -> Path:
        """The jobs this agent was given and the results it still owes (tether.agent.journal)."""
        return self.root / "journal.db"

    @property
    def response_switch(self) -> Path:
        """While this file exists, the agent refuses response actions (docs/adr/0009).

        The endpoint owner creates it (`touch`) to switch response actions off on this machine
        whatever the platform says, and removes it to hand the decision back to the platform.
        """
        return self.root / "disable-active-response"

    def response_disabled_locally(self) -> bool:
        return self.response_switch.exists()

    def is_enrolled(self) -> bool:
        return self.identity_file.is_file()

    def identity(self) -> Identity:
        try:
            data = json.loads(self.identity_file.read_text())
            return Identity(
                host_id=str(data["host_id"]),
                server_url=str(data["server_url"]),
                agent_url=str(data["agent_url"]),
            )
        except FileNotFoundError as exc:
            raise NotEnrolled(
                f"{self.root} holds no agent identity; run 'tether agent enroll' first."
            ) from exc
        except (OSError, ValueError, KeyError) as exc:
            raise NotEnrolled(f"{self.identity_file} is damaged; enroll this agent again.") from exc

    def write_private(self, path: Path, data: bytes) -> None:
        """Write a file only the agent's account can read (mode 0600 from its creation).

        The directory is checked first (`secure`); the temporary file is created exclusively,
        never through a name planted beforehand, then renamed over `path`. On Windows the state
        directory's DACL (SYSTEM and Administrators only, set by the agent when it created the
        directory and inherited by what it holds) protects it; the mode bits are ignored there.
        """
        self.secure()
        path = self.root / path.name
        tmp = path.with_name(path.name + ".tmp")
        create_exclusive(tmp, data)
        os.replace(tmp, path)

    @property
    def addresses_file(self) -> Path:
        """The platform's agent addresses as it last listed them (docs/adr/0049)."""
        return self.root / "platform-addresses.json"

    def agent_addresses(self, identity: Identity | None = None) -> list[str]:
        """The addresses to try, from enrollment or the latest welcome; the enrolled address
        alone when no list was ever given (or the file is damaged: it is only a hint)."""
        enrolled = (identity or self.identity()).agent_url
        try:
            stored = json.loads(self.addresses_file.read_text())
        except (OSError, ValueError):
            return [enrolled]
        if not isinstance(stored, list) or not stored:
            return [enrolled]
        addresses = [a for a in stored if isinstance(a, str) and a.startswith("wss://")]
        return addresses or [enrolled]

    def write_agent_addresses(self, addresses: list[str]) -> None:
        self.write_private(self.addresses_file, json.dumps(addresses, indent=2).encode())

    def write_identity(self, identity: Identity) -> None:
        self.write_private(self.identity_file, json.dumps(identity.__dict__, indent=2).encode())
