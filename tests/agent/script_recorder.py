"""Runs scripts for real and records what they send: output chunks, rows, log lines, service calls."""

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from tether.agent.scripts import ProcessRecorder, ScriptLimits, ScriptOutcome, run_script

QUICK = ScriptLimits(timeout_seconds=20.0)


class FakeServices:
    """Stands in for the agent's file transfers and isolation: records each call, fails on
    demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    async def upload(self, path: str) -> dict[str, Any]:
        self.calls.append(("upload", (path,)))
        if path.endswith("missing"):
            raise FileNotFoundError(f"No file at {path}.")
        return {"sha256": "ab" * 32, "size": 3, "path": path}

    async def download(self, name: str, dest: str) -> dict[str, Any]:
        self.calls.append(("download", (name, dest)))
        if name == "missing":
            raise LookupError("The library has no file named missing.")
        return {"sha256": "cd" * 32, "size": 5, "path": dest}

    async def isolate(self, mode: str) -> dict[str, Any]:
        self.calls.append(("isolate", (mode,)))
        if mode not in ("outbound", "full"):
            raise ValueError("The isolation mode is 'outbound' or 'full'.")
        return {"isolated": True, "mode": mode}

    async def unisolate(self) -> dict[str, Any]:
        self.calls.append(("unisolate", ()))
        return {"isolated": False}

    async def isolation_status(self) -> dict[str, Any]:
        self.calls.append(("isolation_status", ()))
        return {"isolated": False}


@dataclass
class Recorder:
    chunks: list[tuple[str, str, float]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    services: FakeServices = field(default_factory=FakeServices)
    keep_output: bool = True
    output_bytes: int = 0

    async def on_output(self, stream: Literal["stdout", "stderr"], text: str) -> None:
        self.output_bytes += len(text.encode())
        if self.keep_output:
            self.chunks.append((stream, text, time.monotonic()))

    async def on_row(self, fields: dict[str, Any]) -> None:
        self.rows.append(fields)

    async def on_log(self, message: str) -> None:
        self.logs.append(message)

    def text(self, stream: str) -> str:
        return "".join(text for name, text, _ in self.chunks if name == stream)

    async def run(
        self,
        source: str,
        params: Mapping[str, Any] | None = None,
        limits: ScriptLimits = QUICK,
        cancel: asyncio.Event | None = None,
        workdir: Path | None = None,
        processes: ProcessRecorder | None = None,
    ) -> ScriptOutcome:
        return await run_script(
            source,
            params or {},
            limits,
            on_output=self.on_output,
            on_row=self.on_row,
            on_log=self.on_log,
            services=self.services,
            cancel=cancel,
            workdir=workdir,
            recorder=processes,
        )


def is_gone(pid: int) -> bool:
    """The process has exited (a zombie nobody has reaped yet counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        await asyncio.sleep(0.05)
    return is_gone(pid)
