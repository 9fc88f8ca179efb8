"""Admits agents on the agent port and runs each connection's read loop.

Chain verification happens in the TLS handshake (a certificate from another CA, an expired one or
none at all never reaches this code); revocation and unknown serials are decided here, against
the hosts table, and audited.
"""

import asyncio
import logging
import ssl
from typing import Any

from cryptography import x509
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tether.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    CloseCode,
    Heartbeat,
    Hello,
    JobStatus,
    ProtocolError,
    Welcome,
    parse_agent_message,
)
from tether.server.gateway.connection import AgentConnection
from tether.server.services.audit import AuditLog
from tether.server.services.hosts import CertificateStatus, Hosts
from tether.server.services.presence import Presence
from tether.server.store.db import utcnow

log = logging.getLogger(__name__)


def agent_ssl_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS for the agent port: our server certificate, client certificates from our CA only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cafile=ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "unknown"


def _peer_serial(ws: ServerConnection) -> str | None:
    ssl_object = ws.transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        return None
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


class AgentGateway:
    """The agent-facing WebSocket server."""

    def __init__(
        self,
        *,
        hosts: Hosts,
        presence: Presence,
        audit: AuditLog,
        heartbeat_seconds: int,
        hello_timeout: float,
    ) -> None:
        self._hosts = hosts
        self._presence = presence
        self._audit = audit
        self._heartbeat = heartbeat_seconds
        self._hello_timeout = hello_timeout

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> Server:
        return await serve(
            self.handle,
            host,
            port,
            ssl=context,
            compression=None,  # deflate made bulk transfer 20x slower (DESIGN.md section 4)
            max_size=MAX_FRAME_BYTES,
            max_queue=16,
            # Agents ping; the platform only answers. Silence is caught by the read timeout.
            ping_interval=None,
            open_timeout=15,
            close_timeout=2,
            server_header=None,
        )

    async def _refuse(
        self,
        ws: ServerConnection,
        code: CloseCode,
        reason: str,
        *,
        target: str,
        details: dict[str, Any],
    ) -> None:
        await self._audit.record(
            "agent.connect",
            actor="endpoint",
            target=target,
            outcome="failure",
            source=_peer(ws),
            details={"reason": reason, **details},
        )
        log.warning("Refused agent %s: %s", _peer(ws), reason)
        await ws.close(int(code), reason)

    async def handle(self, ws: ServerConnection) -> None:
        serial = _peer_serial(ws)
        status = await self._hosts.certificate_status(serial) if serial else None
        if status is None:
            await self._refuse(
                ws,
                CloseCode.UNKNOWN_CERTIFICATE,
                "This certificate does not belong to any enrolled host.",
                target=f"cert:{serial}",
                details={"cert_serial": serial},
            )
            return
        if status.revoked:
            await self._refuse(
                ws,
                CloseCode.REVOKED,
                "This host's certificate was revoked.",
                target=f"host:{status.host_id}",
                details={"cert_serial": serial, "hostname": status.hostname},
            )
            return
        hello = await self._read_hello(ws, status)
        if hello is None:
            return
        await self._hosts.record_hello(status.host_id, hello)
        link = AgentConnection(status.host_id, ws)
        replaced = self._presence.attach(link)
        if replaced is not None:
            await replaced.disconnect(CloseCode.REPLACED, "A newer connection from this host.")
        try:
            await ws.send(
                Welcome(
                    host_id=status.host_id,
                    server_time=utcnow(),
                    heartbeat_seconds=self._heartbeat,
                ).model_dump_json()
            )
            log.info("Agent %s (%s) connected from %s", hello.hostname, status.host_id, _peer(ws))
            await self._read_loop(ws, link, status)
        except ConnectionClosed:
            pass
        finally:
            self._presence.detach(link)
            link.fail_pending("The agent disconnected before answering.")
        await self._audit_bad_close(ws, status)

    async def _read_hello(self, ws: ServerConnection, status: CertificateStatus) -> Hello | None:
        target = f"host:{status.host_id}"
        try:
            async with asyncio.timeout(self._hello_timeout):
                frame = await ws.recv()
            message = parse_agent_message(frame)
        except TimeoutError:
            await self._refuse(
                ws, CloseCode.HELLO_TIMEOUT, "No hello arrived in time.", target=target, details={}
            )
            return None
        except ProtocolError as exc:
            await self._refuse(ws, CloseCode.BAD_FRAME, str(exc), target=target, details={})
            return None
        except ConnectionClosed:
            await self._audit_bad_close(ws, status)
            return None
        if not isinstance(message, Hello):
            await self._refuse(
                ws,
                CloseCode.BAD_FRAME,
                f"The first message must be a hello, not {message.type}.",
                target=target,
                details={},
            )
            return None
        if message.protocol_version != PROTOCOL_VERSION:
            await self._refuse(
                ws,
                CloseCode.UNSUPPORTED_VERSION,
                f"This platform speaks protocol version {PROTOCOL_VERSION}, "
                f"not {message.protocol_version}; upgrade the agent.",
                target=target,
                details={"protocol_version": message.protocol_version},
            )
            return None
        return message

    async def _read_loop(
        self, ws: ServerConnection, link: AgentConnection, status: CertificateStatus
    ) -> None:
        # Three missed heartbeats and the agent is considered gone.
        silence = self._heartbeat * 3 + 5
        while True:
            try:
                async with asyncio.timeout(silence):
                    frame = await ws.recv()
            except TimeoutError:
                await ws.close(int(CloseCode.IDLE), "No heartbeat; reconnect.")
                return
            try:
                message = parse_agent_message(frame)
            except ProtocolError as exc:
                await self._refuse(
                    ws, CloseCode.BAD_FRAME, str(exc), target=f"host:{status.host_id}", details={}
                )
                return
            self._presence.touch(status.host_id)
            if isinstance(message, JobStatus):
                link.resolve(message)
            elif isinstance(message, Heartbeat):
                continue
            else:
                await self._refuse(
                    ws,
                    CloseCode.BAD_FRAME,
                    "A second hello arrived on an open connection.",
                    target=f"host:{status.host_id}",
                    details={},
                )
                return

    async def _audit_bad_close(self, ws: ServerConnection, status: CertificateStatus) -> None:
        """Record connections the WebSocket layer itself closed for a protocol violation."""
        sent = ws.close_exc.sent if isinstance(ws.close_exc, ConnectionClosed) else None
        if sent is not None and sent.code in {CloseCode.MESSAGE_TOO_BIG, 1002, 1007}:
            await self._audit.record(
                "agent.connect",
                actor="endpoint",
                target=f"host:{status.host_id}",
                outcome="failure",
                source=_peer(ws),
                details={"reason": f"WebSocket protocol violation: {sent.reason or sent.code}"},
            )
