"""The platform's private CA: server certificate and agent certificates signed from CSRs.

ECDSA P-256 throughout: fast handshakes (DESIGN.md section 9) and small certificates.
"""

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.server.errors import ConfigurationError, Invalid

CA_LIFETIME = timedelta(days=3650)
# Certificates the CA issues live at most 398 days (the CA/Browser Forum's limit). The server's
# lives 365: Mozilla's "intermediate" profile (5.7) flags a leaf certificate over 366 days
# (ADR 0027). `tether server renew-cert` issues the next one.
SERVER_LIFETIME = timedelta(days=365)
AGENT_LIFETIME = timedelta(days=398)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lowercase hex: what enrollment tokens pin."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """The CA certificate and key, loaded from the data directory."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def sha256(self) -> str:
        return fingerprint(self.cert)

    @classmethod
    def create(cls, name: str) -> "CertificateAuthority":
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tether"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Tether CA {name}"),
            ]
        )
        return cls.create_named(subject, ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def create_named(
        cls, subject: x509.Name, key: ec.EllipticCurvePrivateKey
    ) -> "CertificateAuthority":
        """A self-signed CA certificate for `key` under `subject`."""
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    def save(self, cert_path: Path, key_path: Path) -> None:
        write_private(key_path, _key_pem(self.key))
        cert_path.write_bytes(self.pem)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> "CertificateAuthority":
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"Cannot load the CA from {cert_path.parent}: {exc}.") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigurationError(f"The CA key in {key_path} is not an ECDSA key.")
        return cls(cert=cert, key=key)

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, lifetime: timedelta
    ) -> x509.CertificateBuilder:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )

    def issue_server(
        self, hostname: str, ips: list[str], extra: x509.ExtensionType | None = None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A server certificate for both ports, valid for `hostname` and each address (with
        `extra` as a non-critical extension: the next CA during a CA rotation)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(hostname)]
        for ip in ips:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError as exc:
                raise Invalid(f"{ip!r} is not an IP address.") from exc
        builder = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]),
                key.public_key(),
                SERVER_LIFETIME,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if extra is not None:
            builder = builder.add_extension(extra, critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def sign_agent_csr(
        self, csr_pem: str, host_id: str, lifetime: timedelta = AGENT_LIFETIME
    ) -> x509.Certificate:
        """Sign an endpoint's CSR; the subject is the host id we chose, never what it asked for."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise Invalid("The certificate signing request is not a valid PEM CSR.") from exc
        try:
            valid = csr.is_signature_valid
        except (InvalidSignature, ValueError):
            valid = False
        if not valid:
            raise Invalid("The certificate signing request is not signed by its own key.")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise Invalid("The certificate signing request must carry an ECDSA P-256 key.")
        return (
            self._builder(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tether agents"),
                        x509.NameAttribute(NameOID.COMMON_NAME, host_id),
                    ]
                ),
                public_key,
                lifetime,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )


def server_names(cert: x509.Certificate) -> tuple[str, list[str]]:
    """The host name and the addresses a server certificate was issued for."""
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = sans.get_values_for_type(x509.DNSName)
    if not names:
        raise ConfigurationError("The server certificate names no host; run 'tether server init'.")
    return names[0], [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def save_keypair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> None:
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()
