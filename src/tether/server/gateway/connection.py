"""One admitted agent connection: sends jobs, matches their acknowledgements."""

import asyncio
import contextlib
import itertools
from datetime import datetime
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tether.protocol import PROTOCOL_VERSION, CloseCode, JobRequest, JobStatus, Policy
from tether.protocol.compat import frame_for
from tether.server.errors import PlatformError
from tether.server.store.db import utcnow

_ids = itertools.count(1)
# Calls (round trips with no job record) are numbered apart from jobs, whose ids are UUID hex.
CALL_PREFIX = "call-"


class ActionFailed(PlatformError):
    """The agent ran the action and reported failure."""


class AgentConnection:
    """The gateway's side of one agent's WebSocket (an `AgentLink` for the services)."""

    def __init__(
        self, host_id: str, websocket: ServerConnection, protocol_version: int = PROTOCOL_VERSION
    ) -> None:
        self.host_id = host_id
        self.connected_at: datetime = utcnow()
        self._ws = websocket
        # What the agent said in its hello (one the gateway speaks): every control frame goes
        # out in the shape that version reads (tether.protocol.compat).
        self.protocol_version = protocol_version
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def call(self, action: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        job_id = f"{CALL_PREFIX}{next(_ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = future
        try:
            await self._ws.send(
                frame_for(
                    JobRequest(
                        job_id=job_id, action=action, args=args, ephemeral=True
                    ).model_dump_json(),
                    self.protocol_version,
                )
            )
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(job_id, None)

    async def send_text(self, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(frame_for(text, self.protocol_version))

    async def send_policy(self, policy: Policy) -> None:
        # A closed connection needs no policy: the agent gets a fresh one when it reconnects.
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(frame_for(policy.model_dump_json(), self.protocol_version))

    def resolve(self, status: JobStatus) -> bool:
        """Hand a final status of a call to whoever waits for it; False if it is no call's."""
        future = self._waiting.get(status.job_id)
        if future is None:
            return False
        if future.done():
            return True
        if status.state == "succeeded":
            future.set_result(status.result or {})
        elif status.state == "failed":
            future.set_exception(ActionFailed(status.error or "The agent reported a failure."))
        return True

    def fail_pending(self, reason: str) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ActionFailed(reason))

    async def disconnect(self, code: CloseCode, reason: str) -> None:
        await self._ws.close(int(code), reason)

    def abort(self) -> None:
        self._ws.transport.abort()


class TransferLink:
    """An agent's connection as the transfer engine sees it: a send on a closed link raises."""

    def __init__(
        self, websocket: ServerConnection, protocol_version: int = PROTOCOL_VERSION
    ) -> None:
        self._ws = websocket
        self._protocol_version = protocol_version

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send(frame_for(text, self._protocol_version))
        except ConnectionClosed as exc:
            raise ConnectionResetError("The agent's connection closed.") from exc

    async def send_binary(self, frame: bytes | memoryview) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed as exc:
            raise ConnectionResetError("The agent's connection closed.") from exc
