"""The isolation handlers reach the agent's Isolator through the job context."""

from pathlib import Path

import pytest

from tests.agent.isolation.recording import Reachability, Recorder, make
from tether.agent.actions import HANDLERS
from tether.agent.context import JobContext, current_job
from tether.agent.errors import ActionError
from tether.protocol import JobOutput
from tether.protocol.isolation import IsolateArgs, IsolationMode, ReleaseArgs


async def drop(_message: JobOutput) -> None:
    return None


async def test_isolate_status_release(tmp_path: Path) -> None:
    backend = Recorder()
    token = current_job.set(JobContext("j1", drop, None, make(tmp_path, backend, Reachability())))
    try:
        status = await HANDLERS["isolation.isolate"](IsolateArgs(mode=IsolationMode.FULL))
        assert status.model_dump()["isolated"] is True
        assert (await HANDLERS["isolation.status"](ReleaseArgs())).model_dump()["mode"] == "full"
        released = await HANDLERS["isolation.release"](ReleaseArgs())
        assert released.model_dump()["isolated"] is False
    finally:
        current_job.reset(token)
    assert backend.calls == ["apply full 127.0.0.1", "remove"]


async def test_without_an_isolator_the_analyst_reads_one_sentence() -> None:
    token = current_job.set(JobContext("j2", drop))
    try:
        with pytest.raises(ActionError, match=r"^Isolation is not available in this agent\.$"):
            await HANDLERS["isolation.status"](ReleaseArgs())
    finally:
        current_job.reset(token)
