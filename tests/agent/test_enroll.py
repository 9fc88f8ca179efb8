"""`tether agent enroll` against a stand-in platform: a real CA behind patched HTTP calls."""

import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import httpx as httpx_module
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tether.agent.enroll import enroll
from tether.agent.errors import EnrollmentFailed
from tether.agent.state import StateDir
from tether.protocol import EnrollmentToken, EnrollRequest, EnrollResponse
from tether.server.services.pki import CertificateAuthority, cert_pem

from ..server.support import make_csr

SERVER = "https://tether.test:8443"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("agent-tests")


def token_for(ca: CertificateAuthority, fingerprint: str | None = None) -> str:
    return EnrollmentToken(
        server_url=SERVER,
        agent_url="wss://tether.test:8444",
        secret="s" * 43,
        ca_sha256=fingerprint or ca.sha256,
    ).encode()


class FakePlatform:
    """Answers the two enrollment requests the way the platform does."""

    def __init__(self, ca: CertificateAuthority, served_ca: bytes | None = None) -> None:
        self.ca = ca
        self.served_ca = served_ca or ca.pem
        self.posted: list[EnrollRequest] = []
        self.status = 200
        self.sign_for_other_key = False
        # The upgrade key's hex and status; 404 is a platform from before signed upgrades.
        self.upgrade_key = "ab" * 32
        self.upgrade_key_status = 200

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        if url == f"{SERVER}/api/v1/enroll/upgrade-key":
            # Asked over the CA pinned from the token, never unverified.
            assert kwargs["verify"] is not False
            return httpx.Response(
                self.upgrade_key_status, text=self.upgrade_key, request=httpx.Request("GET", url)
            )
        assert url == f"{SERVER}/api/v1/enroll/ca"
        return httpx.Response(200, content=self.served_ca, request=httpx.Request("GET", url))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        assert url == f"{SERVER}/api/v1/enroll"
        request = httpx.Request("POST", url)
        body = EnrollRequest.model_validate_json(kwargs["content"])
        self.posted.append(body)
        if self.status != 200:
            return httpx.Response(self.status, json={"detail": "Token used up."}, request=request)
        csr = body.csr_pem
        if self.sign_for_other_key:
            csr = make_csr()[0]
        cert = self.ca.sign_agent_csr(csr, "host-123")
        answer = EnrollResponse(
            host_id="host-123",
            certificate_pem=cert_pem(cert),
            ca_pem=self.ca.pem.decode(),
            agent_url="wss://tether.test:8444",
        )
        return httpx.Response(200, json=answer.model_dump(), request=request)


@pytest.fixture
def platform(monkeypatch: pytest.MonkeyPatch, ca: CertificateAuthority) -> FakePlatform:
    fake = FakePlatform(ca)
    monkeypatch.setattr(httpx_module, "get", fake.get)
    monkeypatch.setattr(httpx_module, "post", fake.post)
    return fake


def test_enroll_writes_key_cert_ca_then_identity(
    tmp_path: Path,
    platform: FakePlatform,
    ca: CertificateAuthority,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = StateDir(tmp_path / "agent")
    order: list[str] = []
    original = StateDir.write_private

    def spy(self: StateDir, path: Path, data: bytes) -> None:
        order.append(path.name)
        original(self, path, data)

    monkeypatch.setattr(StateDir, "write_private", spy)
    identity = enroll(token_for(ca), state, hostname="ws-7")
    assert order[-1] == "identity.json"
    assert set(order) == {"agent.key", "agent.pem", "ca.pem", "upgrade-key.pub", "identity.json"}
    assert (state.root / "upgrade-key.pub").read_text() == "ab" * 32 + "\n"
    assert identity.host_id == "host-123"
    assert state.identity() == identity
    if sys.platform != "win32":
        for name in order:
            assert stat.S_IMODE((state.root / name).stat().st_mode) == 0o600, name
    key = serialization.load_pem_private_key(state.key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(state.cert.read_bytes())
    assert cert.public_key() == key.public_key()
    assert state.ca.read_bytes() == ca.pem
    (sent,) = platform.posted
    assert sent.hostname == "ws-7"
    assert sent.secret == "s" * 43
    assert "PRIVATE KEY" not in sent.model_dump_json()  # the key never leaves the endpoint


def test_ca_with_the_wrong_fingerprint_is_refused(
    tmp_path: Path, platform: FakePlatform, ca: CertificateAuthority
) -> None:
    platform.served_ca = CertificateAuthority.create("impostor").pem
    state = StateDir(tmp_path / "agent")
    with pytest.raises(EnrollmentFailed, match="does not match the token's fingerprint"):
        enroll(token_for(ca), state)
    assert platform.posted == []
    assert not state.root.exists()


def test_garbage_instead_of_a_ca_is_refused(
    tmp_path: Path, platform: FakePlatform, ca: CertificateAuthority
) -> None:
    platform.served_ca = b"<html>captive portal</html>"
    with pytest.raises(EnrollmentFailed, match="sent no valid CA certificate"):
        enroll(token_for(ca), StateDir(tmp_path))
    assert platform.posted == []


def test_refusal_is_reported_and_nothing_is_written(
    tmp_path: Path, platform: FakePlatform, ca: CertificateAuthority
) -> None:
    platform.status = 403
    state = StateDir(tmp_path / "agent")
    with pytest.raises(EnrollmentFailed, match=r"refused enrollment: Token used up\."):
        enroll(token_for(ca), state)
    assert not state.root.exists()


def test_certificate_for_another_key_is_refused(
    tmp_path: Path, platform: FakePlatform, ca: CertificateAuthority
) -> None:
    platform.sign_for_other_key = True
    state = StateDir(tmp_path / "agent")
    with pytest.raises(EnrollmentFailed, match="certificate for a different key"):
        enroll(token_for(ca), state)
    assert not state.root.exists()


def test_already_enrolled_directory_is_left_alone(
    tmp_path: Path, platform: FakePlatform, ca: CertificateAuthority
) -> None:
    state = StateDir(tmp_path / "agent")
    enroll(token_for(ca), state)
    before = state.identity_file.read_bytes()
    with pytest.raises(EnrollmentFailed, match="already holds an enrolled identity"):
        enroll(token_for(ca), state)
    assert state.identity_file.read_bytes() == before
    assert len(platform.posted) == 1


def test_unreachable_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ca: CertificateAuthority
) -> None:
    def refuse(url: str, **kwargs: Any) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(httpx_module, "get", refuse)
    with pytest.raises(EnrollmentFailed, match=f"Cannot reach the platform at {SERVER}"):
        enroll(token_for(ca), StateDir(tmp_path))


def test_a_platform_without_an_upgrade_key_still_enrolls_the_agent_without_one(
    tmp_path: Path, platform: FakePlatform, ca: CertificateAuthority
) -> None:
    platform.upgrade_key_status = 404
    state = StateDir(tmp_path / "agent")
    enroll(token_for(ca), state)
    assert state.is_enrolled()
    assert not (state.root / "upgrade-key.pub").exists()


def test_a_damaged_upgrade_key_stops_enrollment_before_the_token_is_spent(
    tmp_path: Path, platform: FakePlatform, ca: CertificateAuthority
) -> None:
    platform.upgrade_key = "not-a-key"
    state = StateDir(tmp_path / "agent")
    with pytest.raises(EnrollmentFailed, match="sent no valid upgrade key"):
        enroll(token_for(ca), state)
    assert platform.posted == []
    assert not state.root.exists()
