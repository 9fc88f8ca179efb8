"""The script's end of the channel: one connection per process, synchronous, thread-safe."""

import os
import socket
import threading
from typing import Any

from tether.errors import TetherError
from tether.script import channel


class ScriptError(TetherError):
    """A `tether.script` call failed; the message says why in one sentence."""


NOT_IN_AGENT = "tether.script only works inside a script run by a Tether agent."
# Connecting is local and immediate; a call itself may take as long as an upload does, and the
# agent bounds the whole run with its time limit, so calls wait without a timeout of their own.
_CONNECT_TIMEOUT = 10.0


class _Connection:
    def __init__(self, address: str, secret: str) -> None:
        try:
            kind, where = channel.parse_address(address)
        except channel.ChannelFormatError as exc:
            raise ScriptError(NOT_IN_AGENT) from exc
        family = socket.AF_INET if kind == "tcp" else socket.AF_UNIX
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(_CONNECT_TIMEOUT)
            self._sock.connect(where)
            self._sock.settimeout(None)
        except OSError as exc:
            self._sock.close()
            raise ScriptError(
                f"Cannot reach the agent that runs this script ({exc.strerror or exc})."
            ) from exc
        self._reader = self._sock.makefile("rb")
        self._next_id = 0
        try:
            challenge = channel.read_challenge(self._reader.readline(channel.MAX_LINE_BYTES + 1))
        except (OSError, channel.ChannelFormatError) as exc:
            self.close()
            raise ScriptError(f"The agent did not greet this script as expected ({exc}).") from exc
        # The proof, never the secret: the secret does not cross the channel.
        self.call(channel.HELLO, {"proof": channel.hello_proof(secret, challenge)})

    def call(self, method: str, args: dict[str, Any]) -> Any:
        self._next_id += 1
        request = {"id": self._next_id, "method": method, "args": args}
        try:
            line = channel.encode(request)
        except ValueError as exc:
            raise ScriptError(f"The arguments of {method} cannot be sent as JSON: {exc}.") from exc
        if len(line) > channel.MAX_LINE_BYTES:
            raise ScriptError(
                f"The {method} call is larger than {channel.MAX_LINE_BYTES} bytes and was not sent."
            )
        try:
            self._sock.sendall(line)
            answer = self._reader.readline(channel.MAX_LINE_BYTES + 1)
        except OSError as exc:
            raise ScriptError(f"Lost the connection to the agent ({exc}).") from exc
        if not answer:
            raise ScriptError("The agent closed the connection to this script.")
        try:
            reply = channel.decode(answer)
        except channel.ChannelFormatError as exc:
            raise ScriptError(f"The agent sent an unreadable reply: {exc}") from exc
        if reply.get("id") != self._next_id:
            raise ScriptError("The agent answered a different call; the channel is out of step.")
        if "error" in reply:
            raise ScriptError(str(reply["error"]))
        return reply.get("result")

    def close(self) -> None:
        self._reader.close()
        self._sock.close()


_lock = threading.Lock()
_connection: _Connection | None = None
_owner_pid = 0


def call(method: str, args: dict[str, Any]) -> Any:
    """Send one request to the agent and return its result, or raise ScriptError."""
    global _connection, _owner_pid
    with _lock:
        # A forked child must not share its parent's socket: replies would go to either.
        if _connection is None or _owner_pid != os.getpid():
            address = os.environ.get(channel.ENV_ADDRESS)
            secret = os.environ.get(channel.ENV_SECRET)
            if not address or not secret:
                raise ScriptError(NOT_IN_AGENT)
            _connection = _Connection(address, secret)
            _owner_pid = os.getpid()
        return _connection.call(method, args)


def agent_pid() -> int | None:
    """The process id of the agent running this script, when known."""
    value = os.environ.get(channel.ENV_AGENT_PID, "")
    return int(value) if value.isdigit() else None
