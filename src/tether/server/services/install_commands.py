"""The one-line install command shown for a served agent package (docs/adr/0052).

The line trusts nothing it fetches: it writes the platform CA (from the page the admin copied it
from) into a fresh temporary directory, has curl check the analyst port's chain against that CA
only and the server's public key against a pin (`--pinnedpubkey`), then checks the package's
SHA-256 before the package manager sees it. Never `curl -k`. POSIX sh, one line, so it pastes into
any root shell.
"""

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# What installs each format once it is fetched and checked; "$d" is the temporary directory.
INSTALLERS = {
    "deb": 'dpkg -i "$d/{name}"',
    "rpm": 'rpm -U "$d/{name}"',
    "tar": 'tar -xzf "$d/{name}" -C "$d" && sh "$d"/tether-agent-*/install.sh',
}
FILENAMES = {"deb": "tether-agent.deb", "rpm": "tether-agent.rpm", "tar": "tether-agent.tar.gz"}


def public_key_pin(cert: x509.Certificate) -> str:
    """curl's `--pinnedpubkey` form: sha256// and the base64 SHA-256 of the SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _quoted(text: str) -> str:
    """In single quotes, always (shlex.quote leaves "safe" words bare, which reads worse)."""
    return "'" + text.replace("'", "'\\''") + "'"


def _write_ca(ca_pem: str) -> str:
    """printf of the PEM's lines (base64 and dashes only, so single quotes are safe)."""
    lines = [line for line in ca_pem.strip().splitlines() if line]
    for line in lines:
        if "'" in line or "\\" in line or "%" in line:
            raise ValueError("a PEM line holds a character the command cannot quote")
    return "printf '%s\\n' " + " ".join(f"'{line}'" for line in lines) + ' > "$d/ca.pem"'


def install_command(fmt: str, url: str, sha256: str, ca_pem: str, pin: str) -> str:
    """The root shell line that fetches `url` pinned, checks `sha256`, and installs it."""
    name = FILENAMES[fmt]
    return " && ".join(
        [
            "d=$(mktemp -d)",
            _write_ca(ca_pem),
            f'curl -fsS --proto =https --cacert "$d/ca.pem" --pinnedpubkey {_quoted(pin)} '
            f'-o "$d/{name}" {_quoted(url)}',
            f'echo "{sha256}  $d/{name}" | sha256sum -c',
            INSTALLERS[fmt].format(name=name),
            'rm -rf "$d"',
        ]
    )
