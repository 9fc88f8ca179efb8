"""Requests a running script makes for file transfers, and the platform's grants.

A script's `upload` and `download` start no transfer on their own: the agent asks the platform
(`transfer.request`), which checks the job and answers with a transfer id (`transfer.grant`).
A request stays active until its transfer ends and is sent again after every reconnect, so a
platform that restarted meanwhile registers the transfer again and it resumes.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tether.protocol.transfer import TransferGrant, TransferRequest, Transport


class TransferRequests:
    """The active requests of this agent, across its connections."""

    def __init__(self) -> None:
        self._transport: Transport | None = None
        self._active: dict[tuple[str, int], TransferRequest] = {}
        self._grants: dict[tuple[str, int], asyncio.Future[TransferGrant]] = {}

    @contextlib.asynccontextmanager
    async def granted(self, request: TransferRequest) -> AsyncIterator[TransferGrant]:
        """Ask for the transfer and yield the platform's grant (which may carry an error).

        The request stays active, and is repeated after reconnects, until the block exits.
        """
        key = (request.job_id, request.seq)
        if key in self._active:
            raise ValueError(f"Request {request.seq} of job {request.job_id} is already active.")
        future: asyncio.Future[TransferGrant] = asyncio.get_running_loop().create_future()
        self._active[key] = request
        self._grants[key] = future
        try:
            await self._send(request)
            yield await future
        finally:
            self._active.pop(key, None)
            self._grants.pop(key, None)

    async def attach(self, transport: Transport) -> None:
        self._transport = transport
        for request in list(self._active.values()):
            await self._send(request)

    def detach(self) -> None:
        self._transport = None

    def on_grant(self, grant: TransferGrant) -> None:
        """The platform's answer; a repeat or one for a request no longer active is dropped."""
        future = self._grants.get((grant.job_id, grant.seq))
        if future is not None and not future.done():
            future.set_result(grant)

    async def _send(self, request: TransferRequest) -> None:
        if self._transport is None:
            return
        with contextlib.suppress(ConnectionError):
            await self._transport.send_text(request.model_dump_json())
