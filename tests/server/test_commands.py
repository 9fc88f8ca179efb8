"""`tether server init` (the first admin's second factor, trusted proxies) and `renew-cert`."""

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select
from typer.testing import CliRunner

from tether.server.auth.totp import from_base32
from tether.server.commands import mfa_file_for, server_app
from tether.server.config import load_settings
from tether.server.errors import ConfigurationError
from tether.server.services.pki import serial_hex, server_names
from tether.server.store.db import create_engine
from tether.server.store.tables import audit_records


@pytest.fixture(autouse=True)
def no_tether_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TETHER_"):
            monkeypatch.delenv(name)


def test_init_writes_the_second_factor_next_to_the_password(tmp_path: Path) -> None:
    password_file = tmp_path / "admin-password"
    result = CliRunner().invoke(
        server_app,
        ["init", "--data", str(tmp_path / "data"), "--hostname", "t.test",
         "--admin-password-file", str(password_file)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mfa_file = mfa_file_for(password_file)
    assert mfa_file.name == "admin-password.mfa.json"
    assert mfa_file.stat().st_mode & 0o777 == 0o600
    mfa = json.loads(mfa_file.read_text())
    assert len(from_base32(mfa["secret"])) == 20
    assert mfa["uri"].startswith(f"otpauth://totp/Tether:admin?secret={mfa['secret']}")
    assert len(mfa["recovery_codes"]) == 10
    assert mfa["secret"] not in result.output
    assert (tmp_path / "data" / "mfa-sealing.key").stat().st_mode & 0o777 == 0o600


def test_init_without_a_file_shows_the_second_factor_once(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        server_app, ["init", "--data", str(tmp_path / "data"), "--hostname", "t.test"]
    )
    assert result.exit_code == 0, result.output
    assert (
        "Second factor (add to an authenticator app): otpauth://totp/Tether:admin?" in result.output
    )
    assert "Recovery codes (each works once): " in result.output
    assert "shown once; store them now." in result.output


def test_init_keeps_the_checkpoint_sinks_in_the_config(tmp_path: Path) -> None:
    (tmp_path / "siem").mkdir()
    result = CliRunner().invoke(
        server_app,
        ["init", "--data", str(tmp_path / "data"), "--hostname", "t.test",
         "--checkpoint-syslog", "tcp://siem.test:601",
         "--checkpoint-file", str(tmp_path / "siem" / "cp.jsonl")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "data" / "config.json").read_text())
    assert config["checkpoint_syslog"] == "tcp://siem.test:601"
    assert config["checkpoint_file"] == str(tmp_path / "siem" / "cp.jsonl")
    assert config["checkpoint_syslog_ca"] == ""


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        (["--checkpoint-syslog", "tls://siem.test"],
         "'tls://siem.test' is not a syslog collector address like tls://siem.example:6514 or "
         "tcp://siem.example:601."),
        (["--checkpoint-syslog", "tcp://siem.test:601", "--checkpoint-syslog-ca", "ca.pem"],
         "--checkpoint-syslog-ca needs a tls:// --checkpoint-syslog."),
        (["--checkpoint-syslog", "tls://siem.test:6514", "--checkpoint-syslog-ca", "{tmp}/no.pem"],
         "{tmp}/no.pem is not a readable CA certificate (PEM) for the syslog collector."),
        (["--checkpoint-file", "{tmp}/nowhere/cp.jsonl"],
         "The folder of {tmp}/nowhere/cp.jsonl does not exist; create it first."),
    ],
)  # fmt: skip
def test_init_refuses_checkpoint_sinks_that_cannot_work_and_creates_nothing(
    tmp_path: Path, options: list[str], sentence: str
) -> None:
    given = [o.replace("{tmp}", str(tmp_path)) for o in options]
    result = CliRunner().invoke(
        server_app, ["init", "--data", str(tmp_path / "data"), "--hostname", "t.test", *given]
    )
    assert result.exit_code != 0
    assert str(result.exception) == sentence.replace("{tmp}", str(tmp_path))
    assert not (tmp_path / "data").exists()


def test_init_remembers_the_trusted_proxies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(
        server_app,
        ["init", "--data", str(data), "--hostname", "t.test",
         "--trusted-proxy", "10.0.0.5", "--trusted-proxy", "192.0.2.0/28"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_settings(data).trusted_proxies == ["10.0.0.5", "192.0.2.0/28"]


def test_init_refuses_a_proxy_that_is_not_an_address(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        server_app,
        ["init", "--data", str(tmp_path / "data"), "--hostname", "t.test",
         "--trusted-proxy", "proxy.example"],
    )  # fmt: skip
    assert isinstance(result.exception, ConfigurationError)
    assert str(result.exception) == (
        "Setting trusted_proxies: 'proxy.example' is not an IP address or network."
    )
    assert not (tmp_path / "data").exists()


def test_no_proxy_is_trusted_by_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(server_app, ["init", "--data", str(data), "--hostname", "t.test"])
    assert result.exit_code == 0, result.output
    assert load_settings(data).trusted_proxies == []


def test_renew_cert_issues_a_new_certificate_for_the_same_names_and_audits_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(
        server_app,
        ["init", "--data", str(data), "--hostname", "t.test", "--ip", "192.0.2.7"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    before = x509.load_pem_x509_certificate((data / "server.pem").read_bytes())
    result = CliRunner().invoke(server_app, ["renew-cert", "--data", str(data)])
    assert result.exit_code == 0, result.output
    after = x509.load_pem_x509_certificate((data / "server.pem").read_bytes())
    assert after.serial_number != before.serial_number
    assert (
        server_names(after) == server_names(before) == ("t.test", ["192.0.2.7", "127.0.0.1", "::1"])
    )
    ca = x509.load_pem_x509_certificate((data / "ca.pem").read_bytes())
    after.verify_directly_issued_by(ca)
    assert (after.not_valid_after_utc - after.not_valid_before_utc).days == 365
    assert result.output == (
        f"New server certificate {serial_hex(after)} (replaces {serial_hex(before)}), valid until "
        f"{after.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; restart the platform to serve it.\n"
    )
    assert (data / "server.key").stat().st_mode & 0o777 == 0o600
    records = asyncio.run(_records(load_settings(data).db_url))
    assert records[-1]["action"] == "platform.renew_cert"
    assert records[-1]["target"] == "t.test"
    assert records[-1]["details"]["serial"] == serial_hex(after)
    assert records[-1]["details"]["previous_serial"] == serial_hex(before)


async def _records(db_url: str) -> list[dict[str, Any]]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(audit_records).order_by(audit_records.c.seq))).all()
        return [{**row._mapping, "details": json.loads(row.details)} for row in rows]
    finally:
        await engine.dispose()


def test_a_stored_proxy_setting_that_is_not_an_address_is_one_sentence_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(server_app, ["init", "--data", str(data), "--hostname", "t.test"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("TETHER_TRUSTED_PROXIES", '["10.0.0.0/8", "proxy"]')
    with pytest.raises(ConfigurationError) as caught:
        load_settings(data)
    assert str(caught.value) == "Setting trusted_proxies: 'proxy' is not an IP address or network."


@pytest.mark.parametrize(
    ("role", "database_url", "sentence"),
    [
        ("api", "", "Role api needs a PostgreSQL database shared by the platform's processes"),
        (
            "gateway",
            "postgresql+psycopg://tether@db.invalid/tether",
            "Role gateway needs the Redis bus between the platform's processes",
        ),
    ],
)
def test_a_split_role_without_its_shared_database_or_bus_is_refused_in_one_sentence(
    tmp_path: Path, role: str, database_url: str, sentence: str
) -> None:
    from tether.server.config import Role, Settings
    from tether.server.runner import check_role

    settings = Settings(data_dir=tmp_path, role=Role(role), database_url=database_url)
    with pytest.raises(ConfigurationError, match=sentence):
        check_role(settings)
    # The single process needs neither.
    check_role(Settings(data_dir=tmp_path))


def test_several_nodes_on_sqlite_are_refused_in_one_sentence(tmp_path: Path) -> None:
    from tether.server.config import Settings
    from tether.server.runner import check_role

    with pytest.raises(ConfigurationError, match=r"^Several nodes on one Redis bus need a Post"):
        check_role(Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:6379/0"))
    check_role(
        Settings(
            data_dir=tmp_path,
            redis_url="redis://127.0.0.1:6379/0",
            database_url="postgresql+psycopg://postgres@127.0.0.1/x",
        )
    )


def test_init_stores_the_agent_addresses_for_every_node(tmp_path: Path) -> None:
    import asyncio

    from tether.server.services.agent_addresses import read_addresses
    from tether.server.store.db import create_engine

    data = tmp_path / "data"
    result = CliRunner().invoke(
        server_app,
        ["init", "--data", str(data), "--hostname", "t.test",
         "--agent-address", "node1.t.test:8444", "--agent-address", "[2001:db8::2]:8444"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    async def stored() -> list[str]:
        engine = create_engine(load_settings(data).db_url)
        try:
            async with engine.connect() as conn:
                return await read_addresses(conn)
        finally:
            await engine.dispose()

    assert asyncio.run(stored()) == ["node1.t.test:8444", "[2001:db8::2]:8444"]


def test_init_refuses_an_agent_address_that_is_not_host_port_and_creates_nothing(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        server_app,
        ["init", "--data", str(tmp_path / "data"), "--hostname", "t.test",
         "--agent-address", "wss://node1:8444"],
    )  # fmt: skip
    assert isinstance(result.exception, ConfigurationError)
    assert str(result.exception) == (
        "'wss://node1:8444' is not an agent address; write HOST:PORT, e.g. "
        "tether1.example.com:8444."
    )
    assert not (tmp_path / "data").exists()
