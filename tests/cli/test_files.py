"""Where the CLI saves a file whose name an endpoint chose."""

import pytest

from tether.cli.files import local_name

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
