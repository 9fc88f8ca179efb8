"""The agent's one WebSocket to the platform: hello, heartbeats, jobs, reconnect with backoff."""

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from tether.agent import sysinfo
from tether.agent.action import Handler
from tether.agent.actions import HANDLERS
from tether.agent.ca_watch import CaWatch, RolloverRefused
from tether.agent.certificate import check_validity
from tether.agent.errors import AgentRefused
from tether.agent.gate import ResponseGate
from tether.agent.isolation import Isolator
from tether.agent.isolation.isolator import DEFAULT_CHECK_SECONDS
from tether.agent.isolation_watch import IsolationWatch
from tether.agent.jobs import JobRunner
from tether.agent.journal import Journal
from tether.agent.retry import AddressRotation, Backoff, Ending, RetrySchedule
from tether.agent.state import StateDir
from tether.agent.transfer import AgentTransfers
from tether.agent.upgrade import UPGRADE_ACTION, RestartForUpgrade, Upgrader
from tether.protocol import (
    MAX_FRAME_BYTES,
    CloseCode,
    Heartbeat,
    Hello,
    JobAck,
    JobCancel,
    JobRequest,
    Policy,
    ProtocolError,
    Welcome,
    parse_platform_message,
    retry_after,
)
from tether.protocol.ca_rollover import CaCertificate
from tether.protocol.isolation import AllowRule
from tether.protocol.transfer import AnyTransferMessage, TransferGrant

log = logging.getLogger("tether.agent")


def asked_to_wait(websocket: ClientConnection | None) -> float:
    """Seconds the platform asked this agent to stay away when it closed `websocket` (it sends
    an agent that overspent its budget away for a while, `CloseCode.OVER_BUDGET`); 0 otherwise."""
    if websocket is None or websocket.close_code != CloseCode.OVER_BUDGET:
        return 0.0
    return float(retry_after(websocket.close_reason or "") or 0)


def _close_received(websocket: ClientConnection | None) -> int | None:
    """The close code the platform sent on `websocket`, if a close frame arrived."""
    if websocket is None:
        return None
    received = websocket.protocol.close_rcvd
    return received.code if received is not None else None


def busy_retry_after(exc: BaseException) -> float | None:
    """When `exc` says the platform is alive but busy, the seconds it asked to wait (0 when it
    named none); None for any other failure.

    Busy is a connection closed before the TLS handshake finished (admission control sheds it
    so, docs/adr/0049) or an HTTP 503 to the upgrade (with its Retry-After, capped at 5 min).
    """
    if isinstance(exc, InvalidStatus):
        if exc.response.status_code != 503:
            return None
        header = exc.response.headers.get("Retry-After", "")
        return float(min(int(header), 300)) if header.isdigit() else 0.0
    if isinstance(exc, ConnectionResetError | ssl.SSLEOFError):
        return 0.0
    if (
        isinstance(exc, ssl.SSLError)
        and getattr(exc, "reason", None) == "UNEXPECTED_EOF_WHILE_READING"
    ):
        return 0.0
    return None


def client_ssl_context(state: StateDir) -> ssl.SSLContext:
    """Trust only the pinned platform CA, present this endpoint's certificate."""
    context = ssl.create_default_context(cafile=str(state.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(state.cert), str(state.key))
    return context


_CERTIFICATE_ALERTS = (
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_EXPIRED",
    "UNKNOWN_CA",
    "BAD_CERTIFICATE",
)


class _TransferLink:
    """The connection as the transfer engine sees it: a send on a closed link is an error."""

    def __init__(self, websocket: ClientConnection) -> None:
        self._ws = websocket

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise ConnectionResetError("The connection to the platform closed.") from exc

    async def send_binary(self, frame: bytes | memoryview) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed as exc:
            raise ConnectionResetError("The connection to the platform closed.") from exc


class AgentConnection:
    """Keeps the agent connected until stopped or refused for good."""

    def __init__(
        self,
        state: StateDir,
        *,
        hello: Callable[[], Hello] = sysinfo.hello,
        handlers: dict[str, Handler] | None = None,
        backoff: Backoff | None = None,
        disable_response: bool = False,
        journal: Journal | None = None,
        isolator: Isolator | None = None,
        isolation_check_seconds: float = DEFAULT_CHECK_SECONDS,
    ) -> None:
        # Nothing is read from a directory another account could have planted files in.
        self._state = state.secure()
        self._identity = state.identity()
        self._hello = hello
        # The upgrade handler needs this agent's state directory, so it is made here.
        self.upgrader = Upgrader(self._state.root)
        self._handlers = (
            {**HANDLERS, UPGRADE_ACTION: self.upgrader.run} if handlers is None else handlers
        )
        # Off by the command-line flag or by the file in the state directory, whichever is set.
        self.gate = ResponseGate(lambda: disable_response or state.response_disabled_locally())
        journal = journal or Journal(state.journal)
        self._journal = journal
        # Before the journal's recovery: an upgrade trial that ended, or this process's own.
        on_trial = self.upgrader.settle(journal)
        self.transfers = AgentTransfers(partials=journal)
        self.isolator = isolator or Isolator(state, self._identity.agent_url)
        self.isolation = IsolationWatch(self.isolator)
        self._isolation_check_seconds = isolation_check_seconds
        self.jobs = JobRunner(
            journal,
            self._handlers,
            self.gate,
            transfers=self.transfers,
            isolator=self.isolator,
            keep_running=on_trial,
        )
        self._schedule = RetrySchedule(backoff)
        # The platform's agent ports, tried in an order of this agent's own (docs/adr/0049).
        self._rotation = AddressRotation(state.agent_addresses(self._identity))
        # The last session's socket, for the close code and reason it ended with.
        self._last_socket: ClientConnection | None = None
        self.connected = asyncio.Event()
        self.ca_rollover = CaWatch(self._state)
        # The platform's certificate on the current connection (a CA rotation checks it).
        self._server_der: bytes | None = None

    async def run_forever(self) -> None:
        """Connect, serve, reconnect; returns only by raising AgentRefused, RestartForUpgrade
        (the agent replaces itself with a new version's trial) or being cancelled."""
        # Before the first connection: an isolated host that rebooted gets its rules back
        # before anything on it talks to the network through this agent (DESIGN.md section 5).
        outcome = await self.isolator.reassert()
        if outcome != "not isolated":
            log.info("Isolation at start: %s", outcome)
        checks = asyncio.create_task(self._keep_isolation())
        alive = asyncio.create_task(self.jobs.keep_alive())
        serving = asyncio.create_task(self._reconnect_forever())
        restart = asyncio.create_task(self.upgrader.restart.wait())
        try:
            await asyncio.wait({serving, restart}, return_when=asyncio.FIRST_COMPLETED)
            if not restart.done():
                serving.result()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            raise RestartForUpgrade("Restarting into the upgraded agent's trial.")
        finally:
            for task in (serving, restart, checks, alive):
                task.cancel()
                # The serving task's own error (a refusal) is already on its way up.
                with contextlib.suppress(asyncio.CancelledError, AgentRefused):
                    await task
            await self.jobs.stop()

    async def report_isolation(self) -> None:
        """Tell the platform what the isolation is now if that changed since it was last told
        (a local release just before the Windows service is removed); nothing when offline."""
        await self.isolation.check()

    async def _keep_isolation(self) -> None:
        """Re-assert isolation periodically; tell the platform when what holds has changed."""
        while True:
            await asyncio.sleep(self._isolation_check_seconds)
            try:
                outcome = await self.isolator.reassert()
                if outcome not in ("not isolated", "in place"):
                    log.info("Isolation check: %s", outcome)
                await self.isolation.check()
            except Exception:
                # A bug here must not end the checks for the rest of the agent's life.
                log.exception("The isolation check failed")

    async def _adopt_allowlist(self, allow: tuple[AllowRule, ...]) -> None:
        outcome = await self.isolator.adopt_allowlist(allow)
        if outcome == "unchanged":
            return
        log.info("Isolation allowlist from the platform: %s", outcome)
        error = None
        if outcome.startswith("failed"):
            error = outcome.removeprefix("failed").removeprefix(": ") or (
                "The agent could not apply it; its log says why."
            )
        await self.isolation.allowlist_adopted(error)

    @property
    def url(self) -> str:
        """The address the next (or current) attempt dials."""
        return self._rotation.current

    async def _reconnect_forever(self) -> None:
        while True:
            # Checked before every attempt: a long-running agent can outlive its certificate.
            check_validity(self._state.cert)
            url = self.url
            ending = Ending.FAILED
            asked = 0.0
            try:
                await self._session()
            except AgentRefused:
                raise
            except ssl.SSLError as exc:
                if any(alert in (exc.reason or "") for alert in _CERTIFICATE_ALERTS):
                    raise AgentRefused(
                        f"The platform refused this agent's certificate in the TLS handshake "
                        f"({exc.reason}); re-enroll the agent."
                    ) from exc
                busy = busy_retry_after(exc)
                if busy is not None:
                    ending = Ending.BUSY
                else:
                    log.warning("TLS failure talking to %s: %s", url, exc)
            except (
                OSError,
                InvalidHandshake,
                TimeoutError,
                ConnectionClosed,
                ProtocolError,
            ) as exc:
                busy = busy_retry_after(exc)
                if busy is not None and not self.connected.is_set():
                    ending, asked = Ending.BUSY, busy
                    log.info("%s is busy", url)
                else:
                    log.warning("Connection to %s lost: %s", url, exc or type(exc).__name__)
            if self.connected.is_set():
                # The session had reached welcome: the backoff starts over, and a platform that
                # said it is going away is given back its agents over a window (docs/adr/0049).
                self.connected.clear()
                self._schedule.welcomed()
                # No close frame at all counts as going away too: a platform that stops drops
                # the sessions still closing after 2 s, and a reset discards a close frame the
                # agent had not read yet; a node that died takes its agents with it the same way.
                code = _close_received(self._last_socket)
                going = code is None or code == CloseCode.GOING_AWAY
                ending = Ending.GOING_AWAY if going else Ending.LOST
                self._rotation.start_round()
                round_over = True
            else:
                if _close_received(self._last_socket) == CloseCode.GOING_AWAY:
                    # Told "going away" between its upgrade and its welcome.
                    ending = Ending.GOING_AWAY
                round_over = self._rotation.move_on()
            # A platform that sent this agent away for overspending says when it may return.
            delay = max(
                self._schedule.next_delay(ending, round_over=round_over),
                asked,
                asked_to_wait(self._last_socket),
            )
            self._last_socket = None
            log.info("Reconnecting to %s in %.1f s (%s)", self.url, delay, ending.value)
            await asyncio.sleep(delay)

    def _adopt_addresses(self, addresses: tuple[str, ...]) -> None:
        """Keep the platform's current list of agent ports (a welcome carries it), so a node
        added later reaches agents enrolled before it."""
        if not addresses or not self._rotation.replace(addresses):
            return
        log.info("The platform's agent addresses: %s", ", ".join(addresses))
        try:
            self._state.write_agent_addresses(list(addresses))
        except OSError as exc:
            # Kept in memory for this run; the next welcome tries again.
            log.warning("Could not store the platform's addresses: %s", exc)

    async def _session(self) -> None:
        try:
            websocket = await connect(
                self.url,
                # Made again for each connection: a CA rotation changes the certificate and
                # the pinned CAs (tether.agent.ca_rollover).
                ssl=client_ssl_context(self._state),
                compression=None,
                max_size=MAX_FRAME_BYTES,
                # The library's pings detect a dead platform and close the socket; the text
                # heartbeats below are what the platform counts as "last seen".
                ping_interval=120,
                ping_timeout=30,
                open_timeout=15,
                close_timeout=2,
                proxy=None,
                user_agent_header=None,
            )
        except InvalidURI as exc:
            raise AgentRefused(f"The platform address {self.url} is not valid.") from exc
        self._last_socket = websocket
        async with websocket:
            self.gate.reset()
            disabled = self.gate.disabled_locally()
            if disabled:
                log.info("Response actions are switched off locally on this endpoint")
            hello = self._hello().model_copy(
                update={
                    "response_disabled_locally": disabled,
                    "isolation": await self.isolation.for_hello(),
                }
            )
            await websocket.send(hello.model_dump_json())
            welcome = await self._welcome(websocket)
            log.info("Connected to %s as host %s", self.url, welcome.host_id)
            # A version on trial has connected: its upgrade took (reported with the journal).
            self.upgrader.connected(self._journal)
            self.connected.set()
            self._adopt_addresses(welcome.agent_addresses)
            await self._check_ca(websocket)
            beats = asyncio.create_task(self._heartbeats(websocket, welcome.heartbeat_seconds))

            async def send(text: str) -> None:
                with contextlib.suppress(ConnectionClosed):
                    await websocket.send(text)

            try:
                await self.jobs.attach(send)
                await self.transfers.attach(_TransferLink(websocket))
                self.isolation.attach(send)
                await self._serve(websocket)
            finally:
                self.isolation.detach()
                self.transfers.detach()
                self.jobs.detach()
                beats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beats

    async def _check_ca(self, websocket: ClientConnection) -> None:
        ssl_object = websocket.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        self._server_der = der or None
        try:
            ask = self.ca_rollover.connected(self._server_der)
        except (OSError, ValueError) as exc:
            # A CA rotation that cannot proceed must not cost the connection.
            log.warning("Could not check the platform's CA rotation: %s", exc)
            return
        if ask is not None:
            await websocket.send(ask.model_dump_json())

    async def _welcome(self, websocket: ClientConnection) -> Welcome:
        try:
            async with asyncio.timeout(15):
                frame = await websocket.recv()
        except ConnectionClosed as exc:
            self._raise_if_final(exc)
            raise
        message = parse_platform_message(frame)
        if not isinstance(message, Welcome):
            raise ProtocolError("The platform did not answer the hello with a welcome.")
        return message

    @staticmethod
    def _raise_if_final(exc: ConnectionClosed) -> None:
        received = exc.rcvd
        if received is None:
            return
        try:
            code = CloseCode(received.code)
        except ValueError:
            return
        if code.is_final:
            raise AgentRefused(f"The platform refused this agent: {received.reason}") from exc

    async def _heartbeats(self, websocket: ClientConnection, interval: int) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionClosed):
                await websocket.send(Heartbeat().model_dump_json())

    async def _serve(self, websocket: ClientConnection) -> None:
        # Handling a job message may wait on the journal and on sends; the read loop must not.
        handling: set[asyncio.Task[None]] = set()

        def spawn(work: Coroutine[Any, Any, None]) -> None:
            task = asyncio.create_task(work)
            handling.add(task)
            task.add_done_callback(handling.discard)

        while True:
            try:
                frame = await websocket.recv()
            except ConnectionClosed as exc:
                self._raise_if_final(exc)
                raise
            if isinstance(frame, bytes):
                # File data: awaited here, in order, which is also the back-pressure.
                await self.transfers.on_chunk(frame)
                continue
            message = parse_platform_message(frame)
            if isinstance(message, AnyTransferMessage):
                await self.transfers.on_message(message)
            elif isinstance(message, TransferGrant):
                self.transfers.requests.on_grant(message)
            elif isinstance(message, Policy):
                self.gate.apply(message)
                # Re-applying tests the rules against the platform: not in the read loop.
                spawn(self._adopt_allowlist(message.isolation_allow))
                log.info(
                    "Policy from the platform: segment %s, Active Response %s",
                    message.segment,
                    "on" if message.active_response else "off",
                )
            elif isinstance(message, JobRequest):
                spawn(self.jobs.on_job(message))
            elif isinstance(message, JobCancel):
                spawn(self.jobs.on_cancel(message))
            elif isinstance(message, JobAck):
                self.jobs.on_ack(message)
            elif isinstance(message, CaCertificate):
                try:
                    self.ca_rollover.accept(message, self._server_der)
                except RolloverRefused as exc:
                    log.warning("Refused the platform's new certificate: %s", exc)
                    continue
                return  # reconnect with the new certificate
