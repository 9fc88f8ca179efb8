"""No password-only path to endpoints, played as the attacker on a real platform (docs/adr/0034).

A password-only admin tries every step that used to lead to running code on endpoints and is
refused with one sentence each; enrolling needs the code an admin issues; nobody changes their
own roles or factor; a stale session needs a fresh code; sessions can be listed and ended; the
platform host's break-glass command brings an account back. TOTP codes come from Debian's
oathtool where it is installed (the platform's own implementation otherwise).
"""

import json
import os
import re
import select
import shutil
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tether.server.auth.totp import from_base32, totp
from tether.server.services.session_cache import DEFAULT_TTL_SECONDS

from .harness import Authenticator, Cli, Platform, tether_command
from .test_cli_errors import one_line

pytestmark = pytest.mark.e2e
PASSWORD = "mallory's long password"


def enroll_first(username: str) -> str:
    return (
        "tether: Enroll a second factor first: your role requires one; ask an admin for an "
        f"enrollment code ('tether user enrollment-code {username}'), then run "
        "'tether mfa enroll --enrollment-code CODE' and 'tether mfa confirm --code CODE'."
    )


FRESH_CODE_NEEDED = (
    "tether: This change needs a fresh second-factor code: your last one was more than 5 "
    "minutes ago; send the code your authenticator app shows now (CLI: --code, web: the code "
    "field, API: the X-Tether-Code header)."
)


def code_at(secret: str, at: int) -> str:
    tool = shutil.which("oathtool")
    if tool is None:
        return totp(from_base32(secret), at)
    out = subprocess.run(
        [tool, "--totp", "-b", "-N", f"@{at}", secret],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return out.stdout.strip()


def phone_for(secret: str) -> Authenticator:
    """The user's phone: codes computed by oathtool where it is installed."""
    return Authenticator(secret, code_at)


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


def refused(cli: Cli, *args: str, stdin: str | None = None) -> str:
    """Run a command that must fail; its one line of stderr."""
    result = cli.run(*args, stdin=stdin)
    assert result.returncode != 0, result.stdout
    return one_line(result.stderr)


def make_stale(platform: Platform, username: str) -> None:
    """Age the user's sessions' last second-factor check past the 5-minute window, as time
    would (the platform process keeps running; SQLite takes the write beside it)."""
    with sqlite3.connect(platform.db, timeout=10) as db:
        rows = db.execute(
            "SELECT token_hash, mfa_verified_at FROM sessions WHERE user_id = "
            "(SELECT id FROM users WHERE username = ?) AND mfa_verified_at IS NOT NULL",
            (username,),
        ).fetchall()
        assert rows, f"{username} has no session that passed a second factor"
        for token_hash, checked in rows:
            older = datetime.fromisoformat(checked) - timedelta(minutes=6)
            db.execute(
                "UPDATE sessions SET mfa_verified_at = ? WHERE token_hash = ?",
                (older.strftime("%Y-%m-%d %H:%M:%S.%f"), token_hash),
            )
    # Written behind the platform's back: it may trust what it read of the sessions for the
    # session cache's few seconds (docs/adr/0053).
    time.sleep(DEFAULT_TTL_SECONDS)


def test_a_password_only_admin_reaches_nothing_until_an_admin_issues_a_code(
    platform: Platform, admin: Cli, tmp_path: Path
) -> None:
    admin.ok("user", "add", "mallory", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    mallory = Cli(tmp_path / "mallory", platform.env)
    told = login(platform, mallory, "mallory")
    assert (
        "Your role requires a second factor: ask an admin for an enrollment code "
        "('tether user enrollment-code mallory')" in told
    )
    script = tmp_path / "whoami.py"
    script.write_text("print('owned')\n")
    # Every step towards running code on endpoints, with the password alone.
    for attempt in (
        ("role", "grant", "mallory", "script"),
        ("segment", "set", "default", "--active-response", "on"),
        ("enroll-token", "create", "--segment", "default"),
        ("user", "enrollment-code", "mallory"),
        ("settings", "set", "mfa-required-for-everyone", "off"),
        ("run", "any-host", str(script)),
        ("hosts",),
    ):
        assert refused(mallory, *attempt) == enroll_first("mallory"), attempt
    # Enrolling her own authenticator without a code, or with a made-up one.
    assert refused(mallory, "mfa", "enroll") == (
        "tether: Enrolling a second factor needs an enrollment code from an admin: ask one to "
        "run 'tether user enrollment-code mallory', then enroll with that code."
    )
    assert refused(mallory, "mfa", "enroll", "--enrollment-code", "AAAAA-AAAAA-AAAAA-AAAAA") == (
        "tether: That enrollment code is wrong, used or expired; ask an admin for a new one "
        "('tether user enrollment-code mallory')."
    )
    # The same refusals straight at the API, with her bearer token.
    with mallory.api() as api:
        for method, path in (
            ("PUT", "/users/mallory/roles/script"),
            ("POST", "/enrollment-tokens"),
            ("PATCH", "/segments/default"),
        ):
            answer = api.request(method, path, json={"active_response": True, "segment": "x"})
            assert answer.status_code == 403
            assert answer.json() == {"detail": enroll_first("mallory").removeprefix("tether: ")}
    users = {u["username"]: u for u in admin.json("user", "list")}
    assert users["mallory"]["roles"] == ["admin"]
    assert users["mallory"]["mfa_enabled"] is False
    records = admin.json("audit", "list", "--limit", "1000")
    uses = [
        (r["outcome"], r["details"].get("reason"))
        for r in records
        if r["action"] == "mfa.enrollment_code.use" and r["actor"] == "mallory"
    ]
    assert sorted(uses) == [("failure", "no code"), ("failure", "wrong or used")]


def test_with_the_admins_code_she_enrolls_but_never_changes_her_own_access(
    platform: Platform, admin: Cli, tmp_path: Path
) -> None:
    admin.ok("user", "add", "trent", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    trent = Cli(tmp_path / "trent", platform.env)
    login(platform, trent, "trent")
    issued = admin.json("user", "enrollment-code", "trent", "--hours", "2")
    assert issued["username"] == "trent"
    started = trent.json("mfa", "enroll", "--enrollment-code", issued["code"])
    # A second run from the same login shows the same secret: nothing scanned is lost.
    assert trent.json("mfa", "enroll")["secret"] == started["secret"]
    phone = phone_for(started["secret"])
    recovery = trent.ok("mfa", "confirm", "--code", phone.code())
    assert "Recovery codes" in recovery
    assert trent.json("whoami")["mfa_verified"] is True
    # Nobody changes their own roles or second factor, even with the factor passed.
    assert refused(trent, "role", "grant", "trent", "script") == (
        "tether: You cannot change the roles of your own account; ask another admin."
    )
    assert refused(trent, "role", "revoke", "trent", "admin") == (
        "tether: You cannot change the roles of your own account; ask another admin."
    )
    assert refused(trent, "user", "reset-mfa", "trent") == (
        "tether: You cannot reset your own second factor; ask another admin."
    )
    # The code was used once; it does not work again for anyone.
    other = Cli(tmp_path / "trent-2", platform.env)
    login(platform, other, "trent", "--code", phone.code())
    admin.ok("user", "add", "peggy", "--role", "script", "--password-stdin", stdin=PASSWORD + "\n")
    peggy = Cli(tmp_path / "peggy", platform.env)
    login(platform, peggy, "peggy")
    assert refused(peggy, "mfa", "enroll", "--enrollment-code", issued["code"]).startswith(
        "tether: That enrollment code is wrong, used or expired"
    )

    # Step-up: a session whose last code is over 5 minutes old needs a fresh one.
    make_stale(platform, "trent")
    assert refused(trent, "role", "grant", "peggy", "analyst") == FRESH_CODE_NEEDED
    assert refused(trent, "role", "grant", "peggy", "analyst", "--code", "000000") in {
        "tether: The code is wrong; enter the one your authenticator app shows now.",
        "tether: That code was already used; wait for the next one.",
    }
    granted = trent.json("role", "grant", "peggy", "analyst", "--code", phone.code())
    assert granted["roles"] == ["analyst", "script"]
    # Fresh again for 5 minutes: the next change needs no code.
    assert trent.json("user", "enrollment-code", "peggy")["username"] == "peggy"
    # Through the API, the header carries the code.
    make_stale(platform, "trent")
    with trent.api() as api:
        stale = api.put("/users/peggy/roles/admin")
        assert stale.status_code == 403
        assert stale.headers["x-tether-step-up"] == "required"
        fresh = api.put("/users/peggy/roles/admin", headers={"X-Tether-Code": phone.code()})
        assert fresh.status_code == 200, fresh.text

    records = admin.json("audit", "list", "--limit", "1000")
    mine = [r for r in records if r["actor"] == "trent"]
    refusals = {
        (r["action"], r["details"].get("reason")) for r in mine if r["outcome"] == "failure"
    }
    assert ("role.grant", "own account") in refusals
    assert ("role.revoke", "own account") in refusals
    assert ("mfa.reset", "own account") in refusals
    assert ("auth.step_up", "no fresh code") in refusals
    assert any(r["action"] == "auth.step_up" and r["outcome"] == "success" for r in mine)
    issues = [r["target"] for r in records if r["action"] == "mfa.enrollment_code.issue"]
    assert "trent" in issues


def test_sessions_are_listed_and_ended_and_break_glass_brings_an_account_back(
    platform: Platform, admin: Cli, tmp_path: Path
) -> None:
    admin.ok("user", "add", "victor", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    laptop = Cli(tmp_path / "laptop", platform.env)
    login(platform, laptop, "victor")
    code = admin.json("user", "enrollment-code", "victor")["code"]
    phone = phone_for(laptop.json("mfa", "enroll", "--enrollment-code", code)["secret"])
    laptop.ok("mfa", "confirm", "--code", phone.code())
    desktop = Cli(tmp_path / "desktop", platform.env)
    login(platform, desktop, "victor", "--code", phone.code())

    listed = desktop.json("sessions")
    assert len(listed) == 2
    laptop_session = next(s for s in listed if not s["current"])
    assert "this one" in desktop.ok("sessions")
    assert refused(desktop, "sessions", "end", next(s["id"] for s in listed if s["current"])) == (
        "tether: That is the session you are using; log out to end it."
    )
    assert f"Session {laptop_session['id']} ended." in desktop.ok(
        "sessions", "end", laptop_session["id"]
    )
    assert refused(laptop, "whoami").startswith("tether: Your session is not valid")
    # An admin sees and ends someone else's.
    theirs = admin.json("sessions", "--user", "victor")
    assert [s["current"] for s in theirs] == [False]
    admin.ok("sessions", "end", theirs[0]["id"], "--user", "victor")
    assert refused(desktop, "whoami").startswith("tether: Your session is not valid")

    # Victor lost his phone and his recovery codes; on the platform host, the operator:
    glass = subprocess.run(
        [*tether_command(), "server", "enrollment-code", "--data", str(platform.data), "victor"],
        capture_output=True,
        text=True,
        env=platform.env,
        timeout=60,
        check=False,
    )
    assert glass.returncode == 0, glass.stderr
    first_line = glass.stdout.splitlines()[0]
    assert first_line.startswith("Enrollment code for victor: ")
    host_code = first_line.removeprefix("Enrollment code for victor: ")
    told = login(platform, desktop, "victor")
    assert "Your role requires a second factor" in told
    new_phone = desktop.json("mfa", "enroll", "--enrollment-code", host_code)
    desktop.ok("mfa", "confirm", "--code", phone_for(new_phone["secret"]).code())
    assert desktop.json("whoami")["mfa_verified"] is True

    records = admin.json("audit", "list", "--limit", "1000")
    host = [
        (r["action"], r["target"], r["source"]) for r in records if r["actor"] == "platform host"
    ]
    assert ("mfa.reset", "victor", "tether server enrollment-code") in host
    assert ("mfa.enrollment_code.issue", "victor", "tether server enrollment-code") in host
    ends = [r["target"] for r in records if r["action"] == "session.end"]
    assert ends.count("victor") == 2
    assert json.dumps(records).count(host_code) == 0


def run_in_terminal(cli: Cli, args: list[str], answer: str, prompt: str) -> tuple[int, str]:
    """Run `tether ARGS` on a pseudo-terminal (as a person at a shell would), type `answer`
    once `prompt` shows; returns the exit status and everything the terminal showed."""
    primary, secondary = os.openpty()
    proc = subprocess.Popen(
        [*tether_command(), *args],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env={**cli.env, "TETHER_CONFIG_DIR": str(cli.config_dir), "COLUMNS": "200"},
        close_fds=True,
    )
    os.close(secondary)
    shown = b""
    answered = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            if not answered and prompt.encode() in shown:
                os.write(primary, (answer + "\n").encode())
                answered = True
            if proc.poll() is not None and not ready:
                break
        # Without the terminal's colours: the words are what is checked.
        plain = re.sub(r"\x1b\[[0-9;]*m", "", shown.decode(errors="replace"))
        return proc.wait(timeout=10), plain
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()


def test_in_a_terminal_the_cli_asks_for_the_fresh_code_and_sends_the_change_again(
    platform: Platform, admin: Cli, tmp_path: Path
) -> None:
    admin.ok("user", "add", "olga", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    admin.ok("user", "add", "sam", "--role", "analyst", "--password-stdin", stdin=PASSWORD + "\n")
    olga = Cli(tmp_path / "olga", platform.env)
    login(platform, olga, "olga")
    code = admin.json("user", "enrollment-code", "olga")["code"]
    phone = phone_for(olga.json("mfa", "enroll", "--enrollment-code", code)["secret"])
    olga.ok("mfa", "confirm", "--code", phone.code())
    make_stale(platform, "olga")
    status, shown = run_in_terminal(
        olga,
        ["role", "grant", "sam", "script"],
        phone.code(),
        "Authentication code (this change needs a fresh one)",
    )
    assert status == 0, shown
    assert "Updated sam (roles: analyst, script)." in shown
    users = {u["username"]: u for u in admin.json("user", "list")}
    assert users["sam"]["roles"] == ["analyst", "script"]
