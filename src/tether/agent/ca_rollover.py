"""The agent's half of a CA rotation (docs/adr/0048-postgresql-backup-faster-restore-ca-rotation.md).

After each welcome the agent looks at the certificate the platform presented (validated against
the CA it pins). When it names a next CA (`NEXT_CA_OID`: the platform is rotating its CA) and
this agent's certificate is not of that CA yet, the agent makes a new key and sends a CSR
(`ca.rekey`). Given its certificate under the next CA (`ca.certificate`), it checks it: the CA
is the one the platform's certificate names (by SHA-256: the current CA vouches for it), the
certificate is that CA's and for the key just made. It then keeps the old certificate and key
beside the new ones (`agent-previous.*`), pins both CAs, and reconnects with the new
certificate. The old pin goes once the platform presents a certificate of the new CA (after
`rotate-key ca --finish`). The private key never leaves the endpoint, as at enrollment.
"""

import hashlib
import json
import logging

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.agent.ca_watch import MARKER, RolloverRefused
from tether.agent.state import StateDir
from tether.protocol.ca_rollover import NEXT_CA_OID, CaCertificate, CaRekey

log = logging.getLogger(__name__)

NEXT_KEY = "agent-next.key"
PREVIOUS_CERT = "agent-previous.pem"
PREVIOUS_KEY = "agent-previous.key"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class CaRollover:
    """Moves this agent's certificate and pins to a platform's new CA."""

    def __init__(self, state: StateDir) -> None:
        self._state = state

    def _pinned(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self._state.ca.read_bytes())

    def connected(self, server_der: bytes | None) -> CaRekey | None:
        """Called after each welcome with the platform's certificate: drops the old pin once the
        platform's certificate is of the new CA, and returns a `ca.rekey` to send when the
        platform names a next CA this agent's certificate is not of yet."""
        if server_der is None:
            return None
        server = x509.load_der_x509_certificate(server_der)
        self._finish_move(server)
        wanted = next_ca(server)
        if wanted is None or self._holds(wanted):
            return None
        key = ec.generate_private_key(ec.SECP256R1())
        self._state.write_private(
            self._state.root / NEXT_KEY,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        host_id = self._state.identity().host_id
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_id)]))
            .sign(key, hashes.SHA256())
        )
        log.info("The platform is moving to a new CA; asking for a certificate under it")
        return CaRekey(csr=csr.public_bytes(serialization.Encoding.PEM).decode())

    def _holds(self, ca_sha256: str) -> bool:
        """This agent's certificate is one of the CA named by `ca_sha256`."""
        mine = x509.load_pem_x509_certificate(self._state.cert.read_bytes())
        return any(_sha256(ca) == ca_sha256 and mine.issuer == ca.subject for ca in self._pinned())

    def accept(self, message: CaCertificate, server_der: bytes | None) -> None:
        """Check and keep the certificate and CA the platform sent; RolloverRefused (nothing
        changed) when they do not hold together."""
        next_key_path = self._state.root / NEXT_KEY
        if server_der is None or not next_key_path.is_file():
            raise RolloverRefused("A new certificate arrived that this agent did not ask for.")
        try:
            key = serialization.load_pem_private_key(next_key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(message.certificate.encode())
            ca = x509.load_pem_x509_certificate(message.ca.encode())
            server = x509.load_der_x509_certificate(server_der)
        except ValueError as exc:
            raise RolloverRefused(f"The new certificate or CA is unreadable ({exc}).") from exc
        if next_ca(server) != _sha256(ca):
            # Only the CA the platform's own certificate names (under the pinned CA) is taken.
            raise RolloverRefused("The new CA is not the one the platform's certificate names.")
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RolloverRefused("The key kept for the new certificate is not an ECDSA key.")
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or _public(public) != _public(
            key.public_key()
        ):
            raise RolloverRefused("The new certificate is not for the key this agent made.")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise RolloverRefused("The new certificate is not signed by the new CA.") from exc
        state = self._state
        old_pins = [c for c in self._pinned() if _sha256(c) != _sha256(ca)]
        state.write_private(state.root / PREVIOUS_CERT, state.cert.read_bytes())
        state.write_private(state.root / PREVIOUS_KEY, state.key.read_bytes())
        state.write_private(state.root / MARKER, json.dumps({"ca_sha256": _sha256(ca)}).encode())
        state.write_private(state.ca, b"".join(_pem(c) for c in [*old_pins, ca]))
        state.write_private(state.key, next_key_path.read_bytes())
        state.write_private(state.cert, _pem(cert))
        next_key_path.unlink()
        log.info("Took a certificate of the platform's new CA; reconnecting with it")

    def _finish_move(self, server: x509.Certificate) -> None:
        """The platform presents a certificate of the new CA: keep only that CA's pin."""
        marker = self._state.root / MARKER
        if not marker.is_file():
            return
        try:
            wanted = str(json.loads(marker.read_text())["ca_sha256"])
        except (OSError, ValueError, KeyError):
            return
        keep = [c for c in self._pinned() if _sha256(c) == wanted]
        if not keep or server.issuer != keep[0].subject:
            return
        self._state.write_private(self._state.ca, _pem(keep[0]))
        for name in (PREVIOUS_CERT, PREVIOUS_KEY, MARKER):
            (self._state.root / name).unlink(missing_ok=True)
        log.info("The platform's certificate is of the new CA; the old CA is no longer pinned")


def next_ca(server: x509.Certificate) -> str | None:
    """The SHA-256 of the next CA a platform certificate names during a CA rotation."""
    try:
        extension = server.extensions.get_extension_for_oid(x509.ObjectIdentifier(NEXT_CA_OID))
    except x509.ExtensionNotFound:
        return None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    text = value.value.decode("ascii", errors="replace")
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None
