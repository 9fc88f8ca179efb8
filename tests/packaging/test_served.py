"""Agent packages served by a real platform (docs/adr/0052): the CLI and the Settings page have
it build one; the one-line command it prints, run by a real shell with the host's real curl,
fetches it over the analyst port's TLS with the CA and the server key pinned and passes the
SHA-256 check; a wrong pin fetches nothing; an expired link is refused in one sentence; a user
without the enrollment permission cannot make one; each download is in the audit chain.

The platform builds real packages (dpkg-deb, tar) around a stand-in bundle placed in its bundle
cache under the real content key: freezing the agent takes minutes and is tested by
test_bundle.py and test_install.py; here the serving is under test, not the freezing.
"""

import base64
import hashlib
import json
import re
import sqlite3
import ssl
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import expect

from tests.e2e.browser import browser_page, log_in
from tests.e2e.harness import Children, Cli, Platform, audit_records
from tests.e2e.test_tiers import enrolled
from tether.packaging.bundle import NAME, bundle_key
from tether.packaging.packages import missing_tool
from tether.protocol import EnrollmentToken

pytestmark = pytest.mark.e2e
PIN = re.compile(r"--pinnedpubkey '(sha256//[A-Za-z0-9+/=]+)'")


def stand_in_bundle(cache: Path) -> None:
    """A bundle directory where the platform's `build_bundle` finds it for today's sources."""
    directory = cache / bundle_key() / NAME
    (directory / "_internal").mkdir(parents=True)
    executable = directory / NAME
    executable.write_text("#!/bin/sh\necho stand-in agent bundle\n")
    executable.chmod(0o755)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Cli]]:
    if missing_tool("deb"):
        pytest.skip("dpkg-deb is missing (apt-get install dpkg-dev)")
    root = tmp_path_factory.mktemp("served")
    stand_in_bundle(root / "bundles")
    children = Children(root / "logs")
    try:
        platform = Platform(root, children)
        platform.env["TETHER_BUNDLE_CACHE"] = str(root / "bundles")
        platform.init()
        platform.start()
        admin = platform.login(root / "admin-cli")
        admin.ok("segment", "create", "ir")
        yield platform, admin
    finally:
        children.kill_all()


def fetch_part(command: str, installer: str) -> str:
    """The command up to and including the checksum; `installer` (what would change this host)
    is cut off and the temporary directory printed instead."""
    head, sep, _ = command.partition(f" && {installer}")
    assert sep, command
    return head + ' && echo "$d"'


def sh(line: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", line], capture_output=True, text=True, timeout=60, check=False
    )


def other_pin() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_the_printed_line_fetches_the_package_pinned_and_checked(
    served: tuple[Platform, Cli], tmp_path: Path
) -> None:
    _, admin = served
    made = admin.run("agent", "install-command", "--segment", "ir", "--format", "deb")
    assert made.returncode == 0, made.stderr
    command = made.stdout.strip()
    assert "\n" not in command
    assert "deb package" in made.stderr
    assert "run the line above as root on the endpoint" in made.stderr
    assert " -k " not in command
    assert "--insecure" not in command
    assert PIN.search(command)

    fetched = sh(fetch_part(command, "dpkg -i"))
    assert fetched.returncode == 0, fetched.stderr
    assert "tether-agent.deb: OK" in fetched.stdout
    deb = Path(fetched.stdout.strip().splitlines()[-1]) / "tether-agent.deb"
    info = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Package"], capture_output=True, text=True, check=True
    )
    assert info.stdout.strip() == "tether-agent"
    # The package holds a token for this platform and segment's enrollment.
    listing = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    extracted = tmp_path / "payload.tar"
    extracted.write_bytes(listing)
    with tarfile.open(extracted) as payload:
        member = payload.extractfile("./opt/tether-agent/enrollment.token")
        assert member is not None
        token = EnrollmentToken.decode(member.read().decode().strip())
    assert token.server_url.startswith("https://")

    # Who fetched it is in the chain: the address and curl's user agent.
    downloads = [r for r in audit_records(admin) if r["action"] == "agent_package.download"]
    assert downloads
    assert downloads[-1]["source"].startswith("127.0.0.1 curl/")

    # A wrong pin: curl refuses the server and nothing is written or checked.
    pin = PIN.search(command)
    assert pin is not None
    tampered = command.replace(pin.group(1), other_pin())
    refused = sh(fetch_part(tampered, "dpkg -i"))
    assert refused.returncode != 0
    assert "public key does not match pinned public key" in refused.stderr.lower()
    assert "OK" not in refused.stdout

    # A wrong checksum (the package swapped on the way): sha256sum -c fails, nothing installs.
    swapped = re.sub(r'echo "[0-9a-f]{64}', 'echo "' + "0" * 64, command)
    mismatch = sh(fetch_part(swapped, "dpkg -i"))
    assert mismatch.returncode != 0
    assert "FAILED" in mismatch.stdout


def test_an_expired_link_is_refused_in_one_sentence(served: tuple[Platform, Cli]) -> None:
    platform, admin = served
    made = json.loads(
        admin.ok("agent", "install-command", "--segment", "ir", "--format", "tar", "--json")
    )
    # Expire it as time would (SQLite takes the write beside the running platform).
    with sqlite3.connect(platform.db, timeout=10) as db:
        changed = db.execute(
            "UPDATE agent_package_links SET expires_at = '2020-01-01 00:00:00.000000' WHERE id = ?",
            (made["id"],),
        ).rowcount
    assert changed == 1
    answer = httpx.get(
        made["url"], verify=ssl.create_default_context(cafile=str(platform.ca)), timeout=10
    )
    assert answer.status_code == 410
    assert answer.json() == {
        "detail": "This agent package's link expired on 2020-01-01 00:00 UTC; "
        "ask an admin for a new install command."
    }
    # curl, as the line runs it, fails and leaves the checksum unchecked.
    failed = sh(fetch_part(made["command"], "tar -xzf"))
    assert failed.returncode != 0
    assert "410" in failed.stderr
    # A made-up link is refused the same way, without a package to say anything about.
    unknown = httpx.get(
        made["url"].replace(made["url"].split("/")[-2], "x" * 43),
        verify=ssl.create_default_context(cafile=str(platform.ca)),
        timeout=10,
    )
    assert unknown.status_code == 404
    assert "No agent package is served at this address" in unknown.json()["detail"]


def test_a_user_without_the_enrollment_permission_cannot_make_one(
    served: tuple[Platform, Cli], tmp_path: Path
) -> None:
    platform, admin = served
    analyst = enrolled(platform, admin, "pkg-ana", "analyst", tmp_path / "ana", fresh=True)
    refused = analyst.run("agent", "install-command", "--segment", "ir", "--format", "deb")
    assert refused.returncode != 0
    assert "You need the enrollment.manage permission for this." in refused.stderr
    assert refused.stdout == ""
    creates = [r for r in audit_records(admin) if r["action"] == "agent_package.create"]
    assert all(r["actor"] != "pkg-ana" for r in creates)


def test_the_settings_button_builds_a_package_whose_line_fetches_it(
    served: tuple[Platform, Cli],
) -> None:
    platform, admin = served
    with browser_page() as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=platform.url)
        log_in(page, platform.url, platform.admin_password, platform.admin_code())
        page.goto(f"{platform.url}/settings/enrollment")
        form = page.locator("form.new-package")
        form.get_by_label("Package segment").select_option("ir")
        form.get_by_label("Format").select_option("tar")
        form.get_by_label("Package uses").fill("3")
        page.get_by_role("button", name="Build package").click()
        shown = page.locator("#install-command")
        expect(shown).to_contain_text("sha256sum -c")
        expect(page.locator(".served-package")).to_contain_text("tar package")
        page.get_by_role("button", name="Copy").click()
        expect(page.locator("#install-copy-status")).to_have_text("Copied.")
        command: str = page.evaluate("navigator.clipboard.readText()")
        assert command == shown.inner_text().strip()
    fetched = sh(fetch_part(command, "tar -xzf"))
    assert fetched.returncode == 0, fetched.stderr
    assert "tether-agent.tar.gz: OK" in fetched.stdout
    [created] = [
        r
        for r in audit_records(admin)
        if r["action"] == "agent_package.create"
        and r["details"]["format"] == "tar"
        and r["details"]["size"] > 0
        and r["source"].startswith("127.0.0.1 Mozilla")
    ]
    assert created["actor"] == "admin"
