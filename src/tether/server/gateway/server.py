"""Admits agents on the agent port and runs each connection's read loop.

Chain verification happens in the TLS handshake (a certificate from another CA, an expired one or
none at all never reaches the handler; it is logged with the peer address and counted in the
per-source summary of TLS refusals, one audit record per source per minute, ADR 0026); revocation
and unknown serials are decided here, against the hosts table, and audited.
"""

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from typing import Any, cast

from cryptography import x509
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from tether.protocol import (
    MAX_FRAME_BYTES,
    CloseCode,
    Heartbeat,
    Hello,
    IsolationReport,
    JobOutput,
    JobStatus,
    ProtocolError,
    Welcome,
    close_reason,
    parse_agent_message,
    retry_reason,
    safe_text,
)
from tether.protocol.ca_rollover import CaRekey
from tether.protocol.compat import frame_for, version_refusal
from tether.protocol.transfer import AnyTransferMessage, TransferRequest
from tether.server.errors import Invalid
from tether.server.gateway.budget import BudgetLimits
from tether.server.gateway.connection import CALL_PREFIX, AgentConnection, TransferLink
from tether.server.gateway.metering import MeteredConnection, over_budget_reason
from tether.server.gateway.pacing import REPORTS_PER_MINUTE, Pacing
from tether.server.gateway.refusals import Penalties, RefusalRecords
from tether.server.services.admission import Admission
from tether.server.services.agent_addresses import AgentAddresses
from tether.server.services.audit import AuditLog
from tether.server.services.ca_rotation import CaRollover
from tether.server.services.dispatch import Dispatcher
from tether.server.services.file_transfers import FileTransfers
from tether.server.services.hosts import CertificateStatus, Hosts
from tether.server.services.policy import PolicyDelivery
from tether.server.services.presence import Presence
from tether.server.services.refusal_summary import RefusalSummary
from tether.server.services.tls_profile import hardened
from tether.server.store.db import utcnow

log = logging.getLogger(__name__)


def agent_ssl_context(
    ca_file: str, cert_file: str, key_file: str, previous_ca_files: Sequence[str] = ()
) -> ssl.SSLContext:
    """TLS for the agent port: our server certificate, client certificates from our CA only
    (and, while a CA rotation is under way, from the previous CA: docs/adr/0048)."""
    context = hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cafile=ca_file)
    for previous in previous_ca_files:
        context.load_verify_locations(cafile=previous)
    context.verify_mode = ssl.CERT_REQUIRED
    # Agents never resume a TLS session (every connection is a full handshake with the client
    # certificate), so TLS 1.3 session tickets would be pure cost: with OpenSSL 3.0, issuing the
    # two default tickets took as much CPU as the rest of the server's handshake
    # (docs/performance.md).
    context.num_tickets = 0
    return context


class _TlsServerConnection(ServerConnection):
    """A WebSocket connection that runs its own TLS handshake, so a refusal is logged.

    When the event loop's server does TLS (`create_server(ssl=...)`), uvloop and asyncio drop a
    failed handshake without a word: an `ssl.SSLError` is an `OSError`, which they report only in
    debug mode, and never to the loop's exception handler. Accepting plain TCP and upgrading with
    `loop.start_tls` runs the same TLS code but hands the failure, with the peer address, to us.
    """

    tls_context: ssl.SSLContext
    tls_timeout: float
    tls_shutdown_timeout: float
    tls_refusals: RefusalSummary | None
    admission: Admission

    _raw: asyncio.Transport
    _early: bytearray
    _upgrade: "asyncio.Task[None] | None" = None
    _upgraded = False
    # True while this connection holds one of the admission's places (accept to session start).
    _admitted = False
    _shed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)
        self._early = bytearray()
        if not self.admission.admit(self):
            # Shed before any TLS work: the agent reads a close before the handshake as "busy,
            # come back soon" (docs/adr/0049). Nothing is logged: in a storm that is thousands.
            self._shed = True
            self._raw.abort()
            return
        self._admitted = True
        self._upgrade = self.loop.create_task(self._start_tls())

    def release_admission(self, *, completed: bool = False) -> None:
        """Give back this connection's admission place (its handshake is over, either way)."""
        if self._admitted:
            self._admitted = False
            self.admission.release(self, completed=completed)

    def abort_handshake(self) -> None:
        """Drop a connection still in its TLS handshake or upgrade (the platform is stopping)."""
        if self._upgrade is not None:
            self._upgrade.cancel()
        self._raw.abort()

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            super().data_received(data)
            return
        if self._shed:
            return
        # uvloop starts reading as soon as connection_made returns, before start_tls has taken
        # the transport over: keep what arrived (the ClientHello) for the TLS layer, stop reading.
        self._early += data
        self._raw.pause_reading()

    def eof_received(self) -> None:
        if self._upgraded:
            super().eof_received()
        # Before the upgrade, returning None lets the transport close itself.

    def connection_lost(self, exc: Exception | None) -> None:
        self.release_admission()
        if self._upgraded:
            super().connection_lost(exc)

    def _hand_early_bytes_to_tls(self) -> None:
        """Give the bytes read before the upgrade to the TLS protocol, ahead of the handshake."""
        tls_protocol = self._raw.get_protocol()
        if tls_protocol is self:  # start_tls has not taken the transport yet
            self.loop.call_soon(self._hand_early_bytes_to_tls)
            return
        # uvloop's SSLProtocol is a buffered protocol without subclassing asyncio's class.
        tls_protocol = cast(asyncio.BufferedProtocol, tls_protocol)
        pending = memoryview(bytes(self._early))
        self._early.clear()
        while pending:
            buffer = memoryview(tls_protocol.get_buffer(len(pending)))
            size = min(len(buffer), len(pending))
            buffer[:size] = pending[:size]
            tls_protocol.buffer_updated(size)
            pending = pending[size:]

    async def _start_tls(self) -> None:
        raw = self._raw
        address = raw.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if address else "unknown peer"
        try:
            if raw.is_closing():
                raise ConnectionResetError("closed before the TLS handshake")
            # start_tls swaps the transport's protocol before it first yields, and schedules the
            # handshake start with call_soon: this callback runs after the swap, before the
            # handshake reads, so the early bytes are the first the TLS layer sees.
            self.loop.call_soon(self._hand_early_bytes_to_tls)
            tls = await self.loop.start_tls(
                raw,
                self,
                self.tls_context,
                server_side=True,
                ssl_handshake_timeout=self.tls_timeout,
                ssl_shutdown_timeout=self.tls_shutdown_timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("TLS handshake refused from %s: %s", peer, exc or type(exc).__name__)
            # A peer that only opened and closed the connection (a TCP health check, a port
            # scan) is no refusal: counting it would write a record a minute per load balancer.
            if self.tls_refusals is not None and isinstance(exc, ssl.SSLError | TimeoutError):
                self.tls_refusals.note(address[0] if address else "unknown", refusal_reason(exc))
            self.release_admission()
            raw.abort()
            return
        finally:
            self._upgrade = None
        if tls is None or tls.is_closing() or not self.server.is_serving():
            log.info("Connection from %s closed during the TLS handshake", peer)
            self.release_admission()
            raw.abort()
            return
        self._upgraded = True
        super().connection_made(tls)


def refusal_reason(exc: ssl.SSLError | TimeoutError) -> str:
    """A short, bounded name for why a handshake failed: the summary's and /metrics' label."""
    if isinstance(exc, TimeoutError):
        return "handshake timeout"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate"
        if reason in {"CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA"}:
            return "certificate not accepted"
        if reason in {"NO_SHARED_CIPHER", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"}:
            return "no common protocol or cipher"
    return "other TLS error"


def _tls_connection_class(
    context: ssl.SSLContext,
    timeout: float,
    shutdown_timeout: float,
    refusals: RefusalSummary | None,
    limits: BudgetLimits,
    admission: Admission,
) -> type[ServerConnection]:
    return type(
        "TlsServerConnection",
        # Metering first: it charges every read before the TLS class hands it on.
        (MeteredConnection, _TlsServerConnection),
        {
            "tls_context": context,
            "tls_timeout": timeout,
            "tls_shutdown_timeout": shutdown_timeout,
            "tls_refusals": refusals,
            "budget_limits": limits,
            "admission": admission,
        },
    )


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "unknown"


# A host enrolled after the backup a platform was restored from is unknown to it, like one never
# enrolled: either way, enrolling again is the way back. (A close reason fits in 123 bytes.)
UNKNOWN_HOST = "This certificate does not belong to any enrolled host; enroll the agent again."


def _peer_der(ws: ServerConnection) -> bytes | None:
    ssl_object = ws.transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    return cast(bytes, der) if der else None


def _peer_serial(ws: ServerConnection) -> str | None:
    der = _peer_der(ws)
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
        policies: PolicyDelivery,
        dispatcher: Dispatcher,
        transfers: FileTransfers,
        audit: AuditLog,
        heartbeat_seconds: int,
        hello_timeout: float,
        tls_refusals: RefusalSummary | None = None,
        budget: BudgetLimits = BudgetLimits(),
        ca_rollover: CaRollover | None = None,
        admission: Admission | None = None,
        addresses: AgentAddresses | None = None,
    ) -> None:
        self._hosts = hosts
        self._ca_rollover = ca_rollover
        self._addresses = addresses
        self.admission = admission if admission is not None else Admission()
        self._tls_refusals = tls_refusals
        self._presence = presence
        self._policies = policies
        self._dispatcher = dispatcher
        self._transfers = transfers
        self._audit = audit
        self._heartbeat = heartbeat_seconds
        self._hello_timeout = hello_timeout
        self._budget = budget
        self._refusals = RefusalRecords(audit)
        self._penalties = Penalties()
        self._summaries: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> Server:
        self._summaries = asyncio.create_task(self._refusals.run())
        return await serve(
            self.handle,
            host,
            port,
            # TLS is done per connection (see _TlsServerConnection), not by the listening socket.
            create_connection=_tls_connection_class(
                context,
                timeout=15,
                shutdown_timeout=2,
                refusals=self._tls_refusals,
                limits=self._budget,
                admission=self.admission,
            ),
            compression=None,  # deflate made bulk transfer 20x slower (DESIGN.md section 4)
            max_size=MAX_FRAME_BYTES,
            max_queue=16,
            # Agents ping; the platform only answers. Silence is caught by the read timeout.
            ping_interval=None,
            open_timeout=15,
            close_timeout=2,
            server_header=None,
        )

    @staticmethod
    def say_going_away(server: Server, reason: str, until: float) -> int:
        """Put a close 1001 "going away" on the wire of every open session, in one pass that
        stops at loop time `until` (those left are aborted with the rest; agents take a session
        that ends without a close as going away too).

        Nothing is awaited: `ServerConnection.close` per agent is a task and a wait each, and
        for 10,000 agents on a busy core creating, running and cancelling those took longer
        than the whole grace period (docs/performance.md). The pass itself measured 0.5-1.4 ms
        per session on the shared machine, so it is bounded too. Returns how many were told.
        """
        loop = asyncio.get_running_loop()
        told = 0
        for connection in list(server.all_connections):
            if told % 100 == 0 and loop.time() >= until:
                break
            if connection.protocol.state is State.OPEN:
                connection.protocol.send_close(int(CloseCode.GOING_AWAY), reason)
                connection.send_data()
                told += 1
        return told

    @staticmethod
    def abort_sessions(server: Server) -> int:
        """Drop every session still open (its agent has not finished closing in time)."""
        left = list(server.all_connections)
        for connection in left:
            connection.transport.abort()
        return len(left)

    def abort_handshakes(self) -> int:
        """Drop every connection not yet in a session (in its TLS handshake or upgrade): at
        shutdown they would only hold the process up. Returns how many were dropped."""
        return self.admission.abort_all()

    async def stop(self) -> None:
        """Write the refusal summaries still open (after the agent port closed)."""
        if self._summaries is not None:
            self._summaries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summaries
        await self._refusals.flush(everything=True)

    async def _refuse(
        self,
        ws: ServerConnection,
        code: CloseCode,
        reason: str,
        *,
        target: str,
        details: dict[str, Any],
        kind: str = "",
    ) -> None:
        """Close with `reason` (cut to fit a close frame) and put the refusal on record.

        The close goes first: the agent learns why at once, whatever the record costs.
        """
        reason = close_reason(reason)
        peer = _peer(ws)  # before the close: a closed connection has no address
        with contextlib.suppress(ConnectionClosed):
            await ws.close(int(code), reason)
        log.warning("Refused agent %s: %s", peer, reason)
        await self._refusals.refuse(
            target, source=peer, kind=kind or code.name.lower(), reason=reason, details=details
        )

    async def handle(self, ws: ServerConnection) -> None:
        """One agent connection, start to end; nothing it sends makes this raise."""
        if isinstance(ws, _TlsServerConnection):
            # The handshake and upgrade are done: the connection leaves admission control.
            ws.release_admission(completed=True)
        try:
            await self._handle(ws)
        except Exception:
            log.exception("The connection from %s failed", _peer(ws))
            ws.transport.abort()

    async def _handle(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        serial = _peer_serial(ws)
        if serial is not None and self._penalties.remaining(serial) is not None:
            await self._refuse_penalized(ws, serial)
            return
        status = await self._hosts.certificate_status(serial) if serial else None
        if status is None:
            await self._refuse(
                ws,
                CloseCode.UNKNOWN_CERTIFICATE,
                UNKNOWN_HOST,
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
        try:
            hello = await self._read_hello(ws, status)
            if hello is not None:
                der = _peer_der(ws)
                if status.next_certificate and self._ca_rollover is not None and der:
                    # The host moved to the certificate the CA rotation gave it.
                    await self._ca_rollover.adopted(status.host_id, der)
                await self._note_hostname(ws, status, hello)
                await self._hosts.record_hello(status.host_id, hello)
                await self._serve(ws, status, hello)
        finally:
            await self._after_close(ws, status, serial, peer)

    async def _refuse_penalized(self, ws: ServerConnection, serial: str) -> None:
        """Refuse a host that is sent away for overspending, after holding it unread a while."""
        penalty = self._penalties.remaining(serial)
        host_id = penalty[1] if penalty is not None else ""
        transport = ws.transport
        transport.pause_reading()
        async with self._penalties.hold(serial):
            pass
        transport.resume_reading()  # for the close handshake; the budget still applies
        penalty = self._penalties.remaining(serial)
        seconds = penalty[0] if penalty is not None else 1
        await self._refuse(
            ws,
            CloseCode.OVER_BUDGET,
            retry_reason("This host overspent its budget and is refused for now.", seconds),
            target=f"host:{host_id}",
            details={"cert_serial": serial},
            kind="refused_until_its_penalty_ends",
        )

    async def _serve(self, ws: ServerConnection, status: CertificateStatus, hello: Hello) -> None:
        link = AgentConnection(status.host_id, ws, hello.protocol_version)
        transfer_link = TransferLink(ws, hello.protocol_version)
        try:
            # Welcome goes out before the link is registered: a policy change published in
            # between must not reach the agent ahead of its welcome.
            welcome = Welcome(
                host_id=status.host_id,
                server_time=utcnow(),
                heartbeat_seconds=self._heartbeat,
                agent_addresses=await self._addresses.listed_urls() if self._addresses else (),
            )
            await ws.send(frame_for(welcome.model_dump_json(), hello.protocol_version))
            replaced = self._presence.attach(link)
            if replaced is not None:
                await replaced.disconnect(CloseCode.REPLACED, "A newer connection from this host.")
            # Read after attaching: a change committed from here on is published to this link
            # too, and one committed before is in this read (see PolicyDelivery).
            await self._policies.deliver(link)
            await self._transfers.connected(status.host_id, transfer_link)
            # After the policy: the agent refuses response actions until it has one.
            await self._dispatcher.host_connected(link)
            log.info("Agent %s (%s) connected from %s", hello.hostname, status.host_id, _peer(ws))
            await self._read_loop(ws, link, status)
        except ConnectionClosed:
            pass
        finally:
            self._presence.detach(link)
            self._transfers.disconnected(status.host_id, transfer_link)
            link.fail_pending("The agent disconnected before answering.")

    async def _after_close(
        self, ws: ServerConnection, status: CertificateStatus, serial: str | None, peer: str
    ) -> None:
        """Record how the connection ended when the agent broke a rule the handler never saw:
        a budget overspent (and send the host away), or the WebSocket protocol itself."""
        budget = ws.budget if isinstance(ws, MeteredConnection) else None
        if budget is not None and budget.exceeded is not None and serial is not None:
            seconds = self._budget.penalty_seconds
            self._penalties.impose(serial, status.host_id, seconds)
            reason = over_budget_reason(budget.exceeded, seconds)
            log.warning("Agent %s (%s): %s", status.host_id, peer, reason)
            await self._refusals.refuse(
                f"host:{status.host_id}",
                source=peer,
                kind=f"over budget: {budget.exceeded}",
                reason=reason,
                details={"exceeded": budget.exceeded, "spent": budget.spent()},
            )
            return
        await self._audit_bad_close(ws, status, peer)

    async def _note_hostname(
        self, ws: ServerConnection, status: CertificateStatus, hello: Hello
    ) -> None:
        """Put a hostname on record when it differs from the one the host had (the enrollment
        record holds the first), naming the other hosts whose names read alike."""
        if hello.hostname == status.hostname:
            return
        alike = await self._hosts.named_like(hello.hostname, other_than=status.host_id)
        await self._audit.record(
            "host.hostname",
            actor="endpoint",
            target=f"host:{status.host_id}",
            source=_peer(ws),
            details={
                "previous": status.hostname,
                "reported": hello.hostname,
                "reads_like": alike,
            },
        )

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
            await self._refuse(
                ws, CloseCode.BAD_FRAME, str(exc), target=target, details=exc.evidence
            )
            return None
        except ConnectionClosed:
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
        refusal = version_refusal(message.protocol_version)
        if refusal is not None:
            await self._refuse(
                ws,
                CloseCode.UNSUPPORTED_VERSION,
                refusal,
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
        pacing = Pacing()
        # Each isolation report is an audit record: an endpoint gets a few, not a flood.
        reports = Pacing(rate=REPORTS_PER_MINUTE / 60, burst=REPORTS_PER_MINUTE)
        while True:
            try:
                async with asyncio.timeout(silence):
                    frame = await ws.recv()
            except TimeoutError:
                await ws.close(int(CloseCode.IDLE), "No heartbeat; reconnect.")
                return
            try:
                if isinstance(frame, bytes):
                    # File data, in order; awaiting it is the back-pressure on the agent.
                    await self._transfers.on_chunk(status.host_id, frame)
                    continue
                await pacing.spend(asyncio.sleep)
                message = parse_agent_message(frame)
                if isinstance(message, AnyTransferMessage):
                    await self._transfers.on_message(status.host_id, message)
                    continue
                if isinstance(message, TransferRequest):
                    await self._transfers.on_request(status.host_id, message)
                    continue
            except ProtocolError as exc:
                await self._refuse(
                    ws,
                    CloseCode.BAD_FRAME,
                    str(exc),
                    target=f"host:{status.host_id}",
                    details=exc.evidence,
                )
                return
            self._presence.touch(status.host_id)
            if isinstance(message, JobStatus | JobOutput):
                await self._job_message(link, message)
            elif isinstance(message, Heartbeat):
                continue
            elif isinstance(message, IsolationReport):
                if reports.delay() > 0:
                    log.warning(
                        "Host %s sends isolation reports too often; dropped", status.host_id
                    )
                    continue
                await self._isolation_report(status.host_id, message)
            elif isinstance(message, CaRekey):
                await self._rekey(ws, status, message)
            else:
                await self._refuse(
                    ws,
                    CloseCode.BAD_FRAME,
                    "A second hello arrived on an open connection.",
                    target=f"host:{status.host_id}",
                    details={},
                )
                return

    async def _rekey(self, ws: ServerConnection, status: CertificateStatus, ask: CaRekey) -> None:
        """A certificate under the new CA for an agent that asks during a CA rotation; any
        other time the request is logged and left unanswered (the agent keeps its own)."""
        der = _peer_der(ws)
        if self._ca_rollover is None or der is None:
            log.warning("Host %s asked for a new certificate; no CA rotation", status.host_id)
            return
        try:
            answer = await self._ca_rollover.rekey(status.host_id, ask.csr, der)
        except Invalid as exc:
            log.warning("Host %s asked for a new certificate: %s", status.host_id, exc)
            return
        await ws.send(answer.model_dump_json())

    async def _isolation_report(self, host_id: str, report: IsolationReport) -> None:
        """Keep what the agent says its isolation is now, and put the change on record (as the
        endpoint's word: the job it names is its claim, shown as such)."""
        report = await self._hosts.record_isolation(host_id, report)
        status = report.status
        await self._audit.record(
            "isolation.reported",
            actor="endpoint",
            target=f"host:{host_id}",
            source="endpoint",
            outcome="failure" if report.error is not None else "success",
            details={
                "cause": report.cause,
                "isolated": status.isolated,
                "mode": status.mode.value if status.mode is not None else None,
                "allow": [r.model_dump(mode="json") for r in status.allow],
                "job": report.job_id,
                # The endpoint's sentence, escaped: the record is read in terminals and pages.
                "error": safe_text(report.error, 1024) if report.error is not None else None,
            },
        )

    async def _job_message(self, link: AgentConnection, message: JobStatus | JobOutput) -> None:
        if message.job_id.startswith(CALL_PREFIX):
            if isinstance(message, JobStatus):
                link.resolve(message)
            return
        try:
            if isinstance(message, JobStatus):
                await self._dispatcher.on_status(link.host_id, message)
            else:
                await self._dispatcher.on_output(link.host_id, message)
        except Exception:
            # The agent keeps what it sent until the platform acknowledges it, and sends it
            # again after its next connect: log and carry on rather than drop the connection.
            log.exception("Could not record %s from host %s", message.type, link.host_id)

    async def _audit_bad_close(
        self, ws: ServerConnection, status: CertificateStatus, peer: str
    ) -> None:
        """Record connections the WebSocket layer itself closed for a protocol violation."""
        if ws.protocol.state is not State.CLOSED:
            return
        sent = ws.close_exc.sent if isinstance(ws.close_exc, ConnectionClosed) else None
        if sent is not None and sent.code in {CloseCode.MESSAGE_TOO_BIG, 1002, 1007}:
            await self._refusals.refuse(
                f"host:{status.host_id}",
                source=peer,
                kind="websocket_protocol_violation",
                reason=close_reason(f"WebSocket protocol violation: {sent.reason or sent.code}"),
                details={},
            )
