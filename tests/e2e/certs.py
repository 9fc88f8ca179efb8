"""Client certificates the platform must refuse, made with `cryptography`."""

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_pair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, where: Path, name: str
) -> tuple[Path, Path]:
    where.mkdir(parents=True, exist_ok=True)
    cert_path = where / f"{name}.pem"
    key_path = where / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def load_ca(data_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The platform's real CA, read from its data directory."""
    cert = x509.load_pem_x509_certificate((data_dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((data_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def new_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that has nothing to do with the platform."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def client_cert(
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    where: Path,
    name: str,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[Path, Path, int]:
    """A client certificate signed by `issuer`; returns cert path, key path and serial."""
    ca_cert, ca_key = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(uuid.uuid4()))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = _write_pair(cert, key, where, name)
    return cert_path, key_path, serial
