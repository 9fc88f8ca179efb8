"""Where the CLI saves a file whose name an endpoint chose."""

from pathlib import Path

import pytest

from tether.cli.files import local_name

from .conftest import Cli, Hosts

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/var/log/auth.log", "auth.log"),
        ("C:\\Windows\\Temp\\evil.exe", "evil.exe"),
        ("/home/x/.bashrc", f"retrieved-{SHA[:16]}"),
        ("C:evil", f"retrieved-{SHA[:16]}"),
        ("report.txt:stream", f"retrieved-{SHA[:16]}"),
        ("/tmp/dir/", f"retrieved-{SHA[:16]}"),
        ("bad\x1b[2Jname", f"retrieved-{SHA[:16]}"),
    ],
)
def test_local_names_are_never_hidden_drives_or_escapes(name: str, expected: str) -> None:
    assert local_name(name, SHA) == expected


# Where `-o` saves (issue 18, item 1): a name ending with / is a directory, created if new; a
# file in a directory that does not exist is refused in one sentence before anything runs.


async def test_download_into_a_new_directory_named_with_a_slash(cli: Cli, tmp_path: Path) -> None:
    tool = tmp_path / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\necho fixed\n")
    uploaded = await cli("files", "upload", str(tool))
    assert uploaded.code == 0, uploaded.stderr
    target = tmp_path / "evidence" / "case-7"

    saved = await cli("files", "download", "tool.sh", "-o", f"{target}/")

    assert saved.code == 0, saved.stderr
    assert (target / "tool.sh").read_bytes() == tool.read_bytes()
    assert not (tmp_path / "evidence" / "case-7.sh").exists()


async def test_get_into_a_missing_directory_is_refused_before_the_job(
    cli: Cli, hosts: Hosts, tmp_path: Path
) -> None:
    missing = tmp_path / "missing-dir" / "shadow"

    refused = await cli("get", "ws-1", "/etc/shadow", "-o", str(missing))

    assert refused.code != 0
    assert refused.stderr.strip() == "tether: " + (
        f"The directory {missing.parent} does not exist; create it, or end --output with / to "
        "have it created."
    )
    assert await hosts.platform.jobs.find(host_id=hosts.ids["ws-1"]) == []
    assert not missing.parent.exists()


async def test_output_naming_a_file_as_a_directory_is_refused(cli: Cli, tmp_path: Path) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("x")

    refused = await cli("files", "download", "anything", "-o", f"{existing}/")

    assert refused.code != 0
    assert refused.stderr.strip() == f"tether: {existing} exists and is not a directory."
