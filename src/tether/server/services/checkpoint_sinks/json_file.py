"""Checkpoints appended to a file as JSON lines, for a SIEM agent that tails files (Filebeat,
Splunk's forwarder, Fluent Bit). Point it at a disk the platform host's owner cannot rewrite
unseen (a mount of another machine), or ship the file on as it grows."""

import asyncio
import os
from pathlib import Path

from tether.server.services.checkpoints import Checkpoint, checkpoint_document


class JsonFileSink:
    """Appends one line per checkpoint and flushes it to disk before counting it sent."""

    def __init__(self, path: Path, *, hostname: str, public_key_pem: str) -> None:
        self.name = f"file {path}"
        self._path = path
        self._hostname = hostname
        self._public_key_pem = public_key_pem

    def _append(self, line: bytes) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def send(self, checkpoint: Checkpoint) -> None:
        line = checkpoint_document(checkpoint, self._public_key_pem, self._hostname) + "\n"
        await asyncio.to_thread(self._append, line.encode())

    async def reset(self) -> None:
        """Nothing is kept open between lines."""
