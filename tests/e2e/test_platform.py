"""A real platform, real agents and the real CLI over loopback with mutual TLS.

The tests of this module share one platform and run in order: the last one checks that the audit
chain written by all of them is intact, then cuts its newest record off and sees that caught.
"""

import asyncio
import json
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tether import __version__
from tether.agent import sysinfo
from tether.protocol import MAX_FRAME_BYTES, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, Welcome
from tether.protocol.messages import parse_platform_message
from tether.server.gateway.server import UNKNOWN_HOST

from . import certs
from .conftest import enrolled_agent, running_agent
from .harness import (
    Agent,
    Children,
    Cli,
    Platform,
    audit_records,
    host_by_id,
    log_events,
    wait_for,
    wait_online,
)

pytestmark = pytest.mark.e2e

EXIT_REFUSED = 78


@pytest.fixture(scope="module")
def module_children(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Children]:
    registry = Children(tmp_path_factory.mktemp("agents") / "logs")
    try:
        yield registry
    finally:
        registry.kill_all()


@pytest.fixture(scope="module")
def agent(
    platform: Platform,
    admin: Cli,
    module_children: Children,
    tmp_path_factory: pytest.TempPathFactory,
) -> Agent:
    """One agent that stays connected through the module, in a segment of its own (`lab` is
    test_segments.py's, which creates and deletes it on the same session platform)."""
    admin.ok("segment", "create", "platform-lab")
    return running_agent(
        platform,
        admin,
        module_children,
        tmp_path_factory.mktemp("agent-a") / "state",
        "platform-lab",
    )


@pytest.fixture(scope="module")
def raw_identity(
    platform: Platform,
    admin: Cli,
    module_children: Children,
    tmp_path_factory: pytest.TempPathFactory,
) -> Agent:
    """An enrolled identity that no agent process uses: the raw WebSocket clients borrow it."""
    return enrolled_agent(
        platform, admin, module_children, tmp_path_factory.mktemp("raw") / "state"
    )


def still_serving(platform: Platform, admin: Cli, agent: Agent) -> None:
    """The platform answers and the long-lived agent is still connected to it."""
    assert platform.proc is not None
    assert platform.proc.alive()
    assert platform.healthy()
    assert agent.proc is not None
    assert agent.proc.alive()
    with admin.api() as api:
        host = host_by_id(api, agent.host_id)
    assert host is not None
    assert host["online"] is True


# 1. Enrollment, inventory, round trip ------------------------------------------------------


def test_enrolled_agent_is_listed_online_and_answers_ping(admin: Cli, agent: Agent) -> None:
    hosts = admin.json("hosts")
    mine = [h for h in hosts if h["id"] == agent.host_id]
    assert len(mine) == 1
    host = mine[0]
    expected = sysinfo.hello()
    assert host["hostname"] == socket.gethostname() == expected.hostname
    assert host["os_family"] == expected.os.family
    assert host["os_name"] == expected.os.name
    assert host["os_version"] == expected.os.version
    assert host["addresses"] == expected.addresses
    assert host["segment"] == "platform-lab"
    assert host["online"] is True
    assert host["revoked"] is False
    assert host["agent_version"] == __version__
    assert host["last_seen"] is not None

    report = admin.json("ping", agent.host_id)
    assert report["asked"] == 1
    assert report["answered"] == 1
    assert report["failed"] == {}
    # The readable form of both commands.
    assert "1 of 1 answered" in admin.ok("ping", agent.host_id)
    assert agent.host_id in admin.ok("hosts")


# 2. Platform restart ------------------------------------------------------------------------


def test_agent_reconnects_by_itself_after_platform_restart(
    platform: Platform, admin: Cli, agent: Agent
) -> None:
    assert agent.proc is not None
    before = {h["id"] for h in admin.json("hosts")}
    assert platform.stop(signal.SIGTERM) == 0

    # The agent saw the platform go and stays up, retrying.
    wait_for(
        lambda: "Connection to" in agent.proc.output() if agent.proc else False,
        timeout=10,
        what="the agent to notice the platform went away",
    )
    assert agent.proc.alive()

    started = time.monotonic()
    platform.start()
    with admin.api() as api:
        wait_online(api, agent.host_id, timeout=30)
    reconnect = time.monotonic() - started
    assert agent.proc.alive()
    assert reconnect < 30, f"reconnected after {reconnect:.1f} s"

    hosts = admin.json("hosts")
    assert {h["id"] for h in hosts} == before  # the same host, not a new enrollment
    (host,) = (h for h in hosts if h["id"] == agent.host_id)
    assert host["online"] is True
    assert admin.json("ping", agent.host_id)["answered"] == 1


# 3. Revocation ------------------------------------------------------------------------------


def test_revoke_closes_the_live_connection_within_a_second(
    platform: Platform, admin: Cli, children: Children, tmp_path: Path, agent: Agent
) -> None:
    victim = running_agent(platform, admin, children, tmp_path / "victim")
    assert victim.proc is not None

    revoked = admin.json("host", "revoke", victim.host_id)
    returned = time.monotonic()
    assert revoked["revoked"] is True

    with admin.api() as api:
        offline_after = wait_online(api, victim.host_id, online=False, timeout=5)
    status = victim.proc.wait(timeout=5)
    exited_after = time.monotonic() - returned
    assert offline_after <= 1.0, f"still online {offline_after:.2f} s after the revoke"
    assert exited_after <= 1.0, f"the agent took {exited_after:.2f} s to exit"
    assert status == EXIT_REFUSED
    output = victim.proc.output()
    assert "The platform refused this agent" in output
    assert "revoked" in output
    assert output.count("Connected to") == 1  # it did not spin

    # The same identity is refused again, at once, with the same status.
    again = victim.start()
    assert again.wait(timeout=15) == EXIT_REFUSED
    assert "The platform refused this agent: This host's certificate was revoked." in (
        again.output()
    )

    records = audit_records(admin)
    revokes = [r for r in records if r["action"] == "host.revoke"]
    assert revokes[-1]["target"] == f"host:{victim.host_id}"
    assert revokes[-1]["actor"] == "admin"
    refusals = [
        r
        for r in records
        if r["action"] == "agent.connect"
        and r["outcome"] == "failure"
        and r["target"] == f"host:{victim.host_id}"
    ]
    assert len(refusals) >= 1
    assert refusals[-1]["details"]["reason"] == "This host's certificate was revoked."
    assert admin.json("host", "show", victim.host_id)["revoked"] is True
    still_serving(platform, admin, agent)


# 4. Bad input on the agent port ----------------------------------------------------------------


def tls_attempt(platform: Platform, cert: Path | None, key: Path | None) -> int:
    """Open TLS to the agent port and ask for a WebSocket; returns the local port used.

    The connection must die before any WebSocket answer. Under TLS 1.3 the server checks the
    client certificate after the client has finished its half of the handshake, so the client
    learns of the refusal on its first read. uvloop (like asyncio before CPython gh-98078) drops
    the connection without sending the TLS alert, so the client sees the connection closed
    (EOF or reset) rather than an alert naming the reason; both are accepted here.
    """
    context = ssl.create_default_context(cafile=str(platform.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", platform.agent_port), timeout=10) as raw:
        local_port = int(raw.getsockname()[1])
        answer = b""
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(
                    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                answer = tls.recv(4096)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass
    assert answer == b"", f"the TLS handshake was not refused; the platform answered {answer!r}"
    return local_port


def test_an_agent_whose_certificate_expired_stops_with_the_reason_instead_of_spinning(
    platform: Platform, admin: Cli, children: Children, tmp_path: Path
) -> None:
    agent = enrolled_agent(platform, admin, children, tmp_path / "stale")
    now = datetime.now(UTC)
    cert, key, _ = certs.client_cert(
        certs.load_ca(platform.data),
        tmp_path,
        "stale",
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    agent.cert.write_bytes(cert.read_bytes())
    agent.key.write_bytes(key.read_bytes())

    proc = agent.start()
    assert proc.wait(timeout=30) == EXIT_REFUSED
    output = proc.output()
    assert "The agent certificate expired on" in output
    assert "enroll the agent again" in output
    assert "Reconnecting to" not in output


def refused_handshake_logged(platform: Platform, local_port: int, reason: str) -> bool:
    return any(
        f"TLS handshake refused from 127.0.0.1:{local_port}: " in message and reason in message
        for message in (str(event.get("event")) for event in log_events(platform.log()))
    )


@pytest.mark.parametrize("case", ["no-certificate", "other-ca", "expired"])
def test_certificates_refused_in_the_tls_handshake_are_logged_with_the_peer(
    platform: Platform, admin: Cli, agent: Agent, tmp_path: Path, case: str
) -> None:
    cert: Path | None = None
    key: Path | None = None
    if case == "other-ca":
        cert, key, _ = certs.client_cert(certs.new_ca("Not Tether"), tmp_path, "stranger")
        reason = "unable to get local issuer certificate"
    elif case == "expired":
        now = datetime.now(UTC)
        cert, key, _ = certs.client_cert(
            certs.load_ca(platform.data),
            tmp_path,
            "expired",
            not_before=now - timedelta(days=30),
            not_after=now - timedelta(days=1),
        )
        reason = "certificate has expired"
    else:
        reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"

    local_port = tls_attempt(platform, cert, key)
    wait_for(
        lambda: refused_handshake_logged(platform, local_port, reason),
        timeout=5,
        what=f"the platform to log the refused handshake from 127.0.0.1:{local_port} ({reason})",
    )
    still_serving(platform, admin, agent)


def agent_context(platform: Platform, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(platform.ca))
    context.load_cert_chain(str(cert), str(key))
    return context


async def open_raw(platform: Platform, cert: Path, key: Path) -> ClientConnection:
    return await connect(
        f"wss://127.0.0.1:{platform.agent_port}",
        ssl=agent_context(platform, cert, key),
        compression=None,
        open_timeout=10,
        close_timeout=2,
        ping_interval=None,
        proxy=None,
    )


async def close_of(ws: ClientConnection) -> tuple[int, str]:
    """Read until the platform closes the connection; returns its close code and reason."""
    closed: ConnectionClosed
    try:
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        closed = exc
    if closed.rcvd is None:
        raise AssertionError(f"closed without a close frame: {closed!r}")
    return closed.rcvd.code, closed.rcvd.reason


def hello(protocol_version: int = PROTOCOL_VERSION) -> str:
    return (
        sysinfo.hello().model_copy(update={"protocol_version": protocol_version}).model_dump_json()
    )


def connect_refusals(admin: Cli, target: str) -> list[dict[str, Any]]:
    return [
        r
        for r in audit_records(admin)
        if r["action"] == "agent.connect" and r["outcome"] == "failure" and r["target"] == target
    ]


def new_refusals(admin: Cli, target: str, before: int) -> list[dict[str, Any]]:
    """The refusals of `target` after the first `before`, waited for: the gateway closes first
    and records after (the agent learns why at once), so the record can trail the close."""
    return wait_for(
        lambda: connect_refusals(admin, target)[before:],
        timeout=10,
        what=f"a new refusal of {target} in the audit log",
    )


async def test_unknown_certificate_from_the_real_ca_is_refused_and_audited(
    platform: Platform, admin: Cli, agent: Agent, tmp_path: Path
) -> None:
    cert, key, serial = certs.client_cert(certs.load_ca(platform.data), tmp_path, "unknown")
    async with await open_raw(platform, cert, key) as ws:
        code, reason = await close_of(ws)
    assert code == 4001
    assert reason == UNKNOWN_HOST
    (record,) = new_refusals(admin, f"cert:{serial:x}", 0)
    assert record["details"]["cert_serial"] == f"{serial:x}"
    assert record["source"].startswith("127.0.0.1:")
    still_serving(platform, admin, agent)


async def test_garbage_frame_is_refused_and_audited(
    platform: Platform, admin: Cli, agent: Agent, raw_identity: Agent
) -> None:
    before = len(connect_refusals(admin, f"host:{raw_identity.host_id}"))
    async with await open_raw(platform, raw_identity.cert, raw_identity.key) as ws:
        await ws.send("this is not a hello {")
        code, reason = await close_of(ws)
    assert code == 4000
    assert reason.startswith("Malformed agent message")
    records = new_refusals(admin, f"host:{raw_identity.host_id}", before)
    assert len(records) == 1
    assert records[-1]["details"]["reason"] == reason
    still_serving(platform, admin, agent)


@pytest.mark.parametrize("when", ["instead-of-hello", "after-welcome"])
async def test_oversized_frame_is_refused_and_audited(
    platform: Platform, admin: Cli, agent: Agent, raw_identity: Agent, when: str
) -> None:
    before = len(connect_refusals(admin, f"host:{raw_identity.host_id}"))
    async with await open_raw(platform, raw_identity.cert, raw_identity.key) as ws:
        if when == "after-welcome":
            await ws.send(hello())
            welcome = parse_platform_message(await ws.recv())
            assert isinstance(welcome, Welcome)
            assert welcome.host_id == raw_identity.host_id
        await ws.send("x" * (MAX_FRAME_BYTES + 1))
        code, _reason = await close_of(ws)
    assert code == 1009
    records = new_refusals(admin, f"host:{raw_identity.host_id}", before)
    assert len(records) == 1
    assert "WebSocket protocol violation" in records[0]["details"]["reason"]
    still_serving(platform, admin, agent)


@pytest.mark.parametrize(
    ("version", "upgrade"),
    [(999, "upgrade the platform before its agents."), (0, "upgrade the agent.")],
)
async def test_unknown_protocol_version_is_refused_with_the_supported_one(
    platform: Platform,
    admin: Cli,
    agent: Agent,
    raw_identity: Agent,
    version: int,
    upgrade: str,
) -> None:
    before = len(connect_refusals(admin, f"host:{raw_identity.host_id}"))
    async with await open_raw(platform, raw_identity.cert, raw_identity.key) as ws:
        await ws.send(hello(protocol_version=version))
        code, reason = await close_of(ws)
    assert code == 4002
    assert f"protocol version {PROTOCOL_VERSION}" in reason
    assert f"not {version};" in reason
    assert reason.endswith(upgrade)
    record = new_refusals(admin, f"host:{raw_identity.host_id}", before)[-1]
    assert record["details"]["protocol_version"] == version
    assert record["details"]["reason"] == reason
    still_serving(platform, admin, agent)


@pytest.mark.parametrize("version", [OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION])
async def test_the_previous_protocol_version_is_served_in_its_own_shape(
    platform: Platform, raw_identity: Agent, version: int
) -> None:
    async with await open_raw(platform, raw_identity.cert, raw_identity.key) as ws:
        await ws.send(hello(protocol_version=version))
        welcome = parse_platform_message(await ws.recv())
        assert isinstance(welcome, Welcome)
        policy = json.loads(await ws.recv())
    assert policy["type"] == "policy"
    # Version 1 agents refused the allowlist field (docs/protocol.md, "Versions").
    assert ("isolation_allow" in policy) is (version == PROTOCOL_VERSION)
    with sqlite3.connect(platform.db) as db:
        (recorded,) = db.execute(
            "SELECT protocol_version FROM hosts WHERE id = ?", (raw_identity.host_id,)
        ).fetchone()
    assert recorded == version


# 5. Enrollment tokens past their uses or expiry ----------------------------------------------


def enroll_failures(admin: Cli) -> list[dict[str, Any]]:
    return [
        r
        for r in audit_records(admin)
        if r["action"] == "agent.enroll" and r["outcome"] == "failure"
    ]


def assert_refused_enrollment(result: Any, state_dir: Path) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tether: The platform refused enrollment: ")
    assert "used up or expired" in lines[0]
    assert "Traceback" not in result.stderr
    assert not state_dir.exists() or not any(state_dir.iterdir())


def test_token_used_past_its_uses_is_refused_and_audited(
    platform: Platform, admin: Cli, children: Children, tmp_path: Path
) -> None:
    token = admin.json("enroll-token", "create", "--uses", "1")["token"]
    first = Agent(tmp_path / "first", children, platform.env)
    assert first.enroll(token).returncode == 0
    failures = len(enroll_failures(admin))

    second = Agent(tmp_path / "second", children, platform.env)
    assert_refused_enrollment(second.enroll(token), second.state_dir)
    records = enroll_failures(admin)
    assert len(records) == failures + 1
    assert "used up or expired" in records[-1]["details"]["reason"]


def test_token_past_its_expiry_is_refused_and_audited(
    platform: Platform, admin: Cli, children: Children, tmp_path: Path
) -> None:
    created = admin.json("enroll-token", "create", "--uses", "5", "--expires", "1m")
    # Waiting a minute is too long for a test: move the expiry into the past in the database.
    with sqlite3.connect(platform.db, timeout=10) as db:
        db.execute(
            "UPDATE enrollment_tokens SET expires_at = ? WHERE id = ?",
            ("2000-01-01 00:00:00.000000", created["id"]),
        )
    failures = len(enroll_failures(admin))

    late = Agent(tmp_path / "late", children, platform.env)
    assert_refused_enrollment(late.enroll(created["token"]), late.state_dir)
    assert len(enroll_failures(admin)) == failures + 1
    (token,) = (t for t in admin.json("enroll-token", "list") if t["id"] == created["id"])
    assert token["uses"] == 0


# 6. The audit chain after all of the above --------------------------------------------------


def test_audit_chain_is_intact_after_all_of_the_above(platform: Platform, admin: Cli) -> None:
    out = admin.ok("audit", "verify")
    assert out.startswith("Intact: ")
    report = admin.json("audit", "verify")
    assert report["intact"] is True
    assert report["checkpoint_seq"] == report["head_seq"] == report["records"]
    actions = {r["action"] for r in audit_records(admin)}
    assert {"auth.login", "agent.enroll", "host.revoke", "agent.connect"} <= actions
    exported = [json.loads(line) for line in admin.ok("audit", "export", "--jsonl").splitlines()]
    # The platform may append between the two commands (a refusal summary a minute after this
    # module's refusals, sooner or later with the worker's pace): the export holds at least what
    # was verified, in the same order.
    assert len(exported) >= report["records"]
    assert [r["seq"] for r in exported[: report["records"]]] == list(
        range(1, report["records"] + 1)
    )


def test_a_chain_cut_off_at_its_head_is_caught(tmp_path: Path, children: Children) -> None:
    # A platform of its own: the session platform is shared by every e2e module on this worker,
    # and a chain left cut off there would answer BROKEN to whichever module verifies it next.
    platform = Platform(tmp_path / "cut", children)
    platform.root.mkdir()
    platform.init()
    platform.start()
    admin = platform.login(tmp_path / "cut-cli")
    admin.ok("segment", "create", "cut-lab")
    assert admin.ok("audit", "verify").startswith("Intact: ")

    assert platform.stop(signal.SIGTERM) == 0
    with sqlite3.connect(platform.db, timeout=10) as db:
        (head,) = db.execute("SELECT max(seq) FROM audit_records").fetchone()
        (prev_hash,) = db.execute(
            "SELECT hash FROM audit_records WHERE seq = ?", (head - 1,)
        ).fetchone()
        db.execute("DELETE FROM audit_records WHERE seq = ?", (head,))
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (head - 1, prev_hash))
    platform.start()

    result = admin.run("audit", "verify")
    assert result.returncode == 1
    assert result.stdout.startswith("BROKEN: The newest records were cut off")
    assert f"covers record {head}" in result.stdout
    assert f"ends at record {head - 1}" in result.stdout
    broken = admin.run("audit", "verify", "--json")
    assert broken.returncode == 1
