import stat
import sys
from pathlib import Path

import pytest

from tether.cli import profile
from tether.cli.errors import CliError

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="mode bits are POSIX")
SAMPLE = profile.Profile(
    server="https://tether.test:8443",
    ca_pem="-----BEGIN CERTIFICATE-----\n...\n",
    token="session-token",
    username="alice",
)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "identity-a"
    monkeypatch.setenv("TETHER_CONFIG_DIR", str(folder))
    return folder


def test_config_dir_honours_the_variable(config: Path) -> None:
    assert profile.config_dir() == config


@pytest.mark.skipif(sys.platform == "win32", reason="XDG applies to POSIX")
def test_config_dir_defaults_to_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert profile.config_dir() == tmp_path / "xdg" / "tether"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert profile.config_dir() == tmp_path / "home" / ".config" / "tether"


def test_save_and_load(config: Path) -> None:
    profile.save(SAMPLE)
    assert (config / "profile.json").is_file()
    assert profile.load() == SAMPLE


@posix_only
def test_profile_is_private(config: Path) -> None:
    profile.save(SAMPLE)
    assert stat.S_IMODE((config / "profile.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o700
    assert [p.name for p in config.iterdir()] == ["profile.json"]


def test_identities_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_CONFIG_DIR", str(tmp_path / "admin"))
    profile.save(SAMPLE)
    monkeypatch.setenv("TETHER_CONFIG_DIR", str(tmp_path / "responder"))
    with pytest.raises(CliError, match="Not logged in"):
        profile.load()
    other = profile.Profile(SAMPLE.server, SAMPLE.ca_pem, "other-token", "bob")
    profile.save(other)
    assert profile.load() == other
    monkeypatch.setenv("TETHER_CONFIG_DIR", str(tmp_path / "admin"))
    assert profile.load() == SAMPLE


def test_logged_out_profile_keeps_no_token(config: Path) -> None:
    profile.save(profile.Profile(SAMPLE.server, SAMPLE.ca_pem, None, "alice"))
    assert profile.load().token is None


@pytest.mark.parametrize("content", ["not json", "{}", '{"server": "https://x"}'])
def test_damaged_profile(config: Path, content: str) -> None:
    config.mkdir()
    (config / "profile.json").write_text(content)
    with pytest.raises(CliError, match="is damaged; run 'tether login' again"):
        profile.load()
