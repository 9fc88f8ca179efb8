"""The engine both ends run, driven by hand: what it promises any storage it is wired to."""

import asyncio
import hashlib
import os
import uuid

from tether.protocol.transfer import (
    MIN_WINDOW_BYTES,
    ReceiverFlow,
    TransferAck,
    TransferEnd,
    TransferOpen,
    decode_chunk,
    encode_chunk,
    parse_transfer_message,
)
from tether.protocol.transfer_engine import Receiver, Wording

WORDING = Wording("gave up: {}", "refused: {}", "unknown {}", "never opened {}")
KiB = 1024


class Kept:
    """A transport that keeps what the receiver says."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def send_binary(self, frame: bytes | memoryview) -> None:
        raise AssertionError("a receiver sends no chunks")


class SlowSink:
    """Storage that does nothing to order its own writes, and takes its time over each."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.in_flight = 0
        self.most_in_flight = 0
        self.offsets: list[int] = []

    async def open(self, size: int) -> int:
        return 0

    async def write(self, offset: int, data: memoryview) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.offsets.append(offset)
        await asyncio.sleep(0.001)
        self.data[offset : offset + len(data)] = data
        self.in_flight -= 1

    async def sync(self) -> int:
        await asyncio.sleep(0)
        return len(self.data)

    async def commit(self, size: int, sha256: str) -> tuple[str, bytes]:
        return hashlib.sha256(self.data).hexdigest(), bytes(self.data)

    async def discard(self) -> None:
        self.data.clear()

    async def close(self) -> None:
        return None


async def test_writes_never_overlap_and_syncs_wait_for_them() -> None:
    """One write at a time, in order, while acknowledgements (each waiting for the write in
    flight) run beside the next chunk: the bytes stored are the bytes sent."""
    tid, size, chunk = uuid.uuid4(), 768 * KiB, 16 * KiB
    payload = os.urandom(size)
    flow = ReceiverFlow(tid, "job-1", "get", max_size=size, window=MIN_WINDOW_BYTES)
    sink = SlowSink()
    receiver = Receiver(flow, sink, WORDING)
    transport = Kept()
    await receiver.on_open(
        transport, TransferOpen(transfer_id=tid, job_id="job-1", direction="get", size=size)
    )
    for offset in range(0, size, chunk):
        header, view = decode_chunk(encode_chunk(tid, offset, payload[offset : offset + chunk]))
        await receiver.on_chunk(header, view)
        await asyncio.sleep(0)  # the connection reads the next frame: other tasks run
    sha = hashlib.sha256(payload).hexdigest()
    await receiver.on_end(TransferEnd(transfer_id=tid, size=size, sha256=sha))
    assert await receiver.result == payload
    assert sink.most_in_flight == 1
    assert sink.offsets == list(range(0, size, chunk))
    said = [parse_transfer_message(text) for text in transport.sent]
    kinds = [m.type for m in said]
    assert (kinds[0], kinds[-1]) == ("transfer.accept", "transfer.done")
    acked = [m.offset for m in said if isinstance(m, TransferAck)]
    assert acked == sorted(acked)
    assert 0 < acked[0] <= acked[-1] <= size
