"""`tether server join` (docs/adr/0050): a node's data directory from a copy of another's,
with nothing fetched over the network and nothing of a single-node platform."""

import json
from pathlib import Path

import pytest

from tether.server.config import load_settings
from tether.server.errors import ConfigurationError
from tether.server.services.joining import JOIN_FILES, join

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/x"
REDIS = "redis://127.0.0.1:6379/0"
SECRETS = ("ca.key", "server.key", "audit-signing.key", "mfa-sealing.key")


def copied_node(root: Path, **config: str) -> Path:
    """What an operator carried over: a node's data directory (the files join reads)."""
    source = root / "carried"
    source.mkdir()
    for name in ("ca.pem", "server.pem", *SECRETS):
        (source / name).write_bytes(f"contents of {name}".encode())
    stored = {"hostname": "tether.example", "listen": "10.0.0.1:8443", **config}
    (source / "config.json").write_text(json.dumps(stored))
    return source


def test_a_node_is_made_from_a_copy_with_its_own_addresses_and_secret_modes(
    tmp_path: Path,
) -> None:
    source = copied_node(tmp_path, database_url=POSTGRES, redis_url=REDIS, node_name="first")
    target = tmp_path / "node-b"
    joined = join(source, target, listen="10.0.0.2:8443", node_name="second")
    assert set(joined.copied) <= set(JOIN_FILES)
    for name in SECRETS:
        assert (target / name).read_bytes() == f"contents of {name}".encode()
        assert (target / name).stat().st_mode & 0o077 == 0
    assert target.stat().st_mode & 0o077 == 0
    settings = load_settings(target)
    assert (settings.database_url, settings.redis_url) == (POSTGRES, REDIS)
    assert (settings.listen, settings.node_name, settings.hostname) == (
        "10.0.0.2:8443",
        "second",
        "tether.example",
    )


@pytest.mark.parametrize(
    ("config", "sentence"),
    [
        ({"redis_url": REDIS}, "is a single node"),
        ({"database_url": POSTGRES}, "is a single node"),
    ],
)
def test_joining_a_single_node_platform_is_refused_in_one_sentence(
    tmp_path: Path, config: dict[str, str], sentence: str
) -> None:
    source = copied_node(tmp_path, **config)
    with pytest.raises(ConfigurationError, match=sentence):
        join(source, tmp_path / "node-b")
    assert not (tmp_path / "node-b").exists()


def test_joining_refuses_an_incomplete_copy_and_an_existing_platform(tmp_path: Path) -> None:
    source = copied_node(tmp_path, database_url=POSTGRES, redis_url=REDIS)
    (source / "audit-signing.key").unlink()
    with pytest.raises(ConfigurationError, match=r"audit-signing\.key missing"):
        join(source, tmp_path / "node-b")
    (source / "audit-signing.key").write_text("k")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    with pytest.raises(ConfigurationError, match="already holds a Tether platform"):
        join(source, existing)
    with pytest.raises(ConfigurationError, match="not into it"):
        join(source, source)
