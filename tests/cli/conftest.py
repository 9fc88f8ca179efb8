"""The `tether` command against a real platform in process.

The CLI's client is synchronous and the platform is an ASGI app on the test's event loop: a
command runs in a worker thread, and `LoopTransport` hands each of its requests to the app on the
loop, which stays free to answer long polls and to take the fake agent's reports meanwhile.
"""

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tether.cli.client import Api
from tether.main import main
from tether.protocol import JobOutput, JobStatus
from tether.server.app import create_app
from tether.server.services.platform import Platform

# The platform fixtures of the API tests, re-exported so pytest finds them here (pytest names a
# fixture by the attribute, so they keep their names and the fixtures below take them: F811).
from ..server.api.conftest import (  # noqa: F401
    admin,
    admin_password,
    admin_secret,
    client,
    platform,
    platform_template,
)
from ..server.conftest import fast_password_hashing  # noqa: F401 (fixture)
from ..server.support import FakeLink, add_host


class LoopTransport(httpx.BaseTransport):
    """A sync transport that runs each request through the ASGI app on `loop`."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._app = httpx.ASGITransport(app=app)
        self._loop = loop
        # Called with each request before it is sent (tests use it to break connections).
        self.before: Callable[[httpx.Request], None] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.before is not None:
            self.before(request)
        body = request.read()

        async def send() -> tuple[int, httpx.Headers, bytes]:
            inner = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self._app.handle_async_request(inner)
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            return response.status_code, response.headers, raw

        status, headers, raw = asyncio.run_coroutine_threadsafe(send(), self._loop).result(60)
        return httpx.Response(status, headers=headers, content=raw, request=request)


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def invoke(args: list[str], columns: int = 160) -> Outcome:
    """Run `tether ARGS` as the console script does (errors one line, exit statuses), in a
    terminal `columns` wide."""
    runner = CliRunner()
    code: Any = 0
    with runner.isolation(env={"COLUMNS": str(columns)}) as (out, err, _mixed):
        saved = sys.argv
        sys.argv = ["tether", *args]
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.argv = saved
            sys.stdout.flush()
            sys.stderr.flush()
    return Outcome(int(code or 0), out.getvalue().decode(), err.getvalue().decode())


class Cli:
    def __init__(self, transport: LoopTransport) -> None:
        self.transport = transport

    async def __call__(self, *args: str, columns: int = 160) -> Outcome:
        return await asyncio.to_thread(invoke, list(args), columns)


@pytest.fixture
async def cli(
    platform: Platform,  # noqa: F811
    admin: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    """`await cli("jobs", "--json")` runs the command as the logged-in first admin."""
    transport = LoopTransport(create_app(platform), asyncio.get_running_loop())
    token = admin["authorization"].removeprefix("Bearer ")
    ca_pem = platform.settings.ca_cert.read_text()

    def from_profile(cls: type[Api], *, step_up_code: str | None = None) -> Api:
        return cls(
            "https://tether.test", ca_pem, token, transport=transport, step_up_code=step_up_code
        )

    monkeypatch.setattr(Api, "from_profile", classmethod(from_profile))
    return Cli(transport)


# -- hosts and a fake agent ------------------------------------------------------------------


@dataclass
class Hosts:
    platform: Platform
    ids: dict[str, str]

    def online(self, hostname: str) -> FakeLink:
        link = FakeLink(self.ids[hostname])
        self.platform.presence.attach(link)
        return link

    async def jobs_of(self, hostname: str, count: int = 1) -> list[str]:
        """Ids of the host's newest jobs, waiting (briefly) for a command to submit them."""
        for _ in range(200):
            found = await self.platform.jobs.find(host_id=self.ids[hostname])
            if len(found) >= count:
                return [j.id for j in found[:count]]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no job for {hostname} appeared")

    async def agent_runs(
        self,
        hostname: str,
        job_id: str,
        output: list[tuple[str, Any]] = (),  # type: ignore[assignment]
        *,
        state: str = "succeeded",
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Report a job as the agent would: delivered, running, its output, its end."""
        host_id = self.ids[hostname]
        dispatcher = self.platform.dispatcher
        # The platform ignores what an agent says about a job it has not sent yet; the command
        # submits in another thread, so wait for the send as a real agent would.
        for _ in range(400):
            if (await self.platform.jobs.get(job_id)).sent_at is not None:
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError(f"job {job_id} was never sent to {hostname}")
        await dispatcher.on_status(host_id, JobStatus(job_id=job_id, state="delivered"))
        await dispatcher.on_status(host_id, JobStatus(job_id=job_id, state="running"))
        for seq, (stream, content) in enumerate(output):
            if stream == "row":
                piece = JobOutput(job_id=job_id, seq=seq, stream="row", fields=content)
            else:
                piece = JobOutput(job_id=job_id, seq=seq, stream=stream, text=content)
            await dispatcher.on_output(host_id, piece)
        if state != "running":
            await dispatcher.on_status(
                host_id,
                JobStatus(job_id=job_id, state=state, result=result, error=error),
            )


@pytest.fixture
async def hosts(
    platform: Platform,  # noqa: F811
    client: httpx.AsyncClient,  # noqa: F811
    admin: dict[str, str],  # noqa: F811
) -> Hosts:
    """ws-1 and ws-2 in segment lab (Active Response on), ws-off in default (off)."""
    ids = {
        "ws-1": await add_host(platform.engine, "ws-1", segment="lab"),
        "ws-2": await add_host(platform.engine, "ws-2", segment="lab"),
        "ws-off": await add_host(platform.engine, "ws-off"),
    }
    answer = await client.patch(
        "/api/v1/segments/lab", json={"active_response": True}, headers=admin
    )
    assert answer.status_code == 200, answer.text
    return Hosts(platform, ids)
