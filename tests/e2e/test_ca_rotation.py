"""CA rotation with real processes: a running agent moves to the new CA over its own connection
and then holds only the new CA and certificate; an agent that was offline blocks the end of the
rotation (named in the refusal) until it connects and moves too; after the end, jobs run with
the new certificates, and a copy of an agent's old certificate is refused, during the rotation by
the platform's host table and after it in the TLS handshake. Everything is on the chain."""

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from cryptography import x509

from tether.server.gateway.server import UNKNOWN_HOST

from .conftest import enrolled_agent, running_agent
from .harness import Agent, Children, Platform, tether_command, wait_for, wait_online


def _server(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tether_command(), "server", *args, "--data", str(platform.data)],
        capture_output=True,
        text=True,
        # The harness gives the ports on the command line; the command looks for the
        # platform where it listens.
        env={**platform.env, "TETHER_LISTEN": f"{platform.listen_host}:{platform.api_port}"},
        timeout=120,
        check=False,
    )


def _pins(agent: Agent) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((agent.state_dir / "ca.pem").read_bytes())


def _issuer(agent: Agent) -> x509.Name:
    return x509.load_pem_x509_certificate(agent.cert.read_bytes()).issuer


def _moved(agent: Agent, ca: x509.Certificate, *, alone: bool = False) -> bool:
    """The agent holds a certificate of `ca` and pins it (`alone`: and no other CA)."""
    try:
        pins = [p.subject for p in _pins(agent)]
        held = _issuer(agent) == ca.subject and ca.subject in pins
        return held and (not alone or pins == [ca.subject])
    except (OSError, ValueError):
        return False  # caught between two writes


def _refused_in_tls(platform: Platform, cert: Path, key: Path, trust: Path) -> bool:
    """A TLS connection to the agent port with this client certificate ends without a byte
    from the server (TLS 1.3 refuses a client certificate after the client's side of the
    handshake: the refusal shows as an alert or as the connection closed)."""
    context = ssl.create_default_context(cafile=str(trust))
    context.load_cert_chain(str(cert), str(key))
    context.check_hostname = False
    address = ("127.0.0.1", platform.agent_port)
    try:
        with (
            socket.create_connection(address, timeout=10) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_rotate_the_ca_agents_move_over_their_connections_and_old_certificates_are_refused(
    tmp_path: Path, children: Children
) -> None:
    platform = Platform(tmp_path / "p", children)
    platform.root.mkdir()
    platform.init()
    platform.start()
    admin = platform.login(tmp_path / "admin-cli")
    admin.ok("segment", "create", "ir")
    admin.ok("segment", "set", "ir", "--active-response", "on")
    live = running_agent(platform, admin, children, tmp_path / "live", segment="ir")
    offline = enrolled_agent(platform, admin, children, tmp_path / "offline", segment="ir")
    old_copy = tmp_path / "old-copy"
    shutil.copytree(live.state_dir, old_copy)
    old_ca = x509.load_pem_x509_certificate(platform.ca.read_bytes())

    # Not while the platform runs: it holds the CA in memory.
    running = _server(platform, "rotate-key", "ca")
    assert running.returncode != 0
    assert "The platform is running" in running.stderr
    assert platform.stop() == 0
    started = _server(platform, "rotate-key", "ca")
    assert started.returncode == 0, started.stderr
    assert "(2 to move)" in started.stdout
    new_ca = x509.load_pem_x509_certificate((platform.data / "ca-next.pem").read_bytes())
    assert new_ca.subject != old_ca.subject
    again = _server(platform, "rotate-key", "ca")
    assert "A CA rotation is already under way" in again.stderr
    platform.start()

    # The running agent reconnects through the cross-certificate, asks, and moves.
    wait_for(lambda: _moved(live, new_ca), timeout=90, what="the live agent to move")
    with admin.api() as api:
        wait_online(api, live.host_id, timeout=60)
    quick = tmp_path / "quick.py"
    quick.write_text("print('under the new CA')\n")
    ran = admin.run("run", live.host_id, str(quick), timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "under the new CA" in ran.stdout
    # Both CAs pinned until the platform presents a certificate of the new one.
    assert [p.subject for p in _pins(live)] == [old_ca.subject, new_ca.subject]
    # Once the host moved, a copy of its old certificate is no longer its certificate.
    thief = Agent(old_copy, children, platform.env)
    thief.start()
    assert thief.proc is not None
    assert thief.proc.wait(60) != 0
    assert UNKNOWN_HOST in thief.proc.output()

    # The host that was offline still holds the old CA's certificate: the end waits for it.
    assert platform.stop() == 0
    refused = _server(platform, "rotate-key", "ca", "--finish")
    assert refused.returncode != 0
    said = " ".join(refused.stderr.split())
    assert "1 host(s) still hold a certificate of the old CA:" in said
    assert offline.host_id in said
    assert live.host_id not in said
    platform.start()
    offline.start()
    wait_for(lambda: _moved(offline, new_ca), timeout=90, what="the offline agent to move")
    with admin.api() as api:
        wait_online(api, offline.host_id, timeout=60)

    assert platform.stop() == 0
    finished = _server(platform, "rotate-key", "ca", "--finish")
    assert finished.returncode == 0, finished.stderr
    assert not (platform.data / "ca-next.pem").exists()
    assert x509.load_pem_x509_certificate(platform.ca.read_bytes()) == new_ca
    platform.start()
    # The CLI pinned the old CA: after the end it takes the new one, as a new analyst would.
    admin = platform.login(tmp_path / "admin-cli-2")
    with admin.api() as api:
        wait_online(api, live.host_id, timeout=90)
    wait_for(lambda: _moved(live, new_ca, alone=True), timeout=30, what="the old pin to go")
    assert not (live.state_dir / "agent-previous.key").exists()
    ran = admin.run("run", live.host_id, str(quick), timeout=120)
    assert ran.returncode == 0, ran.stderr
    # Only the new CA is trusted: the old certificate fails in the TLS handshake itself.
    assert _refused_in_tls(platform, old_copy / "agent.pem", old_copy / "agent.key", platform.ca)
    assert "TLS handshake refused" in platform.log()
    # ...and the live agent's new certificate is taken by the same handshake.
    assert not _refused_in_tls(platform, live.cert, live.key, platform.ca)

    verified = admin.run("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = admin.json("audit", "list", "--json", "--limit", "1000")
    actions = [r["action"] for r in records] if isinstance(records, list) else []
    assert actions.count("host.certificate") >= 2
    assert actions.count("host.certificate_adopted") >= 2
    assert actions.count("platform.rotate_key") == 2
