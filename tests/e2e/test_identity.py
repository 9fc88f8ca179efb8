"""Users, roles and the second factor through the real CLI against a real platform."""

import json
import time
from pathlib import Path

import pytest

from tether.server.auth.totp import from_base32, totp

from .harness import Cli, Platform
from .test_cli_errors import one_line

pytestmark = pytest.mark.e2e
PASSWORD = "responder password 1"


def login(platform: Platform, cli: Cli, name: str, *extra: str) -> str:
    return cli.ok(
        "login",
        "--server",
        platform.url,
        "--ca",
        str(platform.ca),
        "-u",
        name,
        "--password-stdin",
        *extra,
        stdin=PASSWORD + "\n",
    )


def test_responder_enrolls_then_reads_the_audit_log_and_loses_access_when_revoked(
    platform: Platform, admin: Cli, tmp_path: Path
) -> None:
    added = json.loads(
        admin.ok(
            "user",
            "add",
            "rita",
            "--role",
            "script",
            "--password-stdin",
            "--json",
            stdin=PASSWORD + "\n",
        )
    )
    assert added["roles"] == ["script"]
    rita = Cli(tmp_path / "rita", platform.env)
    out = login(platform, rita, "rita")
    assert "Your role requires a second factor" in out
    refused = rita.run("hosts")
    assert refused.returncode == 1
    assert one_line(refused.stderr).startswith("tether: Enroll a second factor first:")

    # The admin hands her a one-time enrollment code out of band.
    issued = admin.json("user", "enrollment-code", "rita")
    started = rita.json("mfa", "enroll", "--enrollment-code", issued["code"])
    assert started["uri"].startswith("otpauth://totp/Tether:rita?secret=")
    code = totp(from_base32(started["secret"]), time.time())
    confirmed = rita.ok("mfa", "confirm", "--code", code)
    recovery = [line.strip() for line in confirmed.splitlines() if line.startswith("  ")]
    assert len(recovery) == 10
    assert rita.json("audit", "list", "--limit", "5")  # the Session History is open to her now

    # A new login: the code was used by the confirmation, a recovery code works once.
    wrong = rita.run(
        "login", "-u", "rita", "--password-stdin", "--code", code, stdin=PASSWORD + "\n"
    )
    assert wrong.returncode == 1
    assert one_line(wrong.stderr) == "tether: That code was already used; wait for the next one."
    login(platform, rita, "rita", "--recovery-code", recovery[0])
    assert rita.json("whoami")["mfa_verified"] is True
    assert "rita (roles: script; Active Response tier: script; second factor passed)" in rita.ok(
        "whoami"
    )

    users = {u["username"]: u for u in admin.json("user", "list")}
    assert users["rita"]["mfa_enabled"] is True
    admin.ok("role", "revoke", "rita", "script")
    gone = rita.run("whoami")
    assert gone.returncode == 1
    assert "Your session is not valid" in one_line(gone.stderr)

    records = admin.json("audit", "list", "--limit", "1000")
    actions = [(r["action"], r["target"]) for r in records]
    assert ("user.create", "rita") in actions
    assert ("role.revoke", "rita") in actions
    assert ("mfa.enroll", "") in actions


def test_analyst_is_refused_the_audit_log_in_one_sentence(
    platform: Platform, admin: Cli, tmp_path: Path
) -> None:
    admin.ok("user", "add", "ann", "--role", "analyst", "--password-stdin", stdin=PASSWORD + "\n")
    ann = Cli(tmp_path / "ann", platform.env)
    login(platform, ann, "ann")
    assert ann.json("hosts") is not None
    refused = ann.run("audit", "list")
    assert refused.returncode == 1
    assert one_line(refused.stderr) == "tether: You need the audit.read permission for this."
    bad = admin.run("role", "grant", "ann", "root")
    assert bad.returncode == 1
    assert one_line(bad.stderr) == (
        "tether: 'root' is not a role; the roles are admin, analyst, collect, respond, script."
    )
    settings = admin.json("settings", "show")
    assert settings == {"mfa_required_for_everyone": False, "external_access_suspended": False}
    assert (
        json.loads(admin.ok("settings", "set", "external-access-suspended", "off", "--json"))[
            "external_access_suspended"
        ]
        is False
    )


def test_login_prompts_for_the_code_after_the_password(platform: Platform, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "prompted", platform.env)
    args = ["login", "--server", platform.url, "--ca", str(platform.ca), "-u", "admin"]
    bad = cli.run(*args, "--password-stdin", stdin=platform.admin_password + "\n12345\n")
    assert bad.returncode == 1
    assert one_line(bad.stderr) == (
        "tether: An authentication code is the 6 digits your authenticator app shows."
    )
    out = cli.ok(
        *args, "--password-stdin", stdin=f"{platform.admin_password}\n{platform.admin_code()}\n"
    )
    assert "Authentication code" in out
    assert f"Logged in to {platform.url} as admin." in out
