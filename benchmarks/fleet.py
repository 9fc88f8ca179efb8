"""The simulated fleet on disk: one real enrolled identity per simulated agent.

Each agent gets its own ECDSA P-256 key, a CSR, and a certificate from the platform's real
enrollment endpoint (POST /api/v1/enroll with a multi-use token). Identities are stored in the
layout of `tether.agent.state.StateDir` (agent.key, agent.pem, ca.pem, identity.json) under
`<fleet>/agents/NNNNN/`, so reruns reuse them and any one of them can be run by the real agent.
"""

import asyncio
import json
import os
import ssl
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tether.agent.enroll import _csr
from tether.agent.state import StateDir
from tether.protocol import EnrollmentToken, EnrollRequest, EnrollResponse


def agent_dir(fleet: Path, index: int) -> Path:
    return fleet / "agents" / f"{index:05d}"


def state(fleet: Path, index: int) -> StateDir:
    return StateDir(agent_dir(fleet, index))


def hostname(index: int) -> str:
    return f"sim-{index:05d}"


def missing(fleet: Path, count: int) -> list[int]:
    """Indexes below `count` that hold no enrolled identity yet."""
    return [i for i in range(count) if not state(fleet, i).is_enrolled()]


def _write(path: Path, data: bytes) -> None:
    # A benchmark cache: private like the agent's files, but without the agent's fsyncs.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


async def enroll_missing(
    fleet: Path, count: int, token_text: str, ca_file: Path, concurrency: int = 16
) -> int:
    """Enroll every agent below `count` that has no identity yet; returns how many were enrolled."""
    todo = missing(fleet, count)
    if not todo:
        return 0
    token = EnrollmentToken.decode(token_text)
    ca_pem = ca_file.read_bytes()
    context = ssl.create_default_context(cadata=ca_pem.decode())
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in todo:
        queue.put_nowait(index)
    done = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            key = ec.generate_private_key(ec.SECP256R1())
            name = hostname(index)
            request = EnrollRequest(secret=token.secret, csr_pem=_csr(key, name), hostname=name)
            response = await client.post(
                "/api/v1/enroll",
                content=request.model_dump_json(),
                headers={"content-type": "application/json"},
            )
            if response.status_code != 200:
                raise RuntimeError(f"Enrollment of {name} refused: {response.text}")
            answer = EnrollResponse.model_validate_json(response.content)
            cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
            if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
                raise RuntimeError(f"Enrollment of {name} returned a certificate for another key.")
            target = state(fleet, index)
            target.root.mkdir(parents=True, exist_ok=True)
            _write(
                target.key,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            _write(target.cert, answer.certificate_pem.encode())
            _write(target.ca, ca_pem)
            identity = {
                "host_id": answer.host_id,
                "server_url": token.server_url,
                "agent_url": answer.agent_url,
            }
            _write(target.identity_file, json.dumps(identity, indent=2).encode())
            done += 1
            if done % 1000 == 0:
                print(f"  enrolled {done}/{len(todo)}", flush=True)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=token.server_url, verify=context, limits=limits, timeout=60.0
    ) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return done
