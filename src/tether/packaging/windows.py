"""The agent for Windows endpoints: a zip an administrator unpacks and installs with PowerShell,
and the WiX source of an MSI with the same layout (docs/adr/0052).

No Windows machine is here, so the bundle itself is built on a Windows x64 build host with the
same recipe (`tether agent bundle --output DIR` under Python 3.11 with `tether[platform]`; it
writes `tether-agent.exe` and `_internal\\`), copied to the platform host, and packaged there
with a fresh token: `tether agent package --format zip --bundle DIR`. Layout of the zip:

    tether-agent-windows-<version>/
      tether-agent/          the Windows bundle: tether-agent.exe, _internal\\
      enrollment.token       the package's token
      install.ps1            copies the bundle to %ProgramFiles%\\Tether Agent, enrolls, installs
                             and starts the TetherAgent service (ADR 0041), deletes the token
      uninstall.ps1          removes the service (releasing isolation first), the files, and the
                             state directory unless -KeepState
      tether-agent.wxs       WiX v4 source of an MSI with the same files and the service
      README.txt             the three commands above, in words

What has run here: building the zip from a bundle directory and the unit tests of its contents
(tests/packaging/test_windows.py). What has not: the bundle build on Windows, the scripts, and
`wix build` (docs/operations.md, "First Windows VM checklist").
"""

import zipfile
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import quoteattr

from tether.packaging.errors import PackagingError

EXECUTABLE = "tether-agent.exe"
SERVICE_NAME = "TetherAgent"  # tether.agent.windows_service.SERVICE_NAME
INSTALL_DIR = "Tether Agent"  # under %ProgramFiles%
# A fixed UpgradeCode: every version of the MSI is the same product to Windows Installer, so a
# newer one replaces an older one (MajorUpgrade) instead of installing beside it.
UPGRADE_CODE = "6E1F3A52-2C0B-4E0B-9D8A-52B8A0D1C0DE"

INSTALL_PS1 = rf"""# Installs the Tether agent from this folder. Run in an elevated Windows PowerShell 5.1+:
#   powershell -ExecutionPolicy Bypass -File .\install.ps1
#Requires -RunAsAdministrator
$ErrorActionPreference = 'Stop'
$here = Split-Path -Parent $MyInvocation.MyCommand.Path
$prefix = Join-Path $env:ProgramFiles '{INSTALL_DIR}'
$exe = Join-Path $prefix '{EXECUTABLE}'
$state = Join-Path $env:ProgramData 'Tether\agent'
$token = Join-Path $here 'enrollment.token'
# Program Files: only administrators may change what the LocalSystem service runs.
New-Item -ItemType Directory -Force -Path $prefix | Out-Null
Copy-Item -Recurse -Force -Path (Join-Path $here 'tether-agent\*') -Destination $prefix
if (-not (Test-Path (Join-Path $state 'identity.json'))) {{
  if (-not (Test-Path $token)) {{
    throw "tether-agent: this endpoint is not enrolled and the package's token is gone; run '$exe enroll --token TOKEN'."
  }}
  & $exe enroll --token-file $token --state-dir $state
  if ($LASTEXITCODE -ne 0) {{ throw "tether-agent: enrolling failed (exit $LASTEXITCODE); see above." }}
}}
# The token may have uses left for other endpoints: keep no copy here.
Remove-Item -Force -ErrorAction SilentlyContinue $token
& $exe service install --state-dir $state
if ($LASTEXITCODE -ne 0) {{ throw "tether-agent: the {SERVICE_NAME} service was not installed (exit $LASTEXITCODE); see above." }}
exit 0
"""

UNINSTALL_PS1 = rf"""# Removes the Tether agent: the service (isolation released first), its files, and its state
# unless -KeepState. Run in an elevated Windows PowerShell:
#   powershell -ExecutionPolicy Bypass -File .\uninstall.ps1 [-KeepState]
#Requires -RunAsAdministrator
param([switch]$KeepState)
$ErrorActionPreference = 'Stop'
$prefix = Join-Path $env:ProgramFiles '{INSTALL_DIR}'
$exe = Join-Path $prefix '{EXECUTABLE}'
$state = Join-Path $env:ProgramData 'Tether\agent'
if (Test-Path $exe) {{
  # Releases an active isolation, then stops and deletes the service (ADR 0041).
  & $exe service remove --state-dir $state
  if ($LASTEXITCODE -ne 0) {{
    # Not installed as a service (or already removed): still release any isolation.
    & $exe isolation release --state-dir $state
  }}
}}
Remove-Item -Recurse -Force -ErrorAction SilentlyContinue $prefix
if ($KeepState) {{
  Write-Output "tether-agent: kept $state (-KeepState)."
}} else {{
  Remove-Item -Recurse -Force -ErrorAction SilentlyContinue $state
}}
exit 0
"""

README = f"""Tether agent for Windows (x64), with its own Python: nothing else to install.

Install (elevated PowerShell, in this folder):
  powershell -ExecutionPolicy Bypass -File .\\install.ps1
It copies tether-agent\\ to %ProgramFiles%\\{INSTALL_DIR}, enrolls this endpoint with the token
in this folder (then deletes the token), and installs and starts the {SERVICE_NAME} service
(LocalSystem, automatic start, restarted after a crash).

Remove:
  powershell -ExecutionPolicy Bypass -File .\\uninstall.ps1 [-KeepState]

An MSI: build tether-agent.wxs with WiX v4 on a Windows host beside the tether-agent folder
(wix build -ext WixToolset.Util.wixext tether-agent.wxs). It installs the same files and
registers the service without starting it: enroll first, then start it:
  "%ProgramFiles%\\{INSTALL_DIR}\\{EXECUTABLE}" enroll --token-file enrollment.token
  sc.exe start {SERVICE_NAME}
"""


def _guid_for(path: str) -> str:
    """A stable component GUID per installed path, as WiX wants (same path, same GUID)."""
    import uuid

    return str(uuid.uuid5(uuid.UUID(UPGRADE_CODE), path)).upper()


def wxs(version: str, files: list[PurePosixPath]) -> str:
    """WiX v4 source of an MSI installing `files` (relative to the bundle) under Program Files,
    with the TetherAgent service registered on the executable's component."""
    parts = [p for p in version.split("+")[0].split(".") if p.isdigit()][:3]
    numeric = ".".join(parts + ["0"] * (3 - len(parts)))

    def component(file: PurePosixPath) -> str:
        source = quoteattr("tether-agent\\" + str(file).replace("/", "\\"))
        guid = _guid_for(str(file))
        where = (
            f" Subdirectory={quoteattr(str(file.parent).replace('/', chr(92)))}"
            if str(file.parent) != "."
            else ""
        )
        if str(file) != EXECUTABLE:
            return f'<Component Guid="{guid}"{where}><File Source={source} /></Component>'
        # The service: as `tether-agent.exe service install` registers it (ADR 0041); it is not
        # started here, since the endpoint enrolls first (README.txt).
        return (
            f'<Component Guid="{guid}"><File Id="AgentExe" Source={source} KeyPath="yes" />\n'
            f'          <ServiceInstall Name="{SERVICE_NAME}" DisplayName="Tether agent" '
            'Type="ownProcess" Start="auto" ErrorControl="normal" Account="LocalSystem" '
            'Arguments="service run --state-dir &quot;[CommonAppDataFolder]Tether\\agent&quot;">\n'
            '            <util:ServiceConfig FirstFailureActionType="restart" '
            'SecondFailureActionType="restart" ThirdFailureActionType="restart" '
            'RestartServiceDelayInSeconds="5" ResetPeriodInDays="1" />\n'
            "          </ServiceInstall>\n"
            f'          <ServiceControl Id="AgentControl" Name="{SERVICE_NAME}" Stop="both" '
            'Remove="uninstall" Wait="yes" />\n'
            "        </Component>"
        )

    body = "\n".join("        " + component(f) for f in sorted(files))
    return f"""<?xml version="1.0" encoding="utf-8"?>
<!-- Generated by tether.packaging.windows. Build on Windows with WiX v4:
       wix build -ext WixToolset.Util.wixext tether-agent.wxs
     Not built or run here: no Windows host (docs/adr/0052). -->
<Wix xmlns="http://wixtoolset.org/schemas/v4/wxs"
     xmlns:util="http://wixtoolset.org/schemas/v4/wxs/util">
  <Package Name="Tether agent" Manufacturer="Tether" Version="{numeric}"
           UpgradeCode="{UPGRADE_CODE}" Scope="perMachine">
    <MajorUpgrade DowngradeErrorMessage="A newer Tether agent is already installed." />
    <MediaTemplate EmbedCab="yes" />
    <StandardDirectory Id="ProgramFiles64Folder">
      <Directory Id="INSTALLFOLDER" Name="{INSTALL_DIR}" />
    </StandardDirectory>
    <Feature Id="Agent">
      <ComponentGroupRef Id="AgentFiles" />
    </Feature>
  </Package>
  <Fragment>
    <ComponentGroup Id="AgentFiles" Directory="INSTALLFOLDER">
{body}
    </ComponentGroup>
  </Fragment>
</Wix>
"""


def bundle_files(bundle: Path) -> list[PurePosixPath]:
    """The files of a Windows bundle directory, relative to it; refused unless it is one."""
    if not (bundle / EXECUTABLE).is_file():
        raise PackagingError(
            f"{bundle} is not a Windows agent bundle (no {EXECUTABLE}); build it on a Windows "
            "host with 'tether agent bundle --output DIR' and give that directory."
        )
    return [
        PurePosixPath(p.relative_to(bundle).as_posix())
        for p in sorted(bundle.rglob("*"))
        if p.is_file()
    ]


def build_zip(bundle: Path, token: str, output: Path, version: str) -> None:
    """The zip layout above, from a Windows bundle directory and a token."""
    files = bundle_files(bundle)
    top = PurePosixPath(f"tether-agent-windows-{version}")
    partial = output.with_name(f".{output.name}.partial")
    try:
        _write_zip(bundle, files, top, token, version, partial)
        partial.rename(output)
    finally:
        partial.unlink(missing_ok=True)


def _write_zip(
    bundle: Path,
    files: list[PurePosixPath],
    top: PurePosixPath,
    token: str,
    version: str,
    output: Path,
) -> None:
    # Deflate level 6, as the other formats use: level 9 costs far more time for ~1%.
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for file in files:
            archive.write(bundle / file, str(top / "tether-agent" / file))
        # Windows PowerShell 5.1 reads a script without a byte order mark in the ANSI code page;
        # the scripts are ASCII, so that reads them right. CRLF, as Windows tools expect.
        for name, text in (
            ("install.ps1", INSTALL_PS1),
            ("uninstall.ps1", UNINSTALL_PS1),
            ("README.txt", README),
            ("tether-agent.wxs", wxs(version, files)),
            ("enrollment.token", token + "\n"),
        ):
            archive.writestr(str(top / name), text.replace("\n", "\r\n"))
