"""An agent connection sends every control frame in the shape the agent's protocol version reads."""

import json
from typing import Any, cast

from websockets.asyncio.server import ServerConnection

from tether.protocol import OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, JobRequest, Policy
from tether.protocol.isolation import AllowRule
from tether.server.gateway.connection import AgentConnection, TransferLink


class SentFrames:
    """The socket side of a connection: what was sent, in order."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def send(self, frame: str) -> None:
        self.frames.append(json.loads(frame))


def connection(version: int) -> tuple[AgentConnection, TransferLink, SentFrames]:
    sent = SentFrames()
    ws = cast(ServerConnection, sent)
    return AgentConnection("h1", ws, version), TransferLink(ws, version), sent


POLICY = Policy(
    segment="servers", active_response=True, isolation_allow=(AllowRule(cidr="10.0.0.0/8"),)
)
DEPLOY = JobRequest(
    job_id="j1",
    action="files.put",
    args={"sha256": "0" * 64, "size": 3, "path": "/tmp/fix.sh", "overwrite": False, "mode": None},
).model_dump_json()


async def test_a_current_agent_gets_the_current_messages() -> None:
    link, transfers, sent = connection(PROTOCOL_VERSION)
    await link.send_policy(POLICY)
    await link.send_text(DEPLOY)
    await transfers.send_text(DEPLOY)
    assert sent.frames[0]["isolation_allow"] == [{"cidr": "10.0.0.0/8", "ports": []}]
    assert sent.frames[1]["args"]["mode"] is None
    assert sent.frames[2] == sent.frames[1]


async def test_an_agent_of_the_previous_version_gets_their_previous_shape() -> None:
    link, transfers, sent = connection(OLDEST_PROTOCOL_VERSION)
    await link.send_policy(POLICY)
    await link.send_text(DEPLOY)
    await transfers.send_text(DEPLOY)
    assert sent.frames[0] == {"type": "policy", "segment": "servers", "active_response": True}
    assert "mode" not in sent.frames[1]["args"]
    assert sent.frames[2] == sent.frames[1]
