"""Service fixtures over the parametrized database (see tests/conftest.py)."""

from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.auth import passwords
from tether.server.auth.sealing import Sealer, new_key
from tether.server.services.audit import AuditLog, CheckpointSigner
from tether.server.services.pki import CertificateAuthority
from tether.server.services.team import Team
from tether.server.services.users import SessionPolicy, Users

from .support import FakeClock, TickingClock

# Still Argon2id, at a cost that keeps the suite fast on a busy 2-core machine; the production
# parameters are checked on their own in tests/server/auth/test_passwords.py.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
FAST_DUMMY_HASH = FAST_HASHER.hash("dummy")


def use_fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "_hasher", FAST_HASHER)
    monkeypatch.setattr(passwords, "_DUMMY_HASH", FAST_DUMMY_HASH)


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fast_hashing(monkeypatch)


@pytest.fixture(scope="session")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("tests")


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    key = tmp_path / "audit-signing.key"
    CheckpointSigner.create_key(key)
    return CheckpointSigner(key, tmp_path / "audit-anchor.json")


@pytest.fixture
def audit(engine: AsyncEngine, signer: CheckpointSigner) -> AuditLog:
    return AuditLog(engine, signer, clock=TickingClock())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


POLICY = SessionPolicy(idle=timedelta(minutes=30), lifetime=timedelta(hours=12))


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(new_key())


@pytest.fixture
def users(engine: AsyncEngine, audit: AuditLog, clock: FakeClock, sealer: Sealer) -> Users:
    return Users(engine, audit, POLICY, clock=clock, sealer=sealer)


@pytest.fixture
def team(engine: AsyncEngine, audit: AuditLog, users: Users) -> Team:
    return Team(engine, audit, users)
