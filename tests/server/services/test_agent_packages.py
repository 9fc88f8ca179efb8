"""Agent packages served by the platform: built around a fresh token, fetched by a secret link
while the token can enroll, each download audited; refusals in one sentence (docs/adr/0052)."""

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol import EnrollmentToken
from tether.server.errors import Gone, Invalid, NotFound, Unavailable
from tether.server.services.agent_packages import AgentPackages
from tether.server.services.audit import AuditLog
from tether.server.services.enrollment import Enrollment
from tether.server.services.install_commands import public_key_pin
from tether.server.services.pki import CertificateAuthority
from tether.server.services.segments import ensure_segment
from tether.server.store.db import utcnow
from tether.server.store.tables import agent_package_links, audit_records, enrollment_tokens

from ..support import FakeClock

SERVER = "https://tether.example:8443"


class FakeBuilder:
    """Writes a small file holding the token, as a package would; can be told to fail."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self.fail_build = False
        self.built: list[str] = []
        self.prepared: list[str] = []

    def prepare(self, fmt: str) -> Path:
        self.prepared.append(fmt)
        return self.bundle

    def build(self, fmt: str, bundle: Path, token: str, output: Path) -> None:
        if self.fail_build:
            raise Unavailable("dpkg-deb failed: no space left on device")
        output.write_text(f"{fmt} package holding {token}\n")
        self.built.append(token)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(utcnow())


@pytest.fixture
def builder(tmp_path: Path) -> FakeBuilder:
    return FakeBuilder(tmp_path / "bundle")


@pytest.fixture
def server_cert(ca: CertificateAuthority) -> x509.Certificate:
    return ca.cert


@pytest.fixture
async def packages(
    engine: AsyncEngine,
    audit: AuditLog,
    ca: CertificateAuthority,
    builder: FakeBuilder,
    clock: FakeClock,
    tmp_path: Path,
) -> AgentPackages:
    async with engine.begin() as conn:
        await ensure_segment(conn, "default")
        await ensure_segment(conn, "ir")
    enrollment = Enrollment(engine, audit, ca, SERVER, "wss://tether.example:8444")
    return AgentPackages(
        engine,
        audit,
        enrollment,
        directory=tmp_path / "packages",
        analyst_url=SERVER,
        ca_pem=ca.pem.decode(),
        server_cert=ca.cert,
        builder=builder,
        clock=clock,
    )


async def make(packages: AgentPackages, fmt: str = "deb", uses: int = 1) -> tuple[str, str]:
    """(link, filename) of a new package."""
    served = await packages.create(
        fmt=fmt, segment="ir", uses=uses, lifetime=timedelta(hours=1), actor="admin", source="ui"
    )
    link, filename = served.url.removeprefix(f"{SERVER}/api/v1/agent-packages/").split("/")
    return link, filename


async def records(engine: AsyncEngine, action: str) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(audit_records).where(audit_records.c.action == action))
        ).all()
    return [
        {"actor": r.actor, "target": r.target, "source": r.source, **json.loads(r.details)}
        for r in rows
    ]


async def test_a_package_is_served_by_its_link_with_a_pinned_checked_install_line(
    packages: AgentPackages,
    builder: FakeBuilder,
    ca: CertificateAuthority,
    engine: AsyncEngine,
) -> None:
    served = await packages.create(
        fmt="deb", segment="ir", uses=2, lifetime=timedelta(hours=1), actor="admin", source="ui"
    )
    [token] = builder.built
    assert EnrollmentToken.decode(token).server_url == SERVER
    link, filename = served.url.removeprefix(f"{SERVER}/api/v1/agent-packages/").split("/")
    assert filename == "tether-agent.deb"
    assert len(link) >= 43  # 256 random bits
    got = await packages.fetch(link, filename, source="10.0.0.7 curl/7.88.1")
    body = got.path.read_bytes()
    assert body == f"deb package holding {token}\n".encode()
    assert hashlib.sha256(body).hexdigest() == served.sha256
    assert got.size == len(body)

    command = served.command
    assert " -k" not in command
    assert "--insecure" not in command
    assert f"--pinnedpubkey '{public_key_pin(ca.cert)}'" in command
    assert '--cacert "$d/ca.pem"' in command
    for line in ca.pem.decode().strip().splitlines():
        assert f"'{line}'" in command
    assert f'echo "{served.sha256}  $d/tether-agent.deb" | sha256sum -c' in command
    # The check comes before the install, joined by &&: a mismatch installs nothing.
    assert command.index("sha256sum -c && dpkg -i") > command.index("curl ")
    assert "\n" not in command

    [created] = await records(engine, "agent_package.create")
    assert created["actor"] == "admin"
    assert created["sha256"] == served.sha256
    assert created["segment"] == "ir"
    assert created["token"] == served.token_id
    [download] = await records(engine, "agent_package.download")
    assert download["source"] == "10.0.0.7 curl/7.88.1"
    assert download["target"] == f"package:{served.id}"
    # The link's secret is not in the database, nor in the chain.
    async with engine.connect() as conn:
        stored = (await conn.execute(select(agent_package_links))).one()
    assert link not in repr(tuple(stored))
    assert link not in json.dumps(created)


async def test_an_unknown_link_or_another_file_name_is_refused_in_one_sentence(
    packages: AgentPackages,
) -> None:
    link, filename = await make(packages)
    for bad_link, bad_name in [
        (link[:-1] + ("A" if link[-1] != "A" else "B"), filename),
        (link, "tether-agent.rpm"),
        ("", filename),
    ]:
        with pytest.raises(NotFound) as refused:
            await packages.fetch(bad_link, bad_name, source="attacker")
        assert str(refused.value) == (
            "No agent package is served at this address; ask an admin for a new install command."
        )


async def test_an_expired_link_is_refused_and_its_file_removed_later(
    packages: AgentPackages, clock: FakeClock, tmp_path: Path, engine: AsyncEngine
) -> None:
    link, filename = await make(packages)
    clock.advance(timedelta(hours=1, seconds=1))
    with pytest.raises(Gone) as refused:
        await packages.fetch(link, filename, source="10.0.0.7")
    assert "This agent package's link expired on " in str(refused.value)
    assert str(refused.value).endswith("UTC; ask an admin for a new install command.")
    # Refusals are logged, not chained: a leaked link cannot grow the audit log.
    assert await records(engine, "agent_package.download") == []
    assert len(list((tmp_path / "packages").iterdir())) == 1
    assert await packages.remove_expired() == 1
    assert list((tmp_path / "packages").iterdir()) == []


async def test_a_revoked_or_used_up_token_stops_its_package(
    packages: AgentPackages, engine: AsyncEngine
) -> None:
    link, filename = await make(packages)
    async with engine.connect() as conn:
        token_id = (await conn.execute(select(agent_package_links.c.token_id))).scalar_one()
    await packages._enrollment.revoke_token(str(token_id), actor="admin", source="ui")
    with pytest.raises(Gone, match="enrollment token in this agent package was revoked"):
        await packages.fetch(link, filename, source="x")

    link, filename = await make(packages)
    async with engine.begin() as conn:
        await conn.execute(
            enrollment_tokens.update().where(enrollment_tokens.c.id != token_id).values(uses=1)
        )
    with pytest.raises(Gone, match="enrollment token in this agent package is used up"):
        await packages.fetch(link, filename, source="x")


async def test_a_link_serves_three_downloads_per_use_then_refuses(
    packages: AgentPackages,
) -> None:
    link, filename = await make(packages, uses=1)
    for _ in range(3):
        await packages.fetch(link, filename, source="x")
    with pytest.raises(Gone) as refused:
        await packages.fetch(link, filename, source="x")
    assert str(refused.value) == (
        "This agent package was downloaded 3 times, as many as its link allows; "
        "ask an admin for a new install command."
    )


async def test_a_failed_build_revokes_the_token_it_made_and_serves_nothing(
    packages: AgentPackages, builder: FakeBuilder, engine: AsyncEngine, tmp_path: Path
) -> None:
    builder.fail_build = True
    with pytest.raises(Unavailable, match="dpkg-deb failed"):
        await make(packages)
    async with engine.connect() as conn:
        tokens = (await conn.execute(select(enrollment_tokens))).all()
        links = (await conn.execute(select(agent_package_links))).all()
    assert [t.revoked_by for t in tokens] == ["admin"]
    assert links == []
    assert list((tmp_path / "packages").iterdir()) == []


async def test_an_unknown_format_or_segment_is_refused_before_anything_is_built(
    packages: AgentPackages, builder: FakeBuilder
) -> None:
    with pytest.raises(Invalid, match=r"'msi' is not a package format; choose deb, rpm or tar\."):
        await make(packages, fmt="msi")
    with pytest.raises(NotFound, match="No segment is named 'nope'"):
        await packages.create(
            fmt="tar",
            segment="nope",
            uses=1,
            lifetime=timedelta(hours=1),
            actor="admin",
            source="ui",
        )
    with pytest.raises(Invalid, match="Uses must be between 1 and 100000"):
        await make(packages, uses=0)
    # Refused before the bundle (minutes when cold) is even asked for.
    assert builder.prepared == []
    assert builder.built == []


@pytest.mark.parametrize(
    ("fmt", "installs"),
    [
        ("rpm", 'rpm -U "$d/tether-agent.rpm"'),
        ("tar", 'tar -xzf "$d/tether-agent.tar.gz" -C "$d" && sh "$d"/tether-agent-*/install.sh'),
    ],
)
async def test_each_format_has_its_install_step(
    packages: AgentPackages, fmt: str, installs: str
) -> None:
    served = await packages.create(
        fmt=fmt, segment="ir", uses=1, lifetime=timedelta(hours=1), actor="admin", source="ui"
    )
    assert f"sha256sum -c && {installs} && rm -rf" in served.command
