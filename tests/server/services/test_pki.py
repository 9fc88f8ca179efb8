import hashlib
import ipaddress
import stat
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.server.errors import ConfigurationError, Invalid
from tether.server.services.pki import (
    CertificateAuthority,
    fingerprint,
    serial_hex,
    write_private,
)

from ..support import make_csr


def is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    )


def test_ca_is_ecdsa_p256_and_self_signed(ca: CertificateAuthority) -> None:
    assert is_p256(ca.key)
    assert is_p256(ca.cert.public_key())
    assert ca.cert.subject == ca.cert.issuer
    ca.cert.verify_directly_issued_by(ca.cert)
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert isinstance(ca.cert.signature_hash_algorithm, hashes.SHA256)


def test_fingerprint_is_sha256_of_der(ca: CertificateAuthority) -> None:
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    assert ca.sha256 == fingerprint(ca.cert) == hashlib.sha256(der).hexdigest()
    assert len(ca.sha256) == 64


def test_server_certificate_has_the_names_and_addresses(ca: CertificateAuthority) -> None:
    cert, key = ca.issue_server("tether.example", ["192.0.2.7", "::1"])
    assert is_p256(key)
    cert.verify_directly_issued_by(ca.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["tether.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("::1"),
    ]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_server_certificate_refuses_a_bad_address(ca: CertificateAuthority) -> None:
    with pytest.raises(Invalid, match="not an IP address"):
        ca.issue_server("tether.example", ["999.1.1.1"])


def test_agent_certificate_subject_is_the_host_id_not_what_was_asked(
    ca: CertificateAuthority,
) -> None:
    host_id = str(uuid.uuid4())
    csr, key = make_csr(
        "evil",
        extra_names=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tether")],
    )
    cert = ca.sign_agent_csr(csr, host_id)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == host_id
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "Tether agents"
    )
    assert "evil" not in cert.subject.rfc4514_string()
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca.cert)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_agent_certificate_ignores_requested_extensions(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("tether.example")]), False)
        .sign(key, hashes.SHA256())
    )
    cert = ca.sign_agent_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), "h")
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_agent_certificates_get_distinct_serials(ca: CertificateAuthority) -> None:
    csr, _ = make_csr()
    serials = {serial_hex(ca.sign_agent_csr(csr, str(i))) for i in range(5)}
    assert len(serials) == 5


@pytest.mark.parametrize(
    "make_key",
    [lambda: ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate],
    ids=["p384", "ed25519"],
)
def test_csr_with_another_key_type_is_refused(ca: CertificateAuthority, make_key: object) -> None:
    key = make_key()  # type: ignore[operator]
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, algorithm)
    )
    with pytest.raises(Invalid, match="P-256"):
        ca.sign_agent_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), "h")


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "garbage",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_garbage_pem_is_refused(ca: CertificateAuthority, pem: str) -> None:
    with pytest.raises(Invalid, match="not a valid PEM CSR"):
        ca.sign_agent_csr(pem, "h")


def test_certificate_instead_of_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(Invalid):
        ca.sign_agent_csr(ca.pem.decode(), "h")


def test_csr_with_a_broken_signature_is_refused(ca: CertificateAuthority) -> None:
    csr_pem, _ = make_csr()
    der = bytearray(
        x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)
    )
    # The subject's last byte sits inside the signed part: change it, keep the old signature.
    index = bytes(der).rfind(b"endpoint-1") + len("endpoint-1") - 1
    der[index] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(Invalid, match="not signed by its own key"):
        ca.sign_agent_csr(tampered.decode(), "h")


def test_ca_save_and_load(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    ca.save(cert_path, key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    loaded = CertificateAuthority.load(cert_path, key_path)
    assert loaded.sha256 == ca.sha256
    csr, _ = make_csr()
    loaded.sign_agent_csr(csr, "h").verify_directly_issued_by(ca.cert)


def test_ca_load_refuses_missing_and_wrong_keys(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    with pytest.raises(ConfigurationError, match="Cannot load the CA"):
        CertificateAuthority.load(cert_path, key_path)
    ca.save(cert_path, key_path)
    other = ed25519.Ed25519PrivateKey.generate()
    key_path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigurationError, match="not an ECDSA key"):
        CertificateAuthority.load(cert_path, key_path)


def test_write_private_is_owner_only_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret"
    write_private(path, b"one")
    write_private(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret"]


def test_certificates_live_at_most_398_days_and_the_server_one_365(
    ca: CertificateAuthority,
) -> None:
    server, _ = ca.issue_server("tether.example", [])
    agent = ca.sign_agent_csr(make_csr()[0], str(uuid.uuid4()))
    # sslyze's Mozilla "intermediate" check flags a server certificate over 366 days.
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 365
    assert (agent.not_valid_after_utc - agent.not_valid_before_utc).days == 398
