"""Telling the platform what the endpoint's isolation is when no isolation job does.

An isolation job's result tells the platform what changed. Everything else is reported here:
the state at every hello, a script's `tether.script.isolate`/`unisolate` (with its job id), the
endpoint owner's local release, and a periodic check that finds the firewall no longer holding
what the agent last said (a re-assert that failed). Only a change of isolated-or-not or of mode
is reported, so the platform's audit log gets one record per real change.
"""

import contextlib
import logging
from collections.abc import Awaitable, Callable

from tether.agent.errors import ActionError
from tether.agent.isolation import Isolator
from tether.agent.isolation.isolator import ChangeCause
from tether.protocol.isolation import IsolationMode, IsolationStatus, ReportCause
from tether.protocol.messages import IsolationReport

log = logging.getLogger("tether.agent.isolation")

Send = Callable[[str], Awaitable[None]]
_Key = tuple[bool, IsolationMode | None]


def _key(status: IsolationStatus) -> _Key:
    return (status.isolated, status.mode if status.isolated else None)


class IsolationWatch:
    def __init__(self, isolator: Isolator) -> None:
        self._isolator = isolator
        self._send: Send | None = None
        # What the platform was last told, by a hello, a job result or a report.
        self._known: _Key | None = None
        isolator.on_change = self._changed

    async def current(self) -> IsolationStatus | None:
        """What the firewall holds now; None when this endpoint cannot tell (not privileged,
        no firewall tool). A host never isolated is answered without looking at the firewall."""
        try:
            if not self._isolator.store.load().isolated:
                return IsolationStatus(isolated=False)
            return await self._isolator.status()
        except ActionError as exc:
            log.warning("Cannot tell the isolation state: %s", exc)
            return None

    async def for_hello(self) -> IsolationStatus | None:
        status = await self.current()
        self._known = _key(status) if status is not None else None
        return status

    def attach(self, send: Send) -> None:
        self._send = send

    def detach(self) -> None:
        self._send = None

    async def check(self) -> None:
        """After a periodic re-assert: report a state that differs from the last one told."""
        status = await self.current()
        if status is None or self._known is None or _key(status) == self._known:
            return
        # Released behind the agent's back by the owner's local command, or rules that could
        # not be put back (the report says what holds now either way).
        desired_released = not status.isolated and not self._isolator.store.load().isolated
        await self._report(status, "local" if desired_released else "reassert", None)

    async def _changed(
        self, status: IsolationStatus, cause: ChangeCause, job_id: str | None
    ) -> None:
        if cause == "job":
            self._known = _key(status)  # the job's result tells the platform
            return
        await self._report(status, cause, job_id)

    async def allowlist_adopted(self, error: str | None) -> None:
        """Tell the platform an isolated host re-applied its rules with a new allowlist, or why
        it kept the old ones: either way the admin who changed the list learns what holds."""
        status = await self.current()
        if status is not None:
            await self._report(status, "allowlist", None, error)

    async def _report(
        self,
        status: IsolationStatus,
        cause: ReportCause,
        job_id: str | None,
        error: str | None = None,
    ) -> None:
        if self._send is None:
            return  # the next hello carries it
        report = IsolationReport(status=status, cause=cause, job_id=job_id, error=error)
        with contextlib.suppress(ConnectionError):
            await self._send(report.model_dump_json())
        self._known = _key(status)
