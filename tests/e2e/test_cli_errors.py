"""The CLI's refusals: one line on stderr, exit status 1, nothing written."""

from pathlib import Path

import pytest

from .harness import Cli, Platform

pytestmark = pytest.mark.e2e


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_wrong_password_is_one_line_and_exit_1(platform: Platform, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "cli", platform.env)
    result = cli.run(
        "login",
        "--server",
        platform.url,
        "--ca",
        str(platform.ca),
        "-u",
        "admin",
        "--password-stdin",
        stdin="not-the-password\n",
    )
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("tether: ")
    assert "password" in line.lower()
    assert result.stdout == ""
    assert not (tmp_path / "cli" / "profile.json").exists()


def test_hosts_without_login_says_to_log_in(platform: Platform, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "nobody", platform.env)
    result = cli.run("hosts")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("tether: Not logged in")
    assert "tether login" in line
    assert result.stdout == ""
