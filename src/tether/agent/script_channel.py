"""The agent's end of a script's local channel: an authenticated JSON-lines request server.

It knows nothing about what the methods do: `tether.agent.scripts` hands it a table of method
name to coroutine. Nothing a script sends can crash the agent: every malformed request gets an
error reply, and a connection whose first request does not prove the run's secret (an HMAC of a
fresh challenge, tether.script.channel) is closed.

On Windows the channel is TCP on loopback, which any local account can connect to; so only a
connection that has proved the secret takes one of the run's `MAX_CONNECTIONS` slots, and those
still proving it are bounded apart (`MAX_UNPROVEN`) and dropped after `HELLO_TIMEOUT_SECONDS`:
another account can delay a script's connection, never take its slots (docs/adr/0041).
"""

import asyncio
import contextlib
import hmac
import logging
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from tether.script import channel

log = logging.getLogger("tether.agent.scripts")

Method = Callable[[dict[str, Any]], Awaitable[Any]]

# A script that connects and says nothing holds a slot until this runs out.
HELLO_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 16
# Connections not yet past hello, counted apart so that they never take a script's slots.
MAX_UNPROVEN = 64
DISCARD_SECONDS = 1.0


_REFUSED = object()  # what _authenticate returns for a connection that did not prove the secret


class CallRefused(Exception):
    """A method refuses a request; the message goes back to the script as its error."""


class ChannelServer:
    """Listens for one script run; `start` returns the address the child connects to."""

    def __init__(self, secret: str, methods: Mapping[str, Method]) -> None:
        self._secret = secret
        self._methods = dict(methods)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # every connection, for close()
        self._unproven = 0
        self._proven = 0

    async def start(self, private_dir: Path) -> str:
        """Listen inside `private_dir` (a Unix socket) or on loopback TCP on Windows."""
        limit = channel.MAX_LINE_BYTES + 1
        if sys.platform == "win32":
            self._server = await asyncio.start_server(
                self._serve, host="127.0.0.1", port=0, limit=limit
            )
            port = self._server.sockets[0].getsockname()[1]
            return channel.tcp_address(port)
        path = private_dir / "channel.sock"
        self._server = await asyncio.start_unix_server(self._serve, path=str(path), limit=limit)
        path.chmod(0o600)
        return channel.unix_address(str(path))

    async def close(self) -> None:
        """Stop listening and end every connection, including calls still in progress."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or self._unproven >= MAX_UNPROVEN:
            writer.close()
            return
        self._tasks.add(task)
        proven = False
        try:
            self._unproven += 1
            try:
                hello_id = await self._authenticate(reader, writer)
            finally:
                self._unproven -= 1
            if hello_id is _REFUSED:
                return
            if self._proven >= MAX_CONNECTIONS:
                await _reply(
                    writer,
                    hello_id,
                    error=f"The script already holds {MAX_CONNECTIONS} connections to its agent, "
                    "the most it may.",
                )
                return
            proven = True
            self._proven += 1
            await _reply(writer, hello_id, result={})
            await self._answer_requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if proven:
                self._proven -= 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Any:
        """The id of a hello that proved the secret (not yet answered), or `_REFUSED`."""
        challenge = secrets.token_hex(channel.CHALLENGE_HEX_CHARS // 2)
        writer.write(channel.encode({channel.CHALLENGE: challenge}))
        await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_SECONDS)
            message = channel.decode(line)
        except (TimeoutError, ValueError):
            return _REFUSED
        args = message.get("args")
        proof = args.get("proof") if isinstance(args, dict) else None
        expected = channel.hello_proof(self._secret, challenge)
        if (
            message.get("method") != channel.HELLO
            or not isinstance(proof, str)
            or not hmac.compare_digest(proof.encode(errors="replace"), expected.encode())
        ):
            log.warning("Refused a script channel connection that did not prove the secret")
            await _reply(writer, message.get("id"), error="The channel secret is wrong.")
            return _REFUSED
        return message.get("id")

    async def _answer_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                # The rest of an over-long line cannot be told from the next request.
                await _reply(
                    writer,
                    None,
                    error=f"A request is longer than {channel.MAX_LINE_BYTES} bytes; the channel is closed.",
                )
                await _discard_until_closed(reader, writer)
                return
            if not line:
                return
            request_id, outcome = await self._answer(line)
            await _reply(writer, request_id, **outcome)

    async def _answer(self, line: bytes) -> tuple[Any, dict[str, Any]]:
        try:
            request = channel.decode(line)
        except channel.ChannelFormatError as exc:
            return None, {"error": str(exc)}
        request_id = request.get("id")
        if not isinstance(request_id, int | str) or isinstance(request_id, bool):
            return None, {"error": "A request needs an id (a number or a string)."}
        method = self._methods.get(str(request.get("method")))
        args = request.get("args", {})
        if method is None:
            return request_id, {"error": f"There is no method {request.get('method')!r}."}
        if not isinstance(args, dict):
            return request_id, {"error": "The args of a request must be an object."}
        try:
            return request_id, {"result": await method(args)}
        except CallRefused as exc:
            return request_id, {"error": str(exc)}
        except Exception as exc:
            # Service failures (a missing file, a refused path) are ordinary outcomes for a script.
            log.info(
                "Script call %s failed: %s: %s", request.get("method"), type(exc).__name__, exc
            )
            return request_id, {"error": str(exc) or type(exc).__name__}


async def _discard_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop what the peer still sends (for a second at most).

    Closing with unread data resets the connection, and the peer would lose the error reply.
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DISCARD_SECONDS):
            while await reader.read(64 * 1024):
                pass


async def _reply(
    writer: asyncio.StreamWriter, request_id: Any, *, result: Any = None, error: str | None = None
) -> None:
    message: dict[str, Any] = {"id": request_id}
    if error is not None:
        message["error"] = error
    else:
        message["result"] = result
    try:
        data = channel.encode(message)
    except (TypeError, ValueError):
        data = channel.encode({"id": request_id, "error": "The agent's answer is not JSON."})
    writer.write(data)
    await writer.drain()
