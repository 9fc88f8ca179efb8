"""`tether segment set --approval`, a run that waits for approval, `tether job approve|reject`
and `tether job show` with the decision, against a platform in process."""

from pathlib import Path

from tether.protocol import Role
from tether.server.services.platform import Platform
from tether.server.services.users import User

from .conftest import Cli, Hosts


async def test_a_run_in_an_approval_segment_waits_and_shows_who_decided(
    cli: Cli, hosts: Hosts, platform: Platform, tmp_path: Path
) -> None:
    hosts.online("ws-1")
    changed = await cli("segment", "set", "lab", "--approval", "script")
    assert changed.code == 0, changed.stderr
    assert "script actions need a second person's approval (within 24 h)" in changed.stdout

    script = tmp_path / "probe.py"
    script.write_text("print('hi')\n")
    ran = await cli("run", "ws-1", str(script))
    # The command does not wait hours for a person: it says so and ends.
    assert ran.code == 0, ran.stderr
    assert "Segment lab needs a second person's approval for script actions; job " in ran.stderr
    (job_id,) = await hosts.jobs_of("ws-1")
    assert f"'tether job approve {job_id}'" in ran.stderr

    own = await cli("job", "approve", job_id)
    assert own.code != 0
    assert f"admin requested job {job_id}; a different person must approve it." in own.stderr
    rejected = await cli("job", "reject", job_id[:12])
    assert rejected.code != 0  # --reason is required

    sam = await platform.users.create("sam", "a long enough password", {Role.SCRIPT})
    person = User(sam.id, "sam", frozenset({"script"}), False, mfa_verified=True)
    await platform.approvals.reject(job_id, person, reason="not on ws-1", source="t")
    shown = await cli("job", "show", job_id)
    assert shown.code == 0, shown.stderr
    assert "rejected by sam: not on ws-1" in shown.stdout
    listed = await cli("jobs", "--state", "rejected", "--json")
    assert job_id in listed.stdout
