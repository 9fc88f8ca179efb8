"""An Isolator in a process of its own, driven over stdin/stdout: one JSON line each way.

The real-packet tests start it inside the endpoint namespace (`ip netns exec`), so the Isolator
changes that namespace's firewall and resolves names through its /etc/hosts, exactly as an
agent there would:

    python -m tests.netns.driver --state-dir DIR --agent-url URL [--backend iptables]
    > {"op": "isolate", "mode": "outbound", "allow": [{"cidr": "10.0.0.0/8"}]}
    < {"ok": true, "result": {"isolated": true, ...}}
    > {"op": "reassert"}
    < {"ok": true, "result": "in place"}
"""

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tether.agent.errors import IsolationFailed
from tether.agent.isolation import IptablesBackend, Isolator, NftablesBackend
from tether.agent.isolation.backend import FirewallBackend
from tether.agent.isolation.iptables import LEGACY_IPV4, LEGACY_IPV6
from tether.agent.state import StateDir
from tether.protocol.isolation import IsolateArgs


async def handle(isolator: Isolator, request: dict[str, Any]) -> Any:
    op = request["op"]
    if op == "isolate":
        args = IsolateArgs.model_validate({k: v for k, v in request.items() if k != "op"})
        return (await isolator.isolate(args.mode, args.allow)).model_dump(mode="json")
    if op == "release":
        return (await isolator.release()).model_dump(mode="json")
    if op == "status":
        return (await isolator.status()).model_dump(mode="json")
    if op == "reassert":
        return await isolator.reassert()
    raise ValueError(f"unknown op {op!r}")


async def serve(isolator: Isolator) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        try:
            answer = {"ok": True, "result": await handle(isolator, json.loads(line))}
        except IsolationFailed as exc:
            answer = {"ok": False, "error": str(exc)}
        print(json.dumps(answer), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--agent-url", required=True)
    parser.add_argument(
        "--backend", choices=["nftables", "iptables", "iptables-legacy"], default="nftables"
    )
    parser.add_argument("--probe-timeout", type=float, default=1.0)
    options = parser.parse_args()
    backends: dict[str, FirewallBackend] = {
        "nftables": NftablesBackend(),
        "iptables": IptablesBackend(),
        "iptables-legacy": IptablesBackend(LEGACY_IPV4, LEGACY_IPV6),
    }
    backend = backends[options.backend]
    isolator = Isolator(
        StateDir(options.state_dir),
        options.agent_url,
        backend=backend,
        probe_timeout=options.probe_timeout,
    )
    asyncio.run(serve(isolator))


if __name__ == "__main__":
    main()
