"""What the agent tells the platform about its isolation when no isolation job does."""

import json
from pathlib import Path
from typing import Any

from tether.agent.isolation_watch import IsolationWatch
from tether.protocol.isolation import AllowRule, IsolationMode

from .isolation.recording import Reachability, Recorder, make


class Sent:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def __call__(self, text: str) -> None:
        self.frames.append(json.loads(text))


async def test_script_changes_are_reported_job_changes_are_not(tmp_path: Path) -> None:
    isolator = make(tmp_path, Recorder(), Reachability())
    watch = IsolationWatch(isolator)
    sent = Sent()
    assert (await watch.for_hello()) is not None
    watch.attach(sent)
    # An isolation job: its own result tells the platform.
    await isolator.isolate(IsolationMode.OUTBOUND)
    assert sent.frames == []
    # A script: reported with its job.
    await isolator.isolate(IsolationMode.FULL, cause="script", job_id="job-7")
    await isolator.release(cause="script", job_id="job-7")
    assert [(f["cause"], f["job_id"], f["status"]["isolated"]) for f in sent.frames] == [
        ("script", "job-7", True),
        ("script", "job-7", False),
    ]


async def test_a_local_release_is_found_by_the_check_and_reported_once(tmp_path: Path) -> None:
    backend = Recorder()
    isolator = make(tmp_path, backend, Reachability())
    await isolator.isolate(IsolationMode.OUTBOUND)
    watch = IsolationWatch(isolator)
    hello = await watch.for_hello()
    assert hello is not None
    assert hello.isolated
    sent = Sent()
    watch.attach(sent)
    # The endpoint owner's local command, another process: rules gone, state file says released.
    other = make(tmp_path, backend, Reachability())
    await other.release()
    await watch.check()
    await watch.check()
    assert [(f["cause"], f["status"]["isolated"]) for f in sent.frames] == [("local", False)]


async def test_nothing_is_sent_while_detached_and_the_next_hello_carries_it(tmp_path: Path) -> None:
    isolator = make(tmp_path, Recorder(), Reachability())
    watch = IsolationWatch(isolator)
    await watch.for_hello()
    await isolator.isolate(IsolationMode.FULL, cause="script", job_id="j")
    hello = await watch.for_hello()
    assert hello is not None
    assert (hello.isolated, hello.mode) == (True, IsolationMode.FULL)


async def test_an_allowlist_change_is_reported_with_what_holds(tmp_path: Path) -> None:
    probe = Reachability()
    isolator = make(tmp_path, Recorder(), probe)
    watch = IsolationWatch(isolator)
    sent = Sent()
    await watch.for_hello()
    watch.attach(sent)
    await isolator.isolate(IsolationMode.OUTBOUND)
    new = (AllowRule(cidr="192.0.2.0/24"),)
    assert await isolator.adopt_allowlist(new) == "re-applied"
    await watch.allowlist_adopted(None)
    # A list that would cut the platform off: the old rules stay, and the platform hears why.
    probe.up = False
    outcome = await isolator.adopt_allowlist((AllowRule(cidr="198.51.100.0/24"),))
    await watch.allowlist_adopted(outcome.removeprefix("failed: "))
    assert [(f["cause"], f["status"]["allow"], f["error"]) for f in sent.frames] == [
        ("allowlist", [{"cidr": "192.0.2.0/24", "ports": []}], None),
        ("allowlist", [{"cidr": "192.0.2.0/24", "ports": []}], outcome.removeprefix("failed: ")),
    ]
    assert sent.frames[1]["error"].startswith("The platform (127.0.0.1 port 8444) was unreachable")
