"""One platform process: analyst port (uvicorn) and/or agent port (websockets) on one uvloop loop.

Which of them, and which background work, depends on the process's role (docs/adr/0044): `all`
runs everything (the embedded default), `api` the analyst side, `gateway` the agent side.
"""

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from sqlalchemy import text
from websockets.asyncio.server import Server

from tether.server.app import create_app
from tether.server.config import Role, Settings, split_hostport
from tether.server.errors import ConfigurationError
from tether.server.gateway.server import AgentGateway, agent_ssl_context
from tether.server.services.buses.redis import RedisBus
from tether.server.services.ca_rotation import CaRollover, trusted_ca_files
from tether.server.services.nodes import ALIVE_WITHIN
from tether.server.services.platform import Platform
from tether.server.services.script_examples import load_examples, shipped_examples
from tether.server.services.tls_profile import analyst_ssl_context
from tether.server.store.db import is_sqlite
from tether.server.store.migrate import upgrade

log = logging.getLogger("tether.server")


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: this process owns SIGINT and SIGTERM."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class _ApiConfig(uvicorn.Config):
    """uvicorn's configuration serving our TLS context: uvicorn's own cannot restrict the key
    exchange groups (tls_profile)."""

    def __init__(self, app: Any, tls: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.tls = tls

    def load(self) -> None:
        super().load()
        self.ssl = self.tls


def _log_tls_failures(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Handshake failures never reach the gateway; log them here with the peer address."""
    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionResetError):
        transport = context.get("transport")
        peer = transport.get_extra_info("peername") if transport is not None else None
        log.warning("TLS handshake refused from %s: %s", peer or "unknown peer", exc)
        return
    loop.default_exception_handler(context)


def check_role(settings: Settings) -> None:
    """A split role, or several nodes, need a database and a bus the processes share; say so at
    once."""
    if settings.role is Role.ALL:
        if settings.redis_url and is_sqlite(settings.db_url):
            raise ConfigurationError(
                "Several nodes on one Redis bus need a PostgreSQL database they share; set "
                "database_url, or remove redis_url to run one node on SQLite."
            )
        return
    if is_sqlite(settings.db_url):
        raise ConfigurationError(
            f"Role {settings.role.value} needs a PostgreSQL database shared by the platform's "
            "processes; set database_url, or run one process with --role all on SQLite."
        )
    if not settings.redis_url:
        raise ConfigurationError(
            f"Role {settings.role.value} needs the Redis bus between the platform's processes; "
            "set redis_url (e.g. redis://127.0.0.1:6379/0)."
        )


async def _prepare_records(platform: Platform) -> None:
    """Once-per-upgrade records and the shipped examples: done by a process serving analysts."""
    # The first start that binds results to the chain records what was stored before it.
    await platform.bindings.record_unbound()
    # The first start after the tiers migration records whose role it changed.
    migrated = await platform.team.record_role_migrations()
    if migrated:
        log.info("Recorded %d responders migrated to the script tier", migrated)
    examples = shipped_examples()
    if examples is not None:
        loaded = await load_examples(platform.scripts, examples)
        if loaded:
            log.info("Example scripts added to the library: %s", ", ".join(loaded))


@contextlib.asynccontextmanager
async def _one_node_at_a_time(platform: Platform) -> AsyncIterator[None]:
    """Several nodes starting together on PostgreSQL take turns (the once-per-upgrade records
    and the shipped examples must not be written twice)."""
    if is_sqlite(platform.settings.db_url):
        yield
        return
    async with platform.engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _START_LOCK})
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _START_LOCK})
            await conn.commit()


# The advisory lock of the start records ("tethstrt" in ASCII).
_START_LOCK = 0x7465746873747274


def _api_server(settings: Settings, platform: Platform) -> _ApiServer:
    api_host, api_port = split_hostport(settings.listen)
    config = _ApiConfig(
        create_app(platform),
        analyst_ssl_context(str(settings.server_cert), str(settings.server_key)),
        host=api_host,
        port=api_port,
        ssl_certfile=str(settings.server_cert),
        ssl_keyfile=str(settings.server_key),
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        # X-Forwarded-For is believed only from the proxies an operator named (none by default):
        # uvicorn's own default trusts 127.0.0.1, so any local client could write any source
        # address into the audit log.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies),
        # An idle keep-alive client that never answers TLS close_notify would otherwise hold the
        # shutdown for the whole TLS shutdown timeout (30 s), long enough to be killed instead.
        timeout_graceful_shutdown=5,
    )
    return _ApiServer(config)


def _build(settings: Settings) -> Platform:
    if not settings.several_nodes:
        return Platform.build(settings)
    # A node of role all acts on its own wake-ups at once, like the single process (ADR 0050).
    bus = RedisBus(settings.redis_url, prefix=settings.bus_prefix, inline=settings.role is Role.ALL)
    return Platform.build(settings, bus=bus)


async def serve(settings: Settings, on_ready: Callable[[], None] | None = None) -> None:
    """Run until cancelled or signalled; agents are told the platform is going away.

    `settings.role` says what this process serves (docs/adr/0044): both ports (`all`, the
    default), the analyst port and web UI (`api`), or the agent port (`gateway`)."""
    check_role(settings)
    role = settings.role
    upgrade(settings.db_url)
    platform = _build(settings)
    await platform.bus.start()
    if platform.nodes is not None:
        apart = await platform.nodes.join()
        if apart:
            log.warning(
                "Node(s) %s use another file store than this node (%s): files one of them "
                "retrieves cannot be downloaded through the other. Set file_store_dir on every "
                "node to one shared directory.",
                ", ".join(apart),
                settings.file_store,
            )
    if role.serves_analysts:
        async with _one_node_at_a_time(platform):
            await _prepare_records(platform)
    if role.holds_agents:
        swept = await platform.transfers.sweep_partials(platform.engine)
        if swept:
            log.info("Removed %d partial files no unfinished job can resume", swept)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_log_tls_failures)
    platform.witnesses.start()

    tasks: list[asyncio.Task[Any]] = []
    gateway: AgentGateway | None = None
    agent_server: Server | None = None
    agent_host, agent_port = split_hostport(settings.agent_listen)
    if role.holds_agents:
        gateway = AgentGateway(
            hosts=platform.hosts,
            presence=platform.presence,
            policies=platform.policies,
            dispatcher=platform.dispatcher,
            transfers=platform.transfers,
            audit=platform.audit,
            heartbeat_seconds=settings.heartbeat_seconds,
            hello_timeout=settings.hello_timeout_seconds,
            tls_refusals=platform.tls_refusals,
            ca_rollover=CaRollover(settings, platform.hosts),
            admission=platform.admission,
            addresses=platform.agent_addresses,
        )
        agent_server = await gateway.start(
            agent_host,
            agent_port,
            agent_ssl_context(
                str(settings.ca_cert),
                str(settings.server_cert),
                str(settings.server_key),
                [str(path) for path in trusted_ca_files(settings)[1:]],
            ),
        )
        tasks += [
            asyncio.create_task(_flush_presence(platform, settings.last_seen_flush_seconds)),
            asyncio.create_task(platform.dispatcher.run_sweeper(settings.job_sweep_seconds)),
        ]
        if settings.several_nodes:
            # What wake-ups may have said while the bus was away (pub/sub keeps nothing for a
            # subscriber that is not connected): re-read it all once the bus is back.
            platform.bus.on_resync(platform.dispatcher.dispatch_waiting)
            platform.bus.on_resync(platform.dispatcher.cancel_waiting)
            platform.bus.on_resync(platform.policies.publish_everywhere)
            platform.bus.on_resync(platform.hosts.disconnect_all_revoked)
            # And whatever a wake-up lost without a reconnect would have said (queued jobs are
            # the job sweeper's): a lost message delays by a sweep period, never loses.
            tasks.append(asyncio.create_task(_catch_up(platform, settings.job_sweep_seconds)))
    api_server: _ApiServer | None = None
    api_task: asyncio.Task[None] | None = None
    if role.serves_analysts:
        api_server = _api_server(settings, platform)
        api_task = asyncio.create_task(api_server.serve())
        tasks += [
            # Expired sessions and login attempts older than the throttle windows.
            asyncio.create_task(platform.users.run_purger(600)),
            asyncio.create_task(
                platform.live_sessions.run_sweeper(settings.live_session_sweep_seconds)
            ),
        ]
    if role is Role.API or (settings.several_nodes and role is Role.ALL):
        # Which hosts the other nodes hold, for listings, pings and the jobs' waiting reasons.
        tasks.append(
            asyncio.create_task(
                platform.presence.run_remote_refresh(PRESENCE_REFRESH_SECONDS, ALIVE_WITHIN)
            )
        )
    # Failed logins and agent-port TLS refusals, one audit record per source per minute.
    tasks += [
        asyncio.create_task(summary.run_flusher(REFUSAL_FLUSH_SECONDS))
        for summary in (platform.users.login_failures, platform.tls_refusals)
    ]
    # A warning in the log every day from 30 days before the server certificate ends.
    tasks.append(asyncio.create_task(platform.certificate.run(24 * 3600)))
    if platform.nodes is not None:
        tasks.append(asyncio.create_task(platform.nodes.run()))

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows has no add_signal_handler
            loop.add_signal_handler(sig, stop.set)
    if api_server is not None and api_task is not None:
        ready = asyncio.create_task(api_server.ready.wait())
        await asyncio.wait({ready, api_task}, return_when=asyncio.FIRST_COMPLETED)
        if api_task.done():
            ready.cancel()
            api_task.result()
            raise ConfigurationError(f"The analyst port {settings.listen} could not be opened.")
    if role is Role.ALL:
        api_host, api_port = split_hostport(settings.listen)
        log.info(
            "Analyst port https://%s:%d, agent port %s:%d%s",
            api_host,
            api_port,
            agent_host,
            agent_port,
            f" (node {platform.nodes.name})" if platform.nodes is not None else "",
        )
    elif role is Role.API:
        log.info("Role api: analyst port https://%s", settings.listen)
    else:
        log.info("Role gateway: agent port %s:%d", agent_host, agent_port)
    if on_ready is not None:
        on_ready()
    # What exists now (modules, app, services) lives as long as the process: keep it out of
    # every later collection.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
    finally:
        if api_server is not None:
            api_server.should_exit = True
        if agent_server is not None and gateway is not None:
            await _close_agent_port(platform, gateway, agent_server)
        if api_task is not None:
            with contextlib.suppress(Exception):
                await api_task
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if platform.nodes is not None:
            with contextlib.suppress(Exception):
                await platform.presence.flush()
                await platform.nodes.leave()
        await platform.close()


async def _close_agent_port(platform: Platform, gateway: AgentGateway, server: Server) -> None:
    """Tell every agent "going away" and be gone within SHUTDOWN_GRACE_SECONDS (docs/adr/0049).

    Stop listening, drop the connections still in their handshake (they hold nothing), put a
    close 1001 on the wire of every session in one pass, wait for the agents to answer, and
    abort whatever has not closed when the grace period ends: a clean close costs a close
    handshake and a TLS close_notify per agent, which for 10,000 agents on a busy core took
    17-23 s, all of it downtime.
    """
    started = time.monotonic()
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_SECONDS
    server.close(close_connections=False)
    handshakes = gateway.abort_handshakes()
    # Half the grace at most for the close frames, the rest for the agents to answer them.
    told = gateway.say_going_away(
        server, "The platform is restarting.", until=deadline - SHUTDOWN_GRACE_SECONDS / 2
    )
    # Returns once every session's handler has returned (its agent answered the close).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await server.wait_closed()
    dropped = gateway.abort_sessions(server)
    log.info(
        "Told %d agents the platform is going away; dropped %d that had not closed in time and "
        "%d in their handshake.",
        told,
        dropped,
        handshakes,
    )
    if dropped:
        # The aborted ones' handlers end at once; their bookkeeping (presence) runs now.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await server.wait_closed()
    await gateway.stop()
    log.info("Agent port closed in %.2f s.", time.monotonic() - started)


async def _flush_presence(platform: Platform, interval: float) -> None:
    """Write last-seen times every `interval` seconds; each write is shielded from the stop.

    Cancelled mid-statement, aiosqlite's thread goes on and its connection keeps SQLite's write
    lock, so the last flush of `Platform.close` waited the whole 10 s busy timeout and then
    failed, the process exiting with a traceback (seen in restart storms, docs/adr/0049).
    """
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.shield(platform.presence.flush())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Could not persist last-seen times; will retry.")


async def _catch_up(platform: Platform, interval: float) -> None:
    """Deliver to the agents connected here what a lost wake-up would have said: revocations,
    cancellations not yet sent over their connection, and policies not yet delivered."""
    while True:
        await asyncio.sleep(interval)
        try:
            await catch_up_once(platform)
        except Exception:
            log.exception("The catch-up sweep failed; it will try again.")


async def catch_up_once(platform: Platform) -> None:
    await platform.hosts.disconnect_all_revoked()
    await platform.dispatcher.cancel_waiting(only_unsent=True)
    await platform.policies.catch_up()


# How often an api process reads which hosts the gateways hold.
PRESENCE_REFRESH_SECONDS = 2.0


# How often the refusal summaries look for tallies a minute old: a summary is written between 60
# and 60 + this many seconds after its first refusal.
REFUSAL_FLUSH_SECONDS = 5.0

# How long agents get to complete a clean close at shutdown before their connections are dropped,
# in all: long enough for the close frames to go out, short enough that a restart is seconds of
# downtime, not the 20 s a clean close of 10,000 connections took (docs/adr/0049).
SHUTDOWN_GRACE_SECONDS = 2.0

# Full collections walk every object of 10,000 connections (about 2 s each on the 2-core machines
# here) and the default thresholds ran five of them in three fan-outs to all agents, half the
# fan-out's time. Larger thresholds make them rare; most garbage is freed by reference counting
# anyway, and cyclic garbage still goes in the young generations (docs/performance.md).
GC_THRESHOLDS = (10_000, 10, 100)


def run(settings: Settings, on_ready: Callable[[], None] | None = None) -> None:
    """Blocking entry point used by `tether server run`."""
    gc.set_threshold(*GC_THRESHOLDS)
    if sys.platform != "win32":
        import uvloop

        uvloop.run(serve(settings, on_ready))
    else:
        asyncio.run(serve(settings, on_ready))
