"""`tether server init`: the first admin's password and second factor, shown or written."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether.protocol.totp import from_base32
from tether.server.commands import mfa_file_for, server_app


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
