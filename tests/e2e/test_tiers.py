"""Active Response tiers end to end: real platform, real agent, people enrolled with TOTP codes.

A collect-tier user lists processes but is refused a kill; a respond-tier user runs a library
script but is refused arbitrary source (by `tether run` and by the live shell's `py`); every
refusal names the tier and is in the audit log, which every tier reads.
"""

import json
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.protocol import FINAL_STATES
from tether.server.api.deps import NOT_FOR_SERVICES
from tether.server.auth.totp import from_base32, totp

from .harness import Agent, Children, Cli, Platform
from .test_cli_errors import one_line

pytestmark = pytest.mark.e2e
PASSWORD = "tiered password 1"


def enrolled(
    platform: Platform, admin: Cli, name: str, tier: str, folder: Path, *, fresh: bool = False
) -> Cli:
    """A user holding `tier`, logged in from `folder` with a second factor enrolled. With
    `fresh`, the user is made through the API: the CLI's `user add` and `enrollment-code` are
    covered by the other callers, and each CLI start costs seconds on a busy machine."""
    if fresh:
        with admin.api() as api:
            made = api.post(
                "/users", json={"username": name, "password": PASSWORD, "roles": [tier]}
            )
            assert made.status_code == 201, made.text
    else:
        # These admin changes need step-up (ADR 0034): the admin's login passed the second
        # factor minutes ago, and a session older than 5 minutes is given a fresh code by the
        # harness (`Cli.step_up`), so no code is spent on a change the window already allows.
        admin.ok("user", "add", name, "--role", tier, "--password-stdin", stdin=PASSWORD + "\n")
    cli = Cli(folder, platform.env)
    cli.ok(
        "login",
        "--server",
        platform.url,
        "--ca",
        str(platform.ca),
        "-u",
        name,
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    if fresh:
        with admin.api() as api:
            answer = api.post(f"/users/{name}/enrollment-code")
            assert answer.status_code in (200, 201), answer.text
            issued = answer.json()
    else:
        issued = admin.json("user", "enrollment-code", name)
    started = cli.json("mfa", "enroll", "--enrollment-code", issued["code"])
    cli.ok("mfa", "confirm", "--code", totp(from_base32(started["secret"]), time.time()))
    return cli


def refusal(cli: Cli, *args: str, stdin: str | None = None) -> str:
    answer = cli.run(*args, stdin=stdin)
    assert answer.returncode != 0, answer.stdout
    return one_line(answer.stderr)


def refused_records(cli: Cli) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = cli.json("audit", "list", "--limit", "1000")
    return [r for r in records if r["action"] == "job.refused"]


def test_collect_lists_but_may_not_kill_and_respond_runs_library_scripts_only(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    platform, admin, _ = responding
    host = endpoint.host_id
    rita = enrolled(platform, admin, "rita", "collect", tmp_path / "rita")
    rosa = enrolled(platform, admin, "rosa", "respond", tmp_path / "rosa")
    assert "rita (roles: collect; Active Response tier: collect;" in rita.ok("whoami")
    assert rosa.json("whoami")["tier"] == "respond"

    # collect: the process list, never a kill.
    processes = rita.json("ps", host, "--json")
    assert any(p["pid"] == 1 for p in processes["processes"])
    assert refusal(rita, "kill", host, "999999") == (
        "tether: rita has the collect tier; kill needs respond."
    )

    # respond: a library script the script tier saved, never source of its own.
    source = tmp_path / "hello.py"
    source.write_text("print('hello from the library')\n")
    admin.ok("script", "save", "hello", str(source), "--description", "Says hello.")
    ran = rosa.ok("run", host, "--script", "hello")
    assert "hello from the library" in ran
    own = tmp_path / "own.py"
    own.write_text("print('mine')\n")
    assert refusal(rosa, "run", host, str(own)) == (
        "tether: rosa has the respond tier; an arbitrary script needs script."
    )
    # The live shell's `py` is arbitrary source too; its `run` is a library run.
    shell = rosa.run("shell", host, stdin="py 1 + 1\nrun hello\n")
    assert "py: rosa has the respond tier; an arbitrary script needs script." in shell.stderr
    assert "hello from the library" in shell.stdout
    # The attacker's try: changing the library, which respond-tier runs trust, needs script.
    assert refusal(rosa, "script", "save", "hello", str(own), "--description", "x") == (
        "tether: rosa has the respond tier; changing the script library needs script."
    )

    # Each refusal is in the chain, readable by the lowest tier too.
    seen = [(r["actor"], r["target"]) for r in refused_records(rita)]
    assert ("rita", "processes.kill") in seen
    assert seen.count(("rosa", "script.run")) == 2
    assert json.dumps(refused_records(admin)) == json.dumps(refused_records(rita))


def test_lowering_a_tier_takes_effect_at_once(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    platform, admin, _ = responding
    sam = enrolled(platform, admin, "sam", "script", tmp_path / "sam")
    own = tmp_path / "own.py"
    own.write_text("print('mine')\n")
    assert "mine" in sam.ok("run", endpoint.host_id, str(own))
    admin.ok("role", "grant", "sam", "collect")
    users = {u["username"]: u for u in admin.json("user", "list")}
    assert users["sam"]["roles"] == ["collect"]
    # Lowering ended his sessions: he logs in again and now holds collect only.
    assert refusal(sam, "whoami").startswith("tether: Your session is not valid")


def test_a_service_token_acts_only_in_its_segments_until_revoked(
    responding: tuple[Platform, Cli, Children], endpoint: Agent
) -> None:
    """A SOAR playbook's token: kills in its segment, is refused elsewhere, in a live session
    and after revocation; every call is in the chain under its name."""
    _, admin, _ = responding
    admin.ok("segment", "create", "quarantine")
    create = ["service-token", "create", "--tier", "respond", "--expires", "1d"]
    soar = admin.json(*create, "soar", "--segment", "ir")
    elsewhere = admin.json(*create, "elsewhere", "--segment", "quarantine", "--source", "127.0.0.1")
    assert soar["token"].startswith("tts_")
    assert "token" not in admin.json("service-token", "list")[0]

    with admin.api() as api:
        hostname = api.get(f"/hosts/{endpoint.host_id}").json()["hostname"]
        base, verify = (
            str(api.base_url),
            ssl.create_default_context(cadata=admin.profile()["ca_pem"]),
        )

    def as_token(token: str) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"}
        return httpx.Client(base_url=base, verify=verify, headers=headers, timeout=10.0)

    kill = {"action": "processes.kill", "args": {"pid": 999999}, "hosts": [endpoint.host_id]}
    with as_token(soar["token"]) as api:
        assert api.get("/auth/whoami").json()["username"] == "service:soar"
        submitted = api.post("/jobs", json=kill)
        assert submitted.status_code == 201, submitted.text
        assert submitted.json()["created_by"] == "service:soar"
        shell = api.post("/sessions", json={"host": endpoint.host_id})
        assert (shell.status_code, shell.json()["detail"]) == (403, NOT_FOR_SERVICES)
    with as_token(elsewhere["token"]) as api:
        refused = api.post("/jobs", json=kill)
        assert (refused.status_code, refused.json()["detail"]) == (
            403,
            f"service:elsewhere may act only in segments quarantine; {hostname} is in segment ir.",
        )

    admin.ok("service-token", "revoke", "soar")
    with as_token(soar["token"]) as api:
        gone = api.post("/jobs", json=kill)
        assert (gone.status_code, gone.json()["detail"]) == (
            401,
            "Service token soar was revoked; ask an admin for a new one.",
        )
    listed = {t["name"]: t for t in admin.json("service-token", "list")}
    assert listed["soar"]["revoked_by"] == "admin"
    assert listed["soar"]["last_used_from"] == "127.0.0.1"

    records = admin.json("audit", "list", "--limit", "1000")
    calls = [(r["actor"], r["outcome"]) for r in records if r["action"] == "service_token.call"]
    assert calls.count(("service:soar", "success")) == 2  # whoami, the kill
    assert calls.count(("service:soar", "failure")) == 2  # the live session, after revocation
    assert [r["actor"] for r in records if r["action"] == "job.submit"][-1] == "service:soar"
    refusals = [r["actor"] for r in records if r["action"] == "job.refused"]
    assert "service:elsewhere" in refusals
    assert ("admin", "service:soar") in [
        (r["actor"], r["target"]) for r in records if r["action"] == "service_token.revoke"
    ]


def test_a_second_person_approves_a_request_and_the_job_runs(
    responding: tuple[Platform, Cli, Children], endpoint: Agent, tmp_path: Path
) -> None:
    """Four eyes across two people with their own TOTP codes and a real agent: alma's library
    run waits, alma cannot approve it herself, bert approves it and it runs."""
    platform, admin, _ = responding
    # Stricter needs no fresh code, but one sent here opens the step-up window for the rest.
    admin.ok("segment", "set", "ir", "--approval", "respond", "--code", platform.admin_code())
    try:
        alma = enrolled(platform, admin, "alma", "respond", tmp_path / "alma", fresh=True)
        bert = enrolled(platform, admin, "bert", "respond", tmp_path / "bert", fresh=True)
        with admin.api() as api:
            saved = api.put(
                "/scripts/approved",
                json={"source": "print('ran after approval')\n", "description": "Says so."},
            )
            assert saved.status_code in (200, 201), saved.text

        asked = alma.run("run", endpoint.host_id, "--script", "approved")
        assert asked.returncode == 0, asked.stderr
        notice = one_line(asked.stderr)
        assert notice.startswith(
            "Segment ir needs a second person's approval for respond and script actions; job "
        )
        job_id = notice.split("; job ", 1)[1].split(" ", 1)[0]
        with bert.api() as api:
            waiting = api.get(f"/jobs/{job_id}").json()
        assert (waiting["state"], waiting["approval"]["state"]) == ("awaiting_approval", "pending")
        assert refusal(alma, "job", "approve", job_id) == (
            f"tether: alma requested job {job_id}; a different person must approve it."
        )
        assert "Approved: script.run requested by alma" in bert.ok(
            "job", "approve", job_id, "--reason", "checked with alma"
        )
        with bert.api() as api:
            deadline = time.monotonic() + 30
            job: dict[str, Any] = {}
            while time.monotonic() < deadline:
                job = api.get(f"/jobs/{job_id}/output", params={"wait": 10}).json()["job"]
                if job["state"] in FINAL_STATES:
                    break
        assert job["state"] == "succeeded", job
        shown = alma.ok("job", "show", job_id)
        assert "ran after approval" in shown
        assert "approved by bert: checked with alma" in shown
        with alma.api() as api:
            records = api.get("/audit", params={"limit": 1000}).json()
        decided = [
            (r["action"], r["actor"]) for r in records if r["action"].startswith("job.appro")
        ]
        for expected in (
            ("job.approval.request", "alma"),
            ("job.approval.refused", "alma"),
            ("job.approve", "bert"),
        ):
            assert expected in decided
    finally:
        # Fewer actions waiting is a sensitive change; still within the window of the code.
        admin.ok("segment", "set", "ir", "--approval", "off")
