"""The agent's script channel over a real Unix socket: secret first, bad requests answered."""

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tether.agent import script_channel
from tether.agent.script_channel import CallRefused, ChannelServer
from tether.script import channel

pytestmark = pytest.mark.skipif(os.name == "nt", reason="Unix socket channel")

SECRET = "5e" * 32


async def echo(args: dict[str, Any]) -> Any:
    return args


async def refuse(args: dict[str, Any]) -> Any:
    raise CallRefused("Not today.")


async def crash(args: dict[str, Any]) -> Any:
    raise KeyError("boom")


@pytest.fixture
async def address() -> AsyncIterator[str]:
    # Not tmp_path: a Unix socket path must stay under ~100 characters.
    private = Path(tempfile.mkdtemp(prefix="tether-test-"))
    server = ChannelServer(SECRET, {"echo": echo, "refuse": refuse, "crash": crash})
    try:
        yield await server.start(private)
    finally:
        await server.close()
        shutil.rmtree(private)


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer, _ = await greeted(address)
    return reader, writer


async def greeted(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A connection and the challenge the agent greeted it with."""
    kind, path = channel.parse_address(address)
    assert kind == "unix"
    assert isinstance(path, str)
    reader, writer = await asyncio.open_unix_connection(path, limit=4 * channel.MAX_LINE_BYTES)
    challenge = channel.read_challenge(await asyncio.wait_for(reader.readline(), 5))
    CHALLENGES[writer] = challenge
    return reader, writer, challenge


CHALLENGES: dict[asyncio.StreamWriter, str] = {}


async def ask(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes
) -> dict[str, Any]:
    writer.write(line)
    await writer.drain()
    reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 5))
    return reply


def request(request_id: Any, method: str, **args: Any) -> bytes:
    return json.dumps({"id": request_id, "method": method, "args": args}).encode() + b"\n"


async def authenticated(
    address: str,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer, challenge = await greeted(address)
    proof = channel.hello_proof(SECRET, challenge)
    assert await ask(reader, writer, request(1, "hello", proof=proof)) == {"id": 1, "result": {}}
    return reader, writer


async def test_the_socket_is_private(address: str) -> None:
    path = Path(channel.parse_address(address)[1])  # type: ignore[arg-type]
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_wrong_secret_is_refused_and_the_connection_closed(address: str) -> None:
    reader, writer = await connect(address)
    reply = await ask(reader, writer, request(1, "hello", proof="0" * 64))
    assert reply == {"id": 1, "error": "The channel secret is wrong."}
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_first_request_that_is_not_hello_is_refused(address: str) -> None:
    reader, writer = await connect(address)
    proof = channel.hello_proof(SECRET, CHALLENGES[writer])
    reply = await ask(reader, writer, request(1, "echo", proof=proof))
    assert reply["error"] == "The channel secret is wrong."
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_non_text_secret_does_not_crash_the_server(address: str) -> None:
    reader, writer = await connect(address)
    reply = await ask(reader, writer, request(1, "hello", proof=["x"]))
    assert reply["error"] == "The channel secret is wrong."
    writer.close()
    # The server still serves the next script connection.
    reader, writer = await authenticated(address)
    writer.close()


async def test_a_silent_connection_is_closed_after_the_hello_timeout(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(script_channel, "HELLO_TIMEOUT_SECONDS", 0.2)
    reader, writer = await connect(address)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_requests_are_answered_with_their_id(address: str) -> None:
    reader, writer = await authenticated(address)
    assert await ask(reader, writer, request("a", "echo", x=[1, 2])) == {
        "id": "a",
        "result": {"x": [1, 2]},
    }
    writer.close()


async def test_malformed_requests_get_an_error_and_the_channel_stays_open(address: str) -> None:
    reader, writer = await authenticated(address)
    assert await ask(reader, writer, b"{not json\n") == {
        "id": None,
        "error": "The message is not valid JSON.",
    }
    assert await ask(reader, writer, b"[1, 2]\n") == {
        "id": None,
        "error": "The message is not a JSON object.",
    }
    assert await ask(reader, writer, b'{"id": 3, "method": "echo", "args": {"x": NaN}}\n') == {
        "id": None,
        "error": "NaN is not a JSON number.",
    }
    assert await ask(reader, writer, b"\xff\xfe\n") == {
        "id": None,
        "error": "The message is not valid JSON.",
    }
    assert await ask(reader, writer, b'{"method": "echo"}\n') == {
        "id": None,
        "error": "A request needs an id (a number or a string).",
    }
    assert await ask(reader, writer, request(4, "format_disk")) == {
        "id": 4,
        "error": "There is no method 'format_disk'.",
    }
    assert await ask(reader, writer, b'{"id": 5, "method": "echo", "args": [1]}\n') == {
        "id": 5,
        "error": "The args of a request must be an object.",
    }
    assert await ask(reader, writer, request(6, "refuse")) == {"id": 6, "error": "Not today."}
    assert await ask(reader, writer, request(7, "crash")) == {"id": 7, "error": "'boom'"}
    assert await ask(reader, writer, request(8, "echo", ok=True)) == {
        "id": 8,
        "result": {"ok": True},
    }
    writer.close()


async def test_an_over_long_line_is_refused_and_the_channel_closed(address: str) -> None:
    reader, writer = await authenticated(address)
    reply = await ask(reader, writer, b'{"id": 1, "pad": "' + b"x" * (2 * channel.MAX_LINE_BYTES))
    assert reply["error"] == (
        f"A request is longer than {channel.MAX_LINE_BYTES} bytes; the channel is closed."
    )
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_close_ends_connections_that_are_still_open() -> None:
    private = Path(tempfile.mkdtemp(prefix="tether-test-"))
    server = ChannelServer(SECRET, {"echo": echo})
    try:
        address = await server.start(private)
        reader, writer = await authenticated(address)
        await server.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        shutil.rmtree(private)


async def test_the_secret_never_crosses_the_channel_and_a_proof_is_not_replayable(
    address: str,
) -> None:
    reader, writer, challenge = await greeted(address)
    proof = channel.hello_proof(SECRET, challenge)
    assert SECRET not in proof
    # The secret itself, as the old hello sent it, is no longer accepted.
    assert await ask(reader, writer, request(1, "hello", secret=SECRET, proof=SECRET)) == {
        "id": 1,
        "error": "The channel secret is wrong.",
    }
    writer.close()
    # A proof seen on one connection is worthless on the next: each has its own challenge.
    reader, writer, other = await greeted(address)
    assert other != challenge
    reply = await ask(reader, writer, request(1, "hello", proof=proof))
    assert reply["error"] == "The channel secret is wrong."
    writer.close()


async def test_unproven_connections_never_take_the_scripts_slots(address: str) -> None:
    """Another local account filling the listener (TCP on Windows) cannot lock the script out:
    only proven connections count against the slots, and the script's still gets one."""
    squatters = [await connect(address) for _ in range(script_channel.MAX_CONNECTIONS + 4)]
    reader, writer = await authenticated(address)
    assert await ask(reader, writer, request(2, "echo", ok=True)) == {
        "id": 2,
        "result": {"ok": True},
    }
    writer.close()
    for _, squatter in squatters:
        squatter.close()


async def test_proven_connections_are_capped(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(script_channel, "MAX_CONNECTIONS", 2)
    held = [await authenticated(address) for _ in range(2)]
    reader, writer, challenge = await greeted(address)
    writer.write(request(1, "hello", proof=channel.hello_proof(SECRET, challenge)))
    await writer.drain()
    assert json.loads(await asyncio.wait_for(reader.readline(), 5)) == {
        "id": 1,
        "error": "The script already holds 2 connections to its agent, the most it may.",
    }
    writer.close()
    for _, other in held:
        other.close()
