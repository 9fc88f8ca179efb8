"""The platform's half of a CA rotation, in process: the server certificate names the next CA
under the current one, the gateway's rekey signs only during a rotation and only for a host not
moved yet, a host's old certificate stops counting once it used the new one, and the finish
waits for every host that is not revoked, naming them."""

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tether.agent.ca_rollover import next_ca
from tether.server.config import Settings, load_settings
from tether.server.errors import ConfigurationError, Invalid
from tether.server.services import backup_archive
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.backup import take_backup
from tether.server.services.bootstrap import initialise
from tether.server.services.ca_rotation import (
    NEXT_CERT,
    CaRollover,
    finish_ca_rotation,
    rotate_ca,
    trusted_ca_files,
)
from tether.server.services.hosts import Hosts
from tether.server.services.pki import CertificateAuthority, serial_hex
from tether.server.services.presence import Presence
from tether.server.services.restore import restore_backup
from tether.server.store.db import sqlite_url


def _settings(root: Path) -> Settings:
    settings = Settings(data_dir=root, hostname="rotate.test", listen="127.0.0.1:1")
    initialise(settings, [])
    return load_settings(root, listen="127.0.0.1:1")


def _engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(sqlite_url(str(settings.data_dir / "tether.db")), poolclass=NullPool)


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _add_host(settings: Settings, ca: CertificateAuthority) -> tuple[str, x509.Certificate]:
    host_id = str(uuid.uuid4())
    cert = ca.sign_agent_csr(_csr(), host_id)
    with sqlite3.connect(settings.data_dir / "tether.db") as db:
        segment = db.execute("SELECT id FROM segments LIMIT 1").fetchone()[0]
        db.execute(
            "INSERT INTO hosts (id, hostname, os_family, os_name, os_version, addresses, "
            "segment_id, cert_serial, cert_sha256, agent_version, enrolled_at, "
            "response_disabled_locally) VALUES (?, ?, '', '', '', '[]', ?, ?, '', '', "
            "'2026-12-07 00:00:00', 0)",
            (host_id, f"host-{host_id[:4]}", segment, serial_hex(cert)),
        )
    return host_id, cert


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _server_cert(settings: Settings) -> x509.Certificate:
    return x509.load_pem_x509_certificate(settings.server_cert.read_bytes())


def test_a_rotation_names_the_next_ca_under_the_current_one_and_moves_hosts_one_by_one(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path / "data")
    old = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
    moving, moving_cert = _add_host(settings, old)
    staying, _ = _add_host(settings, old)
    engine = _engine(settings)
    audit = AuditLog(engine, CheckpointSigner(settings.audit_key, settings.audit_anchor))
    hosts = Hosts(engine, audit, Presence(engine))

    idle = CaRollover(settings, hosts)
    with pytest.raises(Invalid, match="No CA rotation is under way"):
        asyncio.run(idle.rekey(moving, _csr(), _der(moving_cert)))

    started = rotate_ca(settings)
    assert started.hosts_to_move == 2
    with pytest.raises(ConfigurationError, match="already under way"):
        rotate_ca(settings)
    following = x509.load_pem_x509_certificate((settings.data_dir / NEXT_CERT).read_bytes())
    server = _server_cert(settings)
    # Still the current CA's (agents pin it), naming the next one.
    server.verify_directly_issued_by(old.cert)
    assert next_ca(server) == started.new_sha256
    assert trusted_ca_files(settings) == [settings.ca_cert, settings.data_dir / NEXT_CERT]

    rollover = CaRollover(settings, hosts)
    answer = asyncio.run(rollover.rekey(moving, _csr(), _der(moving_cert)))
    new_cert = x509.load_pem_x509_certificate(answer.certificate.encode())
    new_cert.verify_directly_issued_by(following)
    status = asyncio.run(hosts.certificate_status(serial_hex(new_cert)))
    assert status is not None
    assert status.host_id == moving
    assert status.next_certificate
    # Until the host uses the new certificate the old one still counts.
    assert asyncio.run(hosts.certificate_status(serial_hex(moving_cert))) is not None
    with pytest.raises(ConfigurationError, match=r"2 host\(s\) still hold a certificate"):
        finish_ca_rotation(settings)

    asyncio.run(rollover.adopted(moving, _der(new_cert)))
    assert asyncio.run(hosts.certificate_status(serial_hex(moving_cert))) is None
    moved = asyncio.run(hosts.certificate_status(serial_hex(new_cert)))
    assert moved is not None
    assert not moved.next_certificate
    # A host already on the new CA gets nothing more.
    with pytest.raises(Invalid, match="already one of the new CA"):
        asyncio.run(rollover.rekey(moving, _csr(), _der(new_cert)))

    with pytest.raises(ConfigurationError) as waiting:
        finish_ca_rotation(settings)
    assert str(waiting.value).startswith("1 host(s) still hold a certificate of the old CA: ")
    assert staying in str(waiting.value)
    assert moving not in str(waiting.value)
    with sqlite3.connect(settings.data_dir / "tether.db") as db:
        db.execute("UPDATE hosts SET revoked_at = '2026-12-07 01:00:00' WHERE id = ?", (staying,))

    finished = finish_ca_rotation(settings)
    assert finished.new_sha256 == started.new_sha256
    assert x509.load_pem_x509_certificate(settings.ca_cert.read_bytes()) == following
    assert not (settings.data_dir / NEXT_CERT).exists()
    server = _server_cert(settings)
    server.verify_directly_issued_by(following)
    assert next_ca(server) is None
    assert trusted_ca_files(settings) == [settings.ca_cert]
    report = asyncio.run(audit.verify())
    assert report.intact, report.problem
    with sqlite3.connect(settings.data_dir / "tether.db") as db:
        actions = [r[0] for r in db.execute("SELECT action FROM audit_records ORDER BY seq")]
    assert actions.count("platform.rotate_key") == 2
    assert "host.certificate" in actions
    assert "host.certificate_adopted" in actions
    asyncio.run(engine.dispose())


def test_a_backup_during_a_rotation_carries_the_next_ca_and_its_key_only_encrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_archive, "SCRYPT_N", 2**14)
    settings = _settings(tmp_path / "data")
    rotate_ca(settings)
    next_key = (settings.data_dir / "ca-next.key").read_bytes()
    passphrase = b"correct horse battery staple"
    made = take_backup(settings, tmp_path / "during.tbk", passphrase)
    assert next_key not in made.path.read_bytes()
    restored = restore_backup(
        made.path, tmp_path / "sealed", passphrase=passphrase, keys_from=None
    ).data
    assert (restored / "ca-next.key").read_bytes() == next_key
    assert (restored / NEXT_CERT).read_bytes() == (settings.data_dir / NEXT_CERT).read_bytes()
    bare = take_backup(settings, tmp_path / "bare.tbk", None)
    again = restore_backup(
        bare.path, tmp_path / "bare", passphrase=None, keys_from=settings.data_dir
    )
    assert (again.data / "ca-next.key").read_bytes() == next_key
