"""The peer figure measured on this machine today: a bare websockets-on-uvloop mTLS server.

It holds connections and does nothing else: the same TLS settings as the platform's agent port
(server certificate, client certificates required from the platform CA) and the same WebSocket
parameters (no compression, no server pings, same frame limit, same listen backlog), but no application.
Per-connection memory and handshake rate of the platform are reported as ratios to this server.

    python benchmarks/baseline_server.py --port 18445 --ca ca.pem --cert server.pem --key server.key
"""

import argparse
import asyncio
import signal
import ssl
from pathlib import Path

import uvloop
from websockets.asyncio.server import ServerConnection, serve

MAX_FRAME_BYTES = 1024 * 1024
# What the platform's agent port gets: websockets passes no backlog, the event loop's default is 100.
BACKLOG = 100


async def hold(websocket: ServerConnection) -> None:
    await websocket.wait_closed()


async def main(args: argparse.Namespace) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(args.cert), str(args.key))
    context.load_verify_locations(cafile=str(args.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.num_tickets = 0  # as the agent port: agents never resume sessions
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        hold,
        "127.0.0.1",
        args.port,
        ssl=context,
        compression=None,
        max_size=MAX_FRAME_BYTES,
        max_queue=16,
        ping_interval=None,
        open_timeout=15,
        close_timeout=2,
        server_header=None,
        backlog=args.backlog,
    ) as server:
        print("ready", flush=True)
        await stop.wait()
        server.close(close_connections=False)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--backlog", type=int, default=BACKLOG)
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
