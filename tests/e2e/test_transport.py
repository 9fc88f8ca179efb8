"""The transport of issue 13 on real processes: the analyst port's TLS profile (sslyze, Mozilla
"intermediate"), certificate lifetimes, renewal with agents staying connected, the warning before
the end, and TLS refusals on the agent port counted in /metrics and summarized in the chain."""

import os
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import certs
from .conftest import enrolled_agent, running_agent
from .harness import (
    Agent,
    Children,
    Cli,
    Platform,
    audit_records,
    log_events,
    restart,
    tether_command,
    wait_for,
    wait_online,
)

SSLYZE = Path(__file__).resolve().parents[2] / ".venv-sslyze" / "bin" / "sslyze"


def sslyze() -> Path:
    if SSLYZE.exists():
        return SSLYZE
    reason = f"{SSLYZE} is missing (bash scripts/sslyze-env.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true: the TLS profile check must run.", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Cli, Agent]]:
    """A platform of the module's own (its certificate is replaced, it is restarted) with a
    running agent."""
    root = tmp_path_factory.mktemp("transport")
    children = Children(root / "logs")
    try:
        platform = Platform(root, children)
        platform.init()
        platform.start()
        admin = platform.login(root / "admin-cli")
        agent = running_agent(platform, admin, children, root / "agent")
        yield platform, admin, agent
    finally:
        children.kill_all()


def served_certificate(platform: Platform) -> x509.Certificate:
    context = platform.ssl_context()
    with (
        socket.create_connection(("127.0.0.1", platform.api_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def lifetime(cert: x509.Certificate) -> timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def metric(platform: Platform, name: str) -> float | None:
    text = httpx.get(f"{platform.url}/metrics", verify=platform.ssl_context()).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[-1])
    return None


# The analyst port's TLS ----------------------------------------------------------------------


def test_the_analyst_port_is_mozilla_intermediate_compliant(platform: Platform) -> None:
    scanner = sslyze()
    result = subprocess.run(
        [str(scanner), "--mozilla_config=intermediate", f"--certinfo_ca_file={platform.ca}",
         f"127.0.0.1:{platform.api_port}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"127.0.0.1:{platform.api_port}: OK - Compliant." in result.stdout


# Old versions are what this client must be able to offer: Python warns that they are old.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize(
    ("version", "ciphers"),
    [
        (ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0"),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384"),
    ],
    ids=["tls1.1", "tls1.2-cbc"],
)
def test_old_protocols_and_cbc_suites_are_refused(
    platform: Platform, version: ssl.TLSVersion, ciphers: str
) -> None:
    context = platform.ssl_context()
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = version
    context.set_ciphers(ciphers)
    with (
        socket.create_connection(("127.0.0.1", platform.api_port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")


def test_a_tls12_client_with_the_profiles_suites_gets_in(platform: Platform) -> None:
    context = platform.ssl_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", platform.api_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
    assert cipher is not None
    assert cipher[0] in {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                         "ECDHE-ECDSA-CHACHA20-POLY1305"}  # fmt: skip


def test_the_certificates_the_platform_issues_live_at_most_398_days(
    platform: Platform, admin: Cli, children: Children, tmp_path: Path
) -> None:
    assert lifetime(served_certificate(platform)).days == 365
    agent = enrolled_agent(platform, admin, children, tmp_path / "agent")
    agent_cert = x509.load_pem_x509_certificate(agent.cert.read_bytes())
    assert lifetime(agent_cert).days == 398


# Renewal ----------------------------------------------------------------------------------


def replace_with_a_certificate_ending_in(platform: Platform, days: int) -> None:
    """A server certificate from the platform CA, for the same names, ending in `days` days."""
    ca_cert, ca_key = certs.load_ca(platform.data)
    current = x509.load_pem_x509_certificate((platform.data / "server.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=300))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (platform.data / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (platform.data / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_a_certificate_near_its_end_is_warned_about_and_renewed_with_agents_staying(
    own: tuple[Platform, Cli, Agent],
) -> None:
    platform, admin, agent = own
    assert platform.stop() == 0
    replace_with_a_certificate_ending_in(platform, days=10)
    platform.start()
    left = metric(platform, "tether_server_certificate_expiry_seconds")
    assert left is not None
    assert 9 * 86400 < left < 10 * 86400
    warnings = [str(e["event"]) for e in log_events(platform.log()) if e.get("level") == "warning"]
    assert any(
        re.fullmatch(
            r"The server certificate expires on .* UTC, in 9 days; run 'tether server renew-cert "
            r"--data DIR' and restart the platform\.",
            w,
        )
        for w in warnings
    ), warnings

    result = subprocess.run(
        [*tether_command(), "server", "renew-cert", "--data", str(platform.data)],
        capture_output=True, text=True, env=platform.env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "restart the platform to serve it." in result.stdout
    restart(platform)
    served = served_certificate(platform)
    assert lifetime(served).days == 365
    assert f"New server certificate {served.serial_number:x} " in result.stdout
    left = metric(platform, "tether_server_certificate_expiry_seconds")
    assert left is not None
    assert left > 364 * 86400
    # The agents pin the CA, not the certificate: they come back by themselves.
    with admin.api() as api:
        wait_online(api, agent.host_id, timeout=30)
    renewals = [r for r in audit_records(admin) if r["action"] == "platform.renew_cert"]
    assert [r["details"]["serial"] for r in renewals] == [f"{served.serial_number:x}"]


# TLS refusals on the agent port ----------------------------------------------------------------


def refused_handshake(
    platform: Platform, cert: Path | None = None, key: Path | None = None
) -> None:
    """A TLS handshake on the agent port the platform refuses (no or a foreign certificate)."""
    context = platform.ssl_context()
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", platform.agent_port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert tls.recv(4096) == b""
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass


def test_refused_handshakes_are_counted_and_summarized(
    own: tuple[Platform, Cli, Agent], tmp_path: Path
) -> None:
    platform, admin, _ = own
    no_cert = 'tether_agent_tls_refusals_total{reason="no client certificate"}'
    foreign = 'tether_agent_tls_refusals_total{reason="certificate not accepted"}'
    before_counts = (metric(platform, no_cert) or 0.0, metric(platform, foreign) or 0.0)
    before = len(audit_records(admin))
    for _ in range(20):
        refused_handshake(platform)
    cert, key, _ = certs.client_cert(certs.new_ca("Not Tether"), tmp_path, "stranger")
    for _ in range(3):
        refused_handshake(platform, cert, key)
    wait_for(
        lambda: (
            (metric(platform, no_cert), metric(platform, foreign))
            == (before_counts[0] + 20, before_counts[1] + 3)
        ),
        timeout=10,
        what="the refusals in /metrics",
    )
    restart(platform)
    summaries = [r for r in audit_records(admin)[before:] if r["action"] == "agent.tls_refused"]
    assert len(summaries) == 1
    assert (summaries[0]["actor"], summaries[0]["target"], summaries[0]["outcome"]) == (
        "unauthenticated",
        "127.0.0.1",
        "failure",
    )
    assert summaries[0]["details"]["count"] == 23
    assert summaries[0]["details"]["reasons"] == {
        "certificate not accepted": 3,
        "no client certificate": 20,
    }
