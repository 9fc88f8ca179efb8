"""Checkpoints to a syslog collector over TCP or TLS: RFC 5424 messages, octet-counting framing
(RFC 6587 section 3.4.1, the framing RFC 5425 prescribes for TLS).

Each message carries the checkpoint twice: as structured data a SIEM indexes without parsing
(`[checkpoint@32473 seq= hash= signed_at= signature= key=]`) and, as the message, the JSON line
`tether audit verify --checkpoint` reads. 32473 is the enterprise number RFC 5612 sets aside for
examples; Tether has none of its own, and the SD-ID stays the same if it gets one.
"""

import asyncio
import os
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from tether.server.errors import ConfigurationError
from tether.server.services.checkpoints import Checkpoint, checkpoint_document, key_fingerprint

SD_ID = "checkpoint@32473"
APP_NAME = "tether"
MSG_ID = "checkpoint"
# Facility 13 (log audit), severity 6 (informational).
PRIORITY = 13 * 8 + 6
CONNECT_TIMEOUT_SECONDS = 10.0
BOM = "\ufeff"


@dataclass(frozen=True)
class SyslogTarget:
    """Where to send: `tcp://host:port` or `tls://host:port`."""

    tls: bool
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls' if self.tls else 'tcp'}://{host}:{self.port}"


def parse_syslog_target(url: str) -> SyslogTarget:
    """The collector named by `url`; ConfigurationError (one sentence) when it names none."""
    problem = ConfigurationError(
        f"{url!r} is not a syslog collector address like tls://siem.example:6514 or "
        "tcp://siem.example:601."
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise problem from exc
    if parts.scheme not in {"tcp", "tls"} or not parts.hostname or port is None:
        raise problem
    if parts.path not in {"", "/"} or parts.query or parts.username:
        raise problem
    return SyslogTarget(tls=parts.scheme == "tls", host=parts.hostname, port=port)


def collector_context(ca_file: Path | None) -> ssl.SSLContext:
    """TLS settings for a collector: the system's trust store, or only `ca_file` when the
    operator names the collector's CA; ConfigurationError (one sentence) when it is unusable."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"{ca_file} is not a readable CA certificate (PEM) for the syslog collector."
        ) from exc


def _sd_value(value: str) -> str:
    """A PARAM-VALUE with the three characters RFC 5424 section 6.3.3 says to escape."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str) -> str:
    """A header field: printable US-ASCII without spaces, "-" when there is nothing left."""
    kept = "".join(c for c in value if 33 <= ord(c) <= 126)
    return kept[:255] or "-"


def syslog_frame(checkpoint: Checkpoint, *, hostname: str, public_key_pem: str) -> bytes:
    """One RFC 5424 message for `checkpoint`, framed with its octet count."""
    stamp = datetime.fromisoformat(checkpoint.signed_at).isoformat().replace("+00:00", "Z")
    params = {
        "seq": str(checkpoint.seq),
        "hash": checkpoint.hash,
        "signed_at": checkpoint.signed_at,
        "signature": checkpoint.signature,
        "key": key_fingerprint(public_key_pem),
    }
    data = " ".join(f'{name}="{_sd_value(value)}"' for name, value in params.items())
    header = f"<{PRIORITY}>1 {stamp} {_header_field(hostname)} {APP_NAME} {os.getpid()} {MSG_ID}"
    document = checkpoint_document(checkpoint, public_key_pem, hostname)
    message = f"{header} [{SD_ID} {data}] {BOM}{document}".encode()
    return f"{len(message)} ".encode() + message


class SyslogSink:
    """One kept-open connection to a collector, opened again after any failure."""

    def __init__(
        self,
        target: SyslogTarget,
        *,
        hostname: str,
        public_key_pem: str,
        ca_file: Path | None = None,
    ) -> None:
        self.name = f"syslog {target}"
        self._target = target
        self._hostname = hostname
        self._public_key_pem = public_key_pem
        self._context = collector_context(ca_file) if target.tls else None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            return await asyncio.open_connection(
                self._target.host,
                self._target.port,
                ssl=self._context,
                server_hostname=self._target.host if self._context is not None else None,
            )

    async def send(self, checkpoint: Checkpoint) -> None:
        # A collector that closed its end shows it as end of file on our side: writing there
        # would seem to work and lose the message, so open a new connection instead.
        if self._writer is None or self._reader is None or self._reader.at_eof():
            await self.reset()
            self._reader, self._writer = await self._connect()
        frame = syslog_frame(
            checkpoint, hostname=self._hostname, public_key_pem=self._public_key_pem
        )
        self._writer.write(frame)
        await self._writer.drain()

    async def reset(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            except (OSError, TimeoutError, ssl.SSLError):
                pass
