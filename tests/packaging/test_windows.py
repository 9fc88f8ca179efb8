"""The Windows package, as far as this Linux machine can check it (docs/adr/0052): the zip's
layout from a Windows bundle directory, its PowerShell scripts and WiX source, the PyInstaller
recipe for a Windows build host, and `tether agent package --format zip --bundle DIR`.

Nothing here runs on Windows: docs/operations.md lists what only a Windows VM can prove."""

import sqlite3
import subprocess
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

import pytest

from tests.e2e.harness import clean_env, tether_command
from tether.errors import TetherError
from tether.packaging.bundle import _spec
from tether.packaging.windows import (
    INSTALL_PS1,
    SERVICE_NAME,
    UNINSTALL_PS1,
    build_zip,
    wxs,
)
from tether.protocol import EnrollmentToken
from tether.server.config import load_settings

WIX = "{http://wixtoolset.org/schemas/v4/wxs}"
FILES = ["tether-agent.exe", "_internal/python311.dll", "_internal/psutil/_psutil_windows.pyd"]


def windows_bundle(root: Path) -> Path:
    """A stand-in for the bundle a Windows build host makes: the same names, small contents."""
    bundle = root / "tether-agent"
    for name in FILES:
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_bytes(b"MZ stand-in for " + name.encode())
    return bundle


def test_the_zip_holds_the_bundle_token_scripts_and_msi_source(tmp_path: Path) -> None:
    output = tmp_path / "agent.zip"
    build_zip(windows_bundle(tmp_path), "the-token", output, "0.7.1")
    top = "tether-agent-windows-0.7.1/"
    with zipfile.ZipFile(output) as archive:
        names = set(archive.namelist())
        assert names == {
            *(f"{top}tether-agent/{f}" for f in FILES),
            f"{top}enrollment.token",
            f"{top}install.ps1",
            f"{top}uninstall.ps1",
            f"{top}tether-agent.wxs",
            f"{top}README.txt",
        }
        assert archive.read(f"{top}enrollment.token") == b"the-token\r\n"
        assert archive.read(f"{top}tether-agent/_internal/python311.dll") == (
            b"MZ stand-in for _internal/python311.dll"
        )
        install = archive.read(f"{top}install.ps1")
        uninstall = archive.read(f"{top}uninstall.ps1")
    # ASCII (Windows PowerShell 5.1 reads a BOM-less script in the ANSI code page) and CRLF.
    for script in (install, uninstall):
        script.decode("ascii")
        assert b"\n" not in script.replace(b"\r\n", b"")
    assert not list(tmp_path.glob(".agent.zip*"))


def test_install_enrolls_installs_the_service_and_keeps_no_token() -> None:
    lines = INSTALL_PS1.splitlines()
    assert "#Requires -RunAsAdministrator" in lines
    assert "$ErrorActionPreference = 'Stop'" in lines
    enroll = next(i for i, line in enumerate(lines) if "enroll --token-file $token" in line)
    forget = next(i for i, line in enumerate(lines) if line.startswith("Remove-Item -Force"))
    service = next(i for i, line in enumerate(lines) if "service install --state-dir" in line)
    assert enroll < forget < service
    assert "$env:ProgramFiles 'Tether Agent'" in INSTALL_PS1
    assert "$env:ProgramData 'Tether\\agent'" in INSTALL_PS1
    # Each native call's exit code is checked: PowerShell does not stop on them by itself.
    assert INSTALL_PS1.count("$LASTEXITCODE -ne 0") == 2


def test_uninstall_releases_isolation_before_the_files_go() -> None:
    remove = UNINSTALL_PS1.index("service remove --state-dir $state")
    release = UNINSTALL_PS1.index("isolation release --state-dir $state")
    files = UNINSTALL_PS1.index("Remove-Item -Recurse -Force -ErrorAction SilentlyContinue $prefix")
    assert remove < release < files
    assert "param([switch]$KeepState)" in UNINSTALL_PS1
    assert "if ($KeepState)" in UNINSTALL_PS1


def test_the_wix_source_installs_every_file_and_the_service() -> None:
    files = [PurePosixPath(f) for f in FILES]
    source = wxs("0.7.1.dev3+g123", files)
    root = ElementTree.fromstring(source)
    package = root.find(f"{WIX}Package")
    assert package is not None
    assert package.get("Version") == "0.7.1"
    assert package.get("Scope") == "perMachine"
    components = root.findall(f".//{WIX}Component")
    sources: list[str] = []
    for component in components:
        file = component.find(f"{WIX}File")
        assert file is not None
        sources.append(file.get("Source", ""))
    sources.sort()
    assert sources == sorted("tether-agent\\" + f.replace("/", "\\") for f in FILES)
    guids = [c.get("Guid") for c in components]
    assert len(set(guids)) == len(FILES)
    assert all(uuid.UUID(g or "") for g in guids)
    # The same file keeps its component GUID from one version to the next (Windows Installer
    # rules), so an upgrade replaces files instead of leaving old ones behind.
    assert ElementTree.fromstring(wxs("0.8.0", files)).findall(f".//{WIX}Component")[0].get(
        "Guid"
    ) == components[0].get("Guid")
    [service] = root.findall(f".//{WIX}ServiceInstall")
    assert service.get("Name") == SERVICE_NAME
    assert service.get("Account") == "LocalSystem"
    assert service.get("Start") == "auto"
    assert (
        service.get("Arguments") == 'service run --state-dir "[CommonAppDataFolder]Tether\\agent"'
    )
    subdirs = {c.get("Subdirectory") for c in components}
    assert subdirs == {None, "_internal", "_internal\\psutil"}


def test_a_linux_bundle_is_not_taken_for_a_windows_one(tmp_path: Path) -> None:
    linux = tmp_path / "linux-bundle"
    (linux / "_internal").mkdir(parents=True)
    (linux / "tether-agent").write_text("#!/bin/sh\n")
    with pytest.raises(TetherError) as refused:
        build_zip(linux, "token", tmp_path / "agent.zip", "0.7.1")
    assert str(refused.value).startswith(
        f"{linux} is not a Windows agent bundle (no tether-agent.exe)"
    )
    assert not (tmp_path / "agent.zip").exists()


def test_the_windows_recipe_has_no_uvloop_and_no_strip(tmp_path: Path) -> None:
    windows = _spec(tmp_path / "entry.py", windows=True)
    linux = _spec(tmp_path / "entry.py", windows=False)
    assert "uvloop" not in windows.split("excludes=")[0].split("hidden = ")[0]
    assert "('tether.agent', 'tether.protocol', 'tether.script', 'psutil')" in windows
    assert "strip=False" in windows
    assert "strip=True" not in windows
    assert "'psutil', 'uvloop')" in linux
    assert "strip=True" in linux


def _package(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tether_command(), "agent", "package", "--data", str(data), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )


def test_the_package_command_makes_the_zip_with_a_fresh_audited_token(
    platform_data: Path, tmp_path: Path
) -> None:
    output = tmp_path / "agent.zip"
    done = _package(
        platform_data,
        "--format",
        "zip",
        "--bundle",
        str(windows_bundle(tmp_path)),
        "--segment",
        "default",
        "--uses",
        "20",
        "--output",
        str(output),
    )
    assert done.returncode == 0, done.stderr
    assert "enrolls into segment default (20 use(s)" in done.stdout
    with zipfile.ZipFile(output) as archive:
        [token_name] = [n for n in archive.namelist() if n.endswith("enrollment.token")]
        token = EnrollmentToken.decode(archive.read(token_name).decode().strip())
    settings = load_settings(platform_data)
    assert (token.server_url, token.agent_url) == (settings.analyst_url, settings.agent_url)
    with sqlite3.connect(platform_data / "tether.db") as db:
        assert db.execute(
            "SELECT max_uses, created_by FROM enrollment_tokens ORDER BY id DESC LIMIT 1"
        ).fetchone() == (20, "platform host")


def test_zip_without_a_windows_bundle_is_refused_with_no_token_issued(
    platform_data: Path, tmp_path: Path
) -> None:
    with sqlite3.connect(platform_data / "tether.db") as db:
        before = db.execute("SELECT count(*) FROM enrollment_tokens").fetchone()
    output = tmp_path / "agent.zip"
    done = _package(
        platform_data, "--format", "zip", "--segment", "default", "--output", str(output)
    )
    assert done.returncode == 1
    assert done.stderr == (
        "tether: A zip (Windows) package needs --bundle, the bundle built on a Windows host; "
        "deb, rpm and tar packages are built from this host's bundle, without --bundle.\n"
    )
    linux = tmp_path / "linux"
    linux.mkdir()
    wrong = _package(
        platform_data,
        "--format",
        "zip",
        "--bundle",
        str(linux),
        "--segment",
        "default",
        "--output",
        str(output),
    )
    assert wrong.returncode == 1
    assert "is not a Windows agent bundle (no tether-agent.exe)" in wrong.stderr
    assert not output.exists()
    with sqlite3.connect(platform_data / "tether.db") as db:
        assert db.execute("SELECT count(*) FROM enrollment_tokens").fetchone() == before
