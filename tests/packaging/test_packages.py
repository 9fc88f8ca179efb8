"""`tether agent package` on the platform host: rpm and tar contents, an audited token, and
refusals that write nothing."""

import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.e2e.harness import clean_env, tether_command
from tests.packaging.conftest import bundle_cache
from tether.errors import TetherError
from tether.packaging import layout
from tether.packaging.bundle import Bundle
from tether.packaging.commands import package
from tether.protocol import EnrollmentToken
from tether.server.config import load_settings


def _package(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tether_command(), "agent", "package", "--data", str(data), *args],
        capture_output=True,
        text=True,
        env=clean_env(TETHER_BUNDLE_CACHE=str(bundle_cache())),
        timeout=600,
        check=False,
    )


def _tokens(data: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(data / "tether.db") as db:
        return list(db.execute("SELECT id, max_uses, created_by FROM enrollment_tokens"))


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing; CI=true: this test must run.", pytrace=False)
        pytest.skip(f"this test needs {tool} (apt-get install rpm)")


def test_the_rpm_holds_the_bundle_unit_and_scripts_and_installs_into_a_scratch_root(
    agent_bundle: Bundle, platform_data: Path, tmp_path: Path
) -> None:
    _need("rpmbuild")
    rpm = tmp_path / "agent.rpm"
    before = len(_tokens(platform_data))
    done = _package(
        platform_data,
        "--format",
        "rpm",
        "--segment",
        "default",
        "--uses",
        "50",
        "--output",
        str(rpm),
    )
    assert done.returncode == 0, done.stderr
    listed = subprocess.run(["rpm", "-qlp", str(rpm)], capture_output=True, text=True, check=True)
    files = set(listed.stdout.split())
    assert {layout.EXECUTABLE, layout.TOKEN, f"/usr/lib/systemd/system/{layout.UNIT_NAME}"} <= files
    assert f"{layout.PREFIX}/_internal/libpython3.11.so.1.0" in files
    assert not any("sqlalchemy" in f or "fastapi" in f for f in files)
    scripts = subprocess.run(
        ["rpm", "-qp", "--scripts", str(rpm)], capture_output=True, text=True, check=True
    ).stdout
    assert "enroll --token-file" in scripts
    assert "isolation release" in scripts
    tokens = _tokens(platform_data)
    assert len(tokens) == before + 1
    assert tokens[-1][1:] == (50, "platform host")
    _installs_into_a_scratch_root(rpm, tmp_path / "scratch")


def _installs_into_a_scratch_root(rpm: Path, root: Path) -> None:
    """`rpm --root` into an empty directory: proves the payload unpacks where the layout says,
    with its modes, that rpm's database records and erases exactly it, and that the unpacked
    bundle runs. It does NOT run the scriptlets (the root has no shell, so --noscripts: the
    enrolling %post is tested by the deb's install into a Debian root, which runs the same
    layout.INSTALL text) and does NOT resolve glibc (--nodeps; an RPM-based distribution
    with glibc >= 2.36 is the real target)."""

    def rpm_in_root(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["rpm", "--root", str(root), *args], capture_output=True, text=True, check=False
        )

    root.mkdir()
    assert rpm_in_root("--initdb").returncode == 0
    done = rpm_in_root("-i", "--nodeps", "--noscripts", str(rpm))
    assert done.returncode == 0, done.stderr
    assert rpm_in_root("-q", "tether-agent").stdout.startswith("tether-agent-")
    executable = root / layout.EXECUTABLE.lstrip("/")
    token = root / layout.TOKEN.lstrip("/")
    assert executable.stat().st_mode & 0o777 == 0o755
    assert token.stat().st_mode & 0o777 == 0o600
    assert (root / "usr/lib/systemd/system" / layout.UNIT_NAME).read_text() == layout.UNIT
    ran = subprocess.run(
        [str(executable), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert "enroll" in ran.stdout
    erased = rpm_in_root("-e", "--noscripts", "tether-agent")
    assert erased.returncode == 0, erased.stderr
    assert not (root / layout.PREFIX.lstrip("/")).exists()
    assert not (root / "usr/lib/systemd/system" / layout.UNIT_NAME).exists()
    assert rpm_in_root("-q", "tether-agent").returncode != 0


def test_the_tar_carries_a_private_token_for_this_platform(
    agent_bundle: Bundle, platform_data: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "agent.tar.gz"
    done = _package(
        platform_data, "--format", "tar", "--segment", "default", "--output", str(archive)
    )
    assert done.returncode == 0, done.stderr
    with tarfile.open(archive) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
        token_member = members[f"root{layout.TOKEN}"]
        assert token_member.mode & 0o077 == 0
        extracted = tar.extractfile(token_member)
        assert extracted is not None
        token = EnrollmentToken.decode(extracted.read().decode().strip())
        assert members["install.sh"].mode & 0o111
        assert members["uninstall.sh"].mode & 0o111
    settings = load_settings(platform_data)
    assert (token.server_url, token.agent_url) == (settings.analyst_url, settings.agent_url)
    ca_pem = (platform_data / "ca.pem").read_bytes()
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert token.ca_sha256 == ca.fingerprint(hashes.SHA256()).hex()


def test_a_bad_request_is_refused_in_one_line_with_nothing_written(
    agent_bundle: Bundle, platform_data: Path, tmp_path: Path
) -> None:
    output = tmp_path / "agent.pkg"
    before = _tokens(platform_data)
    done = _package(
        platform_data, "--segment", "default", "--output", str(output), "--format", "msi"
    )
    assert done.returncode == 1
    assert done.stderr == "tether: 'msi' is not a package format; choose deb, rpm, tar or zip.\n"
    assert not output.exists()
    assert _tokens(platform_data) == before


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        ({"expires": "soon"}, "'soon' is not a duration like 30m, 24h or 7d."),
        ({"uses": 0}, "Uses must be between 1 and 100000."),
        ({"segment": "ir;rm -rf /"}, "A segment name is 1 to 64 letters, digits, spaces, dots"),
        ({"fmt": "tar", "output": "exists"}, "already exists; choose another output file."),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(
    agent_bundle: Bundle,
    platform_data: Path,
    tmp_path: Path,
    overrides: dict[str, object],
    sentence: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TETHER_BUNDLE_CACHE", str(bundle_cache()))
    output = tmp_path / "agent.pkg"
    if overrides.get("output") == "exists":
        output.write_bytes(b"an operator's file")
    arguments: dict[str, Any] = {
        "data": platform_data,
        "fmt": "tar",
        "segment": "default",
        "output": output,
        "uses": 1,
        "expires": "1h",
    }
    arguments.update({k: v for k, v in overrides.items() if k != "output"})
    before = _tokens(platform_data)
    with pytest.raises(TetherError) as refused:
        package(**arguments)
    assert sentence in str(refused.value)
    assert str(refused.value).endswith(".")
    assert "\n" not in str(refused.value)
    assert _tokens(platform_data) == before
    assert not list(tmp_path.glob(".agent.pkg*"))
    if overrides.get("output") == "exists":
        assert output.read_bytes() == b"an operator's file"
    else:
        assert not output.exists()
