"""The Isolator's decisions (order, rollback, memory), over a backend that records calls.

What the rules do to packets is tested in test_packets.py with the real firewall; here the
backend is a recorder, because the question is which rules the Isolator asks for, and when.
"""

import asyncio
import dataclasses
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.agent.isolation.recording import NOW, V4, Reachability, Recorder, make
from tether.agent.actions import HANDLERS
from tether.agent.context import current_job
from tether.agent.errors import IsolationFailed
from tether.agent.gate import ResponseGate
from tether.agent.isolation import Isolator, check_seconds_from_environment
from tether.agent.isolation.isolator import choose_backend, platform_endpoint
from tether.agent.jobs import JobRunner
from tether.agent.journal import Journal
from tether.agent.state import StateDir
from tether.protocol import JobRequest
from tether.protocol.isolation import AllowRule, IsolationMode


async def test_isolate_applies_tests_and_remembers(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    allow = (AllowRule(cidr="10.0.0.0/8", ports=(22,)),)
    status = await isolator.isolate(IsolationMode.FULL, allow)
    assert status.model_dump(mode="json") == {
        "isolated": True,
        "mode": "full",
        "since": "2026-11-29T03:00:00Z",
        "backend": "nftables",
        "platform": ["127.0.0.1"],
        "allow": [{"cidr": "10.0.0.0/8", "ports": [22]}],
    }
    assert backend.calls == ["apply full 127.0.0.1"]
    assert probe.asked == [((V4,), 8444)]
    path = tmp_path / "isolation.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text())["platform"] == ["127.0.0.1"]
    assert await isolator.status() == status


async def test_an_unreachable_platform_rolls_back_to_no_rules(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    probe.up = False
    with pytest.raises(
        IsolationFailed,
        match=r"^The platform \(127.0.0.1 port 8444\) was unreachable through the new isolation rules, so they were rolled back and nothing changed\.$",
    ):
        await isolator.isolate(IsolationMode.OUTBOUND)
    assert backend.calls == ["apply outbound 127.0.0.1", "remove"]
    assert backend.rules is None
    assert not (tmp_path / "isolation.json").exists()


async def test_a_failed_change_of_an_isolated_host_restores_its_rules(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    await isolator.isolate(IsolationMode.FULL)
    kept = backend.rules
    probe.up = False
    with pytest.raises(IsolationFailed):
        await isolator.isolate(IsolationMode.OUTBOUND)
    assert backend.calls[-2:] == ["apply outbound 127.0.0.1", "apply full 127.0.0.1"]
    assert backend.rules == kept
    assert (await isolator.status()).mode is IsolationMode.FULL


async def test_rules_the_firewall_refused_are_rolled_back_too(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    backend.fail_apply = True
    with pytest.raises(IsolationFailed, match="boom"):
        await isolator.isolate(IsolationMode.OUTBOUND)
    assert backend.calls == ["apply outbound 127.0.0.1", "remove"]


async def test_changing_mode_keeps_the_time_isolation_began(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    await isolator.isolate(IsolationMode.FULL)
    later = Isolator(
        StateDir(tmp_path),
        "wss://127.0.0.1:8444/a",
        backend=backend,
        probe=probe,
        require_privileges=False,
        clock=lambda: datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert (await later.isolate(IsolationMode.OUTBOUND)).since == NOW


async def test_release_is_idempotent_and_remembered(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    await isolator.isolate(IsolationMode.OUTBOUND)
    assert (await isolator.release()).isolated is False
    assert (await isolator.release()).isolated is False
    assert backend.calls[-2:] == ["remove", "remove"]
    assert await isolator.reassert() == "not isolated"
    assert backend.calls[-1] == "remove"  # reassert touched nothing


async def test_reassert_puts_missing_rules_back_even_when_the_platform_is_down(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    await isolator.isolate(IsolationMode.FULL)
    assert await isolator.reassert() == "in place"
    backend.rules = None  # a reboot
    probe.up = False
    assert await isolator.reassert() == "restored, platform unreachable"
    assert backend.rules is not None
    assert backend.rules.mode is IsolationMode.FULL


async def test_reassert_keeps_the_last_addresses_when_the_name_does_not_resolve(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe, url="wss://platform.invalid:8444/agent")
    state = StateDir(tmp_path)
    state.write_private(
        tmp_path / "isolation.json",
        json.dumps(
            {
                "isolated": True,
                "mode": "outbound",
                "since": "2026-11-29T03:00:00Z",
                "platform": ["192.0.2.7"],
                "platform_port": 8444,
                "backend": "nftables",
            }
        ).encode(),
    )
    assert await isolator.reassert() == "restored"
    assert backend.calls == ["apply outbound 192.0.2.7"]


async def test_isolating_without_a_resolvable_platform_says_so(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe, url="wss://platform.invalid:8444/agent")
    with pytest.raises(
        IsolationFailed, match=r"^The platform's name platform.invalid could not be resolved\.$"
    ):
        await isolator.isolate(IsolationMode.OUTBOUND)
    assert backend.calls == []


async def test_a_damaged_state_file_is_reported_not_guessed(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    (tmp_path / "isolation.json").write_text("{not json")
    isolator = make(tmp_path, backend, probe)
    assert (await isolator.reassert()).startswith("failed: ")
    with pytest.raises(IsolationFailed, match="is damaged"):
        await isolator.status()
    # An explicit isolation replaces it.
    assert (await isolator.isolate(IsolationMode.OUTBOUND)).isolated


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("wss://tether.example.org:8444/agent", ("tether.example.org", 8444)),
        ("wss://[2001:db8::1]/agent", ("2001:db8::1", 443)),
        ("ws://10.0.0.5/agent", ("10.0.0.5", 80)),
    ],
)
def test_the_platform_endpoint_comes_from_the_agent_url(
    url: str, endpoint: tuple[str, int]
) -> None:
    assert platform_endpoint(url) == endpoint


def test_check_interval_and_backend_choice_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_ISOLATION_CHECK_SECONDS", raising=False)
    assert check_seconds_from_environment() == 60.0
    monkeypatch.setenv("TETHER_ISOLATION_CHECK_SECONDS", "0.5")
    assert check_seconds_from_environment() == 0.5
    monkeypatch.setenv("TETHER_ISOLATION_CHECK_SECONDS", "soon")
    with pytest.raises(ValueError, match="is not a number of seconds"):
        check_seconds_from_environment()
    with pytest.raises(IsolationFailed, match="must be nftables or iptables"):
        choose_backend("pf")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        IsolationFailed,
        match=r"^Neither nft nor iptables is installed on this endpoint, so it cannot be isolated\.$",
    ):
        choose_backend()


async def test_without_root_nothing_is_touched(
    tmp_path: Path, backend: Recorder, probe: Reachability, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tether.agent.isolation.isolator.os.geteuid", lambda: 1000)
    isolator = Isolator(StateDir(tmp_path), "wss://127.0.0.1:8444/a", backend=backend, probe=probe)
    with pytest.raises(
        IsolationFailed,
        match=r"^The agent is not running as root, so it cannot change the firewall\.$",
    ):
        await isolator.isolate(IsolationMode.OUTBOUND)
    assert backend.calls == []


async def test_a_second_process_waits_for_the_change_in_progress(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    agent = make(tmp_path, backend, probe)
    owner = make(tmp_path, backend, probe)  # another Isolator: its own asyncio lock
    await agent.isolate(IsolationMode.OUTBOUND)
    async with agent.store.exclusive():
        release = asyncio.create_task(owner.release())
        await asyncio.sleep(0.2)
        assert not release.done()
        assert backend.rules is not None
    assert (await release).isolated is False
    assert backend.rules is None


async def test_an_ephemeral_status_call_reaches_the_agents_isolator(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    await isolator.isolate(IsolationMode.FULL)
    jobs = JobRunner(Journal(tmp_path / "journal.db"), HANDLERS, ResponseGate(), isolator=isolator)
    sent: list[dict[str, object]] = []

    async def send(text: str) -> None:
        sent.append(json.loads(text))

    await jobs.attach(send)
    await jobs.on_job(JobRequest(job_id="s1", action="isolation.status", args={}, ephemeral=True))
    assert sent[-1]["state"] == "succeeded"
    result = sent[-1]["result"]
    assert isinstance(result, dict)
    assert (result["isolated"], result["mode"]) == (True, "full")
    # The context was the call's only: none is left behind in this task.
    assert current_job.get() is None


def test_the_public_surface() -> None:
    import tether.agent.isolation as package

    assert sorted(package.__all__) == [
        "DesiredIsolation",
        "FirewallBackend",
        "IptablesBackend",
        "IsolationPolicy",
        "IsolationStore",
        "Isolator",
        "NftablesBackend",
        "WindowsFirewallBackend",
        "check_seconds_from_environment",
        "choose_backend",
        "tcp_probe",
    ]


async def test_reassert_follows_a_new_platform_port(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    await make(tmp_path, backend, probe).isolate(IsolationMode.OUTBOUND)
    moved = make(tmp_path, backend, probe, url="wss://127.0.0.1:9444/agent")
    assert await moved.reassert() == "re-applied"
    assert backend.rules is not None
    assert backend.rules.platform_port == 9444
    assert probe.asked[-1] == ((V4,), 9444)


async def test_a_state_file_with_a_bad_address_is_damaged(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    (tmp_path / "isolation.json").write_text(
        json.dumps({"isolated": True, "mode": "full", "platform": ["not-an-address"]})
    )
    isolator = make(tmp_path, backend, probe)
    assert (await isolator.reassert()).endswith(
        "is damaged, so the agent does not know whether this host should be isolated."
    )
    assert backend.calls == []


async def test_rules_changed_behind_the_agents_back_are_repaired(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    await isolator.isolate(IsolationMode.FULL)
    applied = backend.rules
    assert applied is not None
    backend.rules = dataclasses.replace(applied, mode=IsolationMode.OUTBOUND)  # tampered
    assert await isolator.reassert() == "repaired"
    assert backend.rules == applied


async def test_a_new_agent_process_takes_rules_that_match_as_in_place(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    await make(tmp_path, backend, probe).isolate(IsolationMode.FULL)
    asked = len(probe.asked)
    restarted = make(tmp_path, backend, probe)
    assert await restarted.reassert() == "in place"
    # Re-applied once to know the rules are exactly the recorded ones; no probe needed.
    assert backend.calls[-1] == "apply full 127.0.0.1"
    assert len(probe.asked) == asked
    assert await restarted.reassert() == "in place"


async def test_a_new_allowlist_reaches_an_isolated_host_at_once(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    old = (AllowRule(cidr="10.0.0.0/8"),)
    await isolator.isolate(IsolationMode.FULL, old)
    new = (AllowRule(cidr="192.0.2.53/32", ports=(53,)),)
    assert await isolator.adopt_allowlist(new) == "re-applied"
    assert backend.calls[-1] == "apply full 127.0.0.1"
    status = await isolator.status()
    assert status.allow == new
    assert status.mode is IsolationMode.FULL
    assert status.since == NOW
    assert isolator.default_allow == new
    # The same list again (every reconnect brings the policy) touches nothing.
    calls = len(backend.calls)
    assert await isolator.adopt_allowlist(new) == "unchanged"
    assert len(backend.calls) == calls


async def test_an_allowlist_that_cuts_the_platform_off_keeps_the_old_rules(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    old = (AllowRule(cidr="10.0.0.0/8"),)
    await isolator.isolate(IsolationMode.OUTBOUND, old)
    kept = backend.rules
    probe.up = False
    outcome = await isolator.adopt_allowlist((AllowRule(cidr="192.0.2.0/24"),))
    assert outcome.startswith("failed: The platform (127.0.0.1 port 8444) was unreachable")
    assert backend.rules == kept
    assert (await isolator.status()).allow == old


async def test_a_host_not_isolated_only_remembers_the_allowlist(
    tmp_path: Path, backend: Recorder, probe: Reachability
) -> None:
    isolator = make(tmp_path, backend, probe)
    new = (AllowRule(cidr="192.0.2.0/24"),)
    assert await isolator.adopt_allowlist(new) == "unchanged"
    assert backend.calls == []
    assert isolator.default_allow == new
