"""The agent's half of a CA rotation, in process: it asks only when the platform's certificate
names a next CA it does not hold a certificate of, takes only that CA and a certificate for the
key it made, keeps both pins until the platform presents the new CA, and changes nothing when
what arrives does not hold together."""

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tether.agent.ca_rollover import NEXT_KEY, CaRollover, next_ca
from tether.agent.ca_watch import CaWatch, RolloverRefused, oid_content
from tether.agent.state import Identity, StateDir
from tether.protocol.ca_rollover import NEXT_CA_OID, CaCertificate
from tether.server.services.pki import CertificateAuthority, cert_pem, fingerprint

HOST = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _server(ca: CertificateAuthority, naming: CertificateAuthority | None) -> bytes:
    extra = (
        x509.UnrecognizedExtension(x509.ObjectIdentifier(NEXT_CA_OID), naming.sha256.encode())
        if naming is not None
        else None
    )
    cert, _key = ca.issue_server("platform.test", ["127.0.0.1"], extra=extra)
    return _der(cert)


@pytest.fixture
def old() -> CertificateAuthority:
    return CertificateAuthority.create("old")


@pytest.fixture
def new() -> CertificateAuthority:
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Tether CA new")])
    return CertificateAuthority.create_named(subject, ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def state(tmp_path: Path, old: CertificateAuthority) -> StateDir:
    state = StateDir(tmp_path / "agent").secure()
    state.write_identity(Identity(HOST, "https://platform.test", "wss://platform.test:8444"))
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, HOST)]))
        .sign(key, hashes.SHA256())
    )
    cert = old.sign_agent_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), HOST)
    state.write_private(
        state.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    state.write_private(state.cert, cert_pem(cert).encode())
    state.write_private(state.ca, old.pem)
    return state


def _pins(state: StateDir) -> list[str]:
    return [fingerprint(c) for c in x509.load_pem_x509_certificates(state.ca.read_bytes())]


def test_no_rotation_no_question(state: StateDir, old: CertificateAuthority) -> None:
    assert CaRollover(state).connected(_server(old, None)) is None
    assert CaRollover(state).connected(None) is None
    assert not (state.root / NEXT_KEY).exists()


def test_the_agent_moves_to_the_ca_the_platform_names_and_drops_the_old_pin_at_the_end(
    state: StateDir, old: CertificateAuthority, new: CertificateAuthority
) -> None:
    rollover = CaRollover(state)
    during = _server(old, new)
    assert next_ca(x509.load_der_x509_certificate(during)) == new.sha256
    ask = rollover.connected(during)
    assert ask is not None
    signed = new.sign_agent_csr(ask.csr, HOST)
    old_cert = state.cert.read_bytes()
    rollover.accept(CaCertificate(certificate=cert_pem(signed), ca=new.pem.decode()), during)
    assert x509.load_pem_x509_certificate(state.cert.read_bytes()) == signed
    assert (state.root / "agent-previous.pem").read_bytes() == old_cert
    assert _pins(state) == [old.sha256, new.sha256]
    # The new certificate works with the key the agent made and kept.
    key = serialization.load_pem_private_key(state.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == signed.public_key().public_numbers()  # type: ignore[union-attr]
    # Reconnected during the rotation: nothing more to ask, both pins stay.
    assert CaRollover(state).connected(during) is None
    assert _pins(state) == [old.sha256, new.sha256]
    # After the end the platform presents the new CA: the old pin goes.
    assert CaRollover(state).connected(_server(new, None)) is None
    assert _pins(state) == [new.sha256]
    assert not (state.root / "agent-previous.pem").exists()


def test_a_ca_the_platform_does_not_name_or_a_certificate_for_another_key_changes_nothing(
    state: StateDir, old: CertificateAuthority, new: CertificateAuthority
) -> None:
    rollover = CaRollover(state)
    during = _server(old, new)
    before = (state.cert.read_bytes(), state.key.read_bytes(), state.ca.read_bytes())
    with pytest.raises(RolloverRefused, match="did not ask for"):
        rollover.accept(CaCertificate(certificate=cert_pem(old.cert), ca=new.pem.decode()), during)
    ask = rollover.connected(during)
    assert ask is not None
    # An attacker's CA, with a certificate it signed for the agent's own CSR.
    rogue = CertificateAuthority.create("rogue")
    forged = rogue.sign_agent_csr(ask.csr, HOST)
    with pytest.raises(RolloverRefused, match="not the one the platform's certificate names"):
        rollover.accept(CaCertificate(certificate=cert_pem(forged), ca=rogue.pem.decode()), during)
    # The named CA, but a certificate for a key the agent did not make.
    other = ec.generate_private_key(ec.SECP256R1())
    other_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, HOST)]))
        .sign(other, hashes.SHA256())
    )
    wrong = new.sign_agent_csr(other_csr.public_bytes(serialization.Encoding.PEM).decode(), HOST)
    with pytest.raises(RolloverRefused, match="not for the key this agent made"):
        rollover.accept(CaCertificate(certificate=cert_pem(wrong), ca=new.pem.decode()), during)
    # The agent's key, the named CA's name, but not its signature.
    impostor = rogue.sign_agent_csr(ask.csr, HOST)
    with pytest.raises(RolloverRefused):
        rollover.accept(CaCertificate(certificate=cert_pem(impostor), ca=new.pem.decode()), during)
    assert (state.cert.read_bytes(), state.key.read_bytes(), state.ca.read_bytes()) == before


def test_the_watch_knows_an_identifier_by_its_der_bytes(
    old: CertificateAuthority, new: CertificateAuthority
) -> None:
    """The idle agent looks for the next-CA extension by its identifier's DER bytes, without
    parsing the certificate: known encodings (X.690), and the one in a real certificate."""
    assert oid_content("1.2.840.10045.4.3.2") == bytes.fromhex("2a8648ce3d040302")
    assert oid_content("2.5.29.17") == bytes.fromhex("551d11")
    content = oid_content(NEXT_CA_OID)
    der = _server(old, new)
    at = der.index(content)
    assert der[at - 2 : at] == bytes([0x06, len(content)])  # tag OBJECT IDENTIFIER, length
    assert content not in _server(old, None)


def test_the_watch_passes_a_certificate_without_a_rotation_by_and_sees_one(
    state: StateDir, old: CertificateAuthority, new: CertificateAuthority
) -> None:
    watch = CaWatch(state)
    assert not watch.under_way(_server(old, None))
    assert watch.connected(_server(old, None)) is None
    naming = _server(old, new)
    assert watch.under_way(naming)
    asked = watch.connected(naming)
    assert asked is not None
    assert "BEGIN CERTIFICATE REQUEST" in asked.csr
