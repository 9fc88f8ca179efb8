"""`tether agent enroll`: key pair on the endpoint, CSR to the platform, certificate back.

The private key is generated here and never leaves the endpoint. The platform's CA is fetched
over an unauthenticated TLS connection and accepted only if its SHA-256 matches the fingerprint
carried in the token; everything after that is verified against it.
"""

import hashlib
import re
import socket
import ssl

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.agent.errors import EnrollmentFailed
from tether.agent.state import Identity, StateDir
from tether.agent.upgrade_files import UPGRADE_KEY_FILE
from tether.protocol import (
    MAX_HOSTNAME,
    EnrollmentToken,
    EnrollRequest,
    EnrollResponse,
    safe_text,
)

TIMEOUT = httpx.Timeout(15.0)
_UPGRADE_KEY = re.compile(r"^[0-9a-f]{64}$")
# Beside the identity: the key upgrades must be signed with (tether.agent.upgrade.KEY_FILE).


def _fetch_ca(server_url: str, expected_sha256: str) -> bytes:
    # Unverified on purpose: the CA is not known yet. What comes back is checked against the
    # fingerprint from the token before anything else is trusted.
    try:
        response = httpx.get(f"{server_url}/api/v1/enroll/ca", verify=False, timeout=TIMEOUT)  # noqa: S501
    except httpx.HTTPError as exc:
        raise EnrollmentFailed(f"Cannot reach the platform at {server_url}: {exc}.") from exc
    if response.status_code != 200:
        raise EnrollmentFailed(
            f"The platform at {server_url} did not hand out its CA (HTTP {response.status_code})."
        )
    pem = response.content
    try:
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError as exc:
        raise EnrollmentFailed(f"The server at {server_url} sent no valid CA certificate.") from exc
    if hashlib.sha256(der).hexdigest() != expected_sha256:
        raise EnrollmentFailed(
            f"The CA presented by {server_url} does not match the token's fingerprint; "
            "refusing to enroll (possible interception)."
        )
    return pem


def _csr(key: ec.EllipticCurvePrivateKey, hostname: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _problem(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail) if detail else f"HTTP {response.status_code}"


def _fetch_upgrade_key(server_url: str, context: ssl.SSLContext) -> bytes | None:
    """The platform's upgrade key (hex of 32 bytes), over the CA pinned from the token; None
    from a platform without one. An agent without it refuses every upgrade (docs/adr/0051)."""
    try:
        response = httpx.get(
            f"{server_url}/api/v1/enroll/upgrade-key", verify=context, timeout=TIMEOUT
        )
    except httpx.HTTPError as exc:
        raise EnrollmentFailed(
            f"Cannot fetch the platform's upgrade key from {server_url}: {exc}."
        ) from exc
    if response.status_code == 404:
        return None
    text = response.text.strip()
    if response.status_code != 200 or not _UPGRADE_KEY.match(text):
        raise EnrollmentFailed(
            f"The platform at {server_url} sent no valid upgrade key (HTTP {response.status_code})."
        )
    return text.encode() + b"\n"


def enroll(token_text: str, state: StateDir, hostname: str | None = None) -> Identity:
    """Enroll this endpoint; on any failure the state directory is left as it was."""
    token = EnrollmentToken.decode(token_text)
    # Refused before anything is generated or fetched: the key must never land where another
    # account created the directory (a planted `agent.key.tmp` link, a group-writable folder).
    state.secure(create=False)
    if state.is_enrolled():
        raise EnrollmentFailed(
            f"{state.root} already holds an enrolled identity; use another --state-dir "
            "or remove it first."
        )
    ca_pem = _fetch_ca(token.server_url, token.ca_sha256)
    key = ec.generate_private_key(ec.SECP256R1())
    name = hostname or socket.gethostname() or "unknown"
    request = EnrollRequest(
        secret=token.secret,
        csr_pem=_csr(key, name),
        hostname=safe_text(name, MAX_HOSTNAME),
        reads_agent_addresses=True,
    )
    context = ssl.create_default_context(cadata=ca_pem.decode())
    # Before the token is spent: a failure here leaves the token usable for another try.
    upgrade_key = _fetch_upgrade_key(token.server_url, context)
    try:
        response = httpx.post(
            f"{token.server_url}/api/v1/enroll",
            content=request.model_dump_json(),
            headers={"content-type": "application/json"},
            verify=context,
            timeout=TIMEOUT,
        )
    except httpx.HTTPError as exc:
        raise EnrollmentFailed(f"Enrollment request to {token.server_url} failed: {exc}.") from exc
    if response.status_code != 200:
        raise EnrollmentFailed(f"The platform refused enrollment: {_problem(response)}")
    try:
        answer = EnrollResponse.model_validate_json(response.content)
        cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
    except ValueError as exc:
        raise EnrollmentFailed("The platform's enrollment answer is not valid.") from exc
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise EnrollmentFailed("The platform returned a certificate for a different key.")
    # Key first, identity last: an agent directory is enrolled only once every file is in place.
    state.write_private(
        state.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    state.write_private(state.cert, answer.certificate_pem.encode())
    state.write_private(state.ca, ca_pem)
    if upgrade_key is not None:
        state.write_private(state.root / UPGRADE_KEY_FILE, upgrade_key)
    if answer.agent_addresses:
        state.write_agent_addresses(list(answer.agent_addresses))
    identity = Identity(
        host_id=answer.host_id, server_url=token.server_url, agent_url=answer.agent_url
    )
    state.write_identity(identity)
    return identity
