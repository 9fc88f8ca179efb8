"""The one transfer engine both ends run (docs/adr/0054): a sender and a receiver per transfer,
and the book of every transfer between one agent and the platform.

`SenderFlow` and `ReceiverFlow` (tether.protocol.transfer) say what may be said when; this
module does the rest that both ends share: chunking from a reused buffer, hashing as the bytes
go (with the hash states a resume restarts from), flow control, writing behind the connection,
the fsync-and-acknowledge cadence, verification at the end, resuming after a reconnect, and
answering a peer that re-opens a transfer already over. The agent and the platform only wire it
to their storage (a `TransferSource` to read, a `TransferSink` to write) and to their connection
(a `Transport`):

    await book.attach(transport)    after every welcome: re-opens what this side was sending
    await book.on_message(message)  for each transfer.* text frame, in arrival order
    await book.on_chunk(frame)      for each binary frame, in arrival order
    book.detach()                   when the connection is lost

Anything the peer does out of turn raises `ProtocolError` out of `on_message` / `on_chunk` (the
connection is closed); a transfer that cannot complete fails alone with a sentence, sent to the
peer as `transfer.abort`.
"""

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from uuid import UUID

from tether.protocol.errors import ProtocolError
from tether.protocol.transfer import (
    CHUNK_HEADER_BYTES,
    AnyTransferMessage,
    ChunkHeader,
    ReceiverFlow,
    ReceiveState,
    SenderFlow,
    SendState,
    TransferAbort,
    TransferAccept,
    TransferAck,
    TransferDone,
    TransferEnd,
    TransferFailed,
    TransferOpen,
    Transport,
    decode_chunk,
    pack_chunk_header,
)
from tether.workers import ThreadWork

log = logging.getLogger("tether.transfer")

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
_REMEMBERED = 256
_STASHED_OPENS = 16
# The scratch buffer a resume re-hashes through (at most a window of bytes, mostly).
_HASH_BLOCK_BYTES = 1024 * 1024


class TransferSource(Protocol):
    """The bytes a sender sends. Its methods block and run in a worker thread, one at a time;
    each raises TransferFailed with a sentence when the bytes cannot be read as they were."""

    size: int

    def read_into(self, buffer: memoryview, offset: int) -> None:
        """Fill all of `buffer` with the bytes at `offset`."""
        ...

    def close(self) -> None: ...


class TransferSink(Protocol[R_co]):
    """Where a receiver's bytes go; each call raises TransferFailed with a sentence."""

    async def open(self, size: int) -> int:
        """Open (or reopen, resuming) for a `size`-byte file; the bytes durably held already."""
        ...

    async def write(self, offset: int, data: memoryview) -> None:
        """Write `data` at `offset` (always right after the last byte written)."""
        ...

    async def sync(self) -> int:
        """Make everything written durable; the durable size."""
        ...

    async def commit(self, size: int, sha256: str) -> tuple[str, R_co]:
        """Verify against the sender's `sha256` and put the file in place: the SHA-256 the
        receiver confirms (of the bytes as stored) and what the caller gets."""
        ...

    async def discard(self) -> None:
        """Remove everything written (idempotent)."""
        ...

    async def close(self) -> None:
        """Let go of the file, keeping a partial one for a resume (idempotent)."""
        ...


@dataclass
class Progress:
    """How far one transfer is, for people watching it: bytes moved and the recent rate."""

    transfer_id: UUID
    direction: str
    size: int
    done: int = 0
    rate: float = 0.0  # bytes per second over the last few seconds
    _mark: tuple[float, int] = (0.0, 0)

    def advance(self, done: int, now: float) -> None:
        at, bytes_then = self._mark
        if at == 0.0:
            self._mark = (now, done)
        elif now - at >= 1.0:
            self.rate = max(0.0, (done - bytes_then) / (now - at))
            self._mark = (now, done)
        self.done = done


ProgressSink = Callable[[Progress], None]


@dataclass(frozen=True)
class Wording:
    """How this side names its peer in the sentences the engine writes."""

    peer_gave_up_receive: str  # the peer aborted what this side receives
    peer_gave_up_send: str  # the peer refused what this side sends
    unknown_data: str  # chunks for a transfer this side does not receive
    never_opened: str  # an answer for a transfer this side never opened


async def _send_quietly(transport: Transport | None, text: str) -> None:
    """Send if linked; a link that just died is the connection's to notice, not ours."""
    if transport is None:
        return
    with contextlib.suppress(ConnectionError):
        await transport.send_text(text)


class Sender:
    """One transfer this side sends: a window ahead of the receiver's acknowledgements at most,
    each chunk read into a reused buffer (two: one on the wire, one being read) and hashed on the
    way when the SHA-256 is not known in advance."""

    def __init__(
        self,
        flow: SenderFlow,
        source: TransferSource,
        wording: Wording,
        *,
        sha256: str | None = None,
        unstreamed: Callable[[int, int], str] | None = None,
        settled: Callable[[UUID, TransferDone | str], None] | None = None,
        progress: ProgressSink | None = None,
    ) -> None:
        self.flow = flow
        self._source = source
        self._wording = wording
        self._known_sha256 = sha256
        # Given, a receiver's done is believed only after this process itself streamed every
        # byte to it (the platform's deploys); it says why not, from (streamed, size).
        self._unstreamed = unstreamed
        self._settled = settled
        self._progress = progress
        self._watch = Progress(flow.transfer_id, flow.direction, flow.size)
        self._hasher = hashlib.sha256()
        self._hashed = 0
        # Hash states at chunk boundaries not yet acknowledged (plus the last one that is), so
        # a resume re-hashes at most a window of bytes instead of the whole file.
        self._checkpoints: deque[tuple[int, hashlib._Hash]] = deque()
        self._digest: str | None = sha256
        self._buffers = [bytearray(CHUNK_HEADER_BYTES + flow.chunk_bytes) for _ in range(2)]
        self._transport: Transport | None = None
        self._pump: asyncio.Task[None] | None = None
        self._credit = asyncio.Event()
        self._reads = ThreadWork()
        self.streamed = 0  # bytes from the first one on that this process itself sent
        self.result: asyncio.Future[TransferDone] = asyncio.get_running_loop().create_future()

    async def start(self, transport: Transport) -> None:
        self._stop_pump()
        self._transport = transport
        await _send_quietly(transport, self.flow.open().model_dump_json())

    def on_accept(self, message: TransferAccept) -> None:
        offset = self.flow.accepted(message)
        self._stop_pump()
        self._pump = asyncio.create_task(self._send_chunks(offset))

    def on_ack(self, message: TransferAck) -> None:
        self.flow.acknowledged(message)
        while len(self._checkpoints) > 1 and self._checkpoints[1][0] <= message.offset:
            self._checkpoints.popleft()
        self._report(message.offset)
        self._credit.set()

    async def on_done(self, message: TransferDone) -> None:
        try:
            if self._digest is None:
                # Done right after a re-open: the receiver finished while the link was down.
                await self._position_hash(self.flow.size)
                self._digest = self._hasher.hexdigest()
            self.flow.done(message, self._digest)
            if self._unstreamed is not None and self.streamed < self.flow.size:
                self.flow.state = SendState.FAILED
                self.flow.failure = self._unstreamed(self.streamed, self.flow.size)
                raise TransferFailed(self.flow.failure)
        except TransferFailed as exc:
            self._finish(exc)
            return
        self._report(self.flow.size)
        self._finish(None, message)

    def on_abort(self, message: TransferAbort) -> None:
        if self.flow.finished:
            return
        self.flow.aborted(message)
        self._finish(TransferFailed(self._wording.peer_gave_up_send.format(message.reason)))

    async def abort(self, reason: str) -> None:
        """Give up on this side: tell the receiver, end with TransferFailed(reason)."""
        if self.flow.finished:
            return
        message = self.flow.fail(reason)
        await _send_quietly(self._transport, message.model_dump_json())
        self._finish(TransferFailed(reason))

    async def _position_hash(self, offset: int) -> None:
        """Make the running hash cover exactly the first `offset` bytes of the source."""
        if self._hashed == offset:
            return
        base_offset, base = 0, hashlib.sha256()
        if self._hashed < offset:
            base_offset, base = self._hashed, self._hasher
        for point, state in self._checkpoints:
            if base_offset < point <= offset:
                base_offset, base = point, state
        hasher = base.copy()
        await self._reads.run(self._hash_range, hasher, base_offset, offset)
        self._hasher, self._hashed = hasher, offset
        self._checkpoints = deque(cp for cp in self._checkpoints if cp[0] <= offset)

    def _hash_range(self, hasher: "hashlib._Hash", start: int, end: int) -> None:
        scratch = memoryview(bytearray(min(_HASH_BLOCK_BYTES, max(end - start, 1))))
        position = start
        while position < end:
            view = scratch[: min(len(scratch), end - position)]
            self._source.read_into(view, position)
            hasher.update(view)
            position += len(view)

    def _fill(
        self, buffer: bytearray, offset: int, length: int, hasher: "hashlib._Hash | None"
    ) -> tuple[memoryview, "hashlib._Hash | None"]:
        """One frame in `buffer`: header and the `length` bytes at `offset`, hashed into a copy
        of `hasher` (so a cancelled pump leaves the running hash at the last chunk sent)."""
        frame = memoryview(buffer)[: CHUNK_HEADER_BYTES + length]
        pack_chunk_header(frame, self.flow.transfer_id, offset)
        payload = frame[CHUNK_HEADER_BYTES:]
        self._source.read_into(payload, offset)
        if hasher is not None:
            hasher = hasher.copy()
            hasher.update(payload)
        return frame, hasher

    def _read_ahead(
        self, index: int
    ) -> "tuple[int, int, asyncio.Future[tuple[memoryview, hashlib._Hash | None]]] | None":
        length = self.flow.credit()
        if length == 0:
            return None
        offset = self.flow.next_offset
        hasher = None if self._known_sha256 is not None else self._hasher
        future = asyncio.ensure_future(
            self._reads.run(self._fill, self._buffers[index], offset, length, hasher)
        )
        return offset, length, future

    async def _send_chunks(self, offset: int) -> None:
        flow = self.flow
        transport = self._transport
        if transport is None:
            return
        ahead = None
        index = 0
        try:
            # A cancelled pump's read may still be filling a buffer: wait for it to let go.
            await self._reads.idle()
            if self._known_sha256 is None:
                await self._position_hash(offset)
            while not flow.all_sent:
                if ahead is None:
                    ahead = self._read_ahead(index)
                    if ahead is None:
                        self._credit.clear()
                        await self._credit.wait()
                        continue
                offset, length, reading = ahead
                frame, hasher = await reading
                flow.sent(offset, length)
                if hasher is not None:
                    self._hasher, self._hashed = hasher, flow.next_offset
                    self._checkpoints.append((flow.next_offset, hasher))
                # The next chunk is read into the other buffer while this one is on the wire.
                index ^= 1
                ahead = None if flow.all_sent else self._read_ahead(index)
                await transport.send_binary(frame)
                if offset <= self.streamed:
                    self.streamed = max(self.streamed, offset + length)
            if self._digest is None:
                self._digest = self._hasher.hexdigest()
            await transport.send_text(flow.end(self._digest).model_dump_json())
        except ConnectionError:
            flow.pause()
        except TransferFailed as exc:
            await self.abort(str(exc))
        finally:
            if ahead is not None:
                ahead[2].cancel()

    def _stop_pump(self) -> None:
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        self._pump = None

    def pause(self) -> None:
        self._stop_pump()
        self.flow.pause()
        self._transport = None

    def _report(self, done: int) -> None:
        if self._progress is not None:
            self._watch.advance(done, time.monotonic())
            self._progress(self._watch)

    def _finish(self, exc: BaseException | None, done: TransferDone | None = None) -> None:
        self._stop_pump()
        if self.result.done():
            return
        if exc is not None:
            self.result.set_exception(exc)
        elif done is not None:
            self.result.set_result(done)
        if self._settled is not None:
            outcome: TransferDone | str = done if exc is None and done is not None else str(exc)
            self._settled(self.flow.transfer_id, outcome)

    async def close(self) -> None:
        self._stop_pump()
        await self._reads.idle()
        self._source.close()


class Receiver(Generic[R]):
    """One transfer this side receives: validates everything the sender says, writes behind the
    connection (one write in flight while the next chunk arrives), fsyncs and acknowledges every
    eighth of a window, and commits only what verifies."""

    def __init__(
        self,
        flow: ReceiverFlow,
        sink: TransferSink[R],
        wording: Wording,
        *,
        progress: ProgressSink | None = None,
    ) -> None:
        self.flow = flow
        self._sink = sink
        self._wording = wording
        self._progress = progress
        self._watch = Progress(flow.transfer_id, flow.direction, 0)
        self._opened = False
        self._transport: Transport | None = None
        self._write: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.result: asyncio.Future[R] = asyncio.get_running_loop().create_future()

    async def on_open(self, transport: Transport, message: TransferOpen) -> None:
        flow = self.flow
        if flow.state is ReceiveState.DONE and flow.result is not None:
            # The sender missed our done (the link fell): say it again.
            await _send_quietly(transport, flow.result.model_dump_json())
            return
        if flow.state is ReceiveState.FAILED:
            await _send_quietly(transport, flow.fail(flow.failure).model_dump_json())
            return
        try:
            size = flow.check_open(message)
            await self._quiesce()
            held = await self._sink.open(size)
            self._opened = True
            if held > size:
                raise TransferFailed(
                    f"This side holds {held} bytes of the transfer but the sender now declares "
                    f"{size}; the file changed."
                )
            accept = flow.accept(size, held)
        except TransferFailed as exc:
            await self._fail(transport, str(exc))
            return
        self._watch.size = size
        self._transport = transport
        await _send_quietly(transport, accept.model_dump_json())

    async def on_chunk(self, header: ChunkHeader, payload: memoryview) -> None:
        if self.flow.state is ReceiveState.FAILED:
            return  # chunks the sender had in flight when we aborted
        try:
            self.flow.chunk(header, len(payload))  # ProtocolError goes up to the connection
            await self._written()
        except TransferFailed as exc:
            await self._fail(self._transport, str(exc))
            return
        # Written behind: the connection reads the next chunk while this one goes to disk.
        self._write = asyncio.create_task(self._sink.write(header.offset, payload))
        if self.flow.sync_due() is not None:
            self._sync_task = asyncio.create_task(self._sync_and_ack())

    async def _written(self) -> None:
        """Wait for the last write started; TransferFailed if it failed. The task stays: a sync
        waiting for it and the next chunk waiting for it both see it end, so two writes never
        run at once, whatever the sink does."""
        write = self._write
        if write is None or write.cancelled():
            return
        # Shielded: a connection lost while its reader waits here does not stop the write.
        await asyncio.shield(write)

    async def _sync_and_ack(self) -> None:
        try:
            await self._written()
            held = await self._sink.sync()
        except TransferFailed as exc:
            self.flow.synced(0)
            await self._fail(self._transport, str(exc))
            return
        except asyncio.CancelledError:
            self.flow.synced(0)
            raise
        ack = self.flow.synced(held)
        if ack is not None:
            self._report(held)
            await _send_quietly(self._transport, ack.model_dump_json())
            if self.flow.sync_due() is not None:
                self._sync_task = asyncio.create_task(self._sync_and_ack())

    async def _wait_for_sync(self) -> None:
        task = self._sync_task
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _quiesce(self) -> None:
        """Nothing of this receiver's is writing or syncing when this returns."""
        await self._wait_for_sync()
        with contextlib.suppress(TransferFailed, asyncio.CancelledError):
            await self._written()

    async def on_end(self, message: TransferEnd) -> None:
        try:
            self.flow.end(message)
            await self._wait_for_sync()
            await self._written()
            sha256, value = await self._sink.commit(message.size, message.sha256)
        except TransferFailed as exc:
            await self._fail(self._transport, str(exc))
            return
        # The sender counts the transfer only on this: the hash of the bytes as stored here.
        done = self.flow.done(sha256)
        self._report(done.size)
        await _send_quietly(self._transport, done.model_dump_json())
        if not self.result.done():
            self.result.set_result(value)

    async def on_abort(self, message: TransferAbort) -> None:
        if self.flow.finished:
            return
        self.flow.aborted(message)
        await self._quiesce()
        await self._sink.discard()
        self._settle(TransferFailed(self._wording.peer_gave_up_receive.format(message.reason)))

    async def abort(self, reason: str) -> None:
        """Fail on this side's decision (job cancelled, timed out): tell the sender, clean up."""
        if not self.flow.finished:
            await self._fail(self._transport, reason)

    async def _fail(self, transport: Transport | None, reason: str) -> None:
        abort = self.flow.fail(reason)
        log.warning("Transfer %s failed: %s", self.flow.transfer_id, reason)
        await self._quiesce()
        await self._sink.discard()
        await _send_quietly(transport, abort.model_dump_json())
        self._settle(TransferFailed(reason))

    def _settle(self, exc: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(exc)

    def _report(self, done: int) -> None:
        if self._progress is not None:
            self._watch.advance(done, time.monotonic())
            self._progress(self._watch)

    def pause(self) -> None:
        self._transport = None

    def last_word(self) -> str | None:
        """The final message to repeat when the sender re-opens after the end, if any."""
        if self.flow.result is not None:
            return self.flow.result.model_dump_json()
        if self.flow.state is ReceiveState.FAILED:
            return TransferAbort(
                transfer_id=self.flow.transfer_id, reason=self.flow.failure or "Transfer failed."
            ).model_dump_json()
        return None

    async def close(self) -> None:
        """Stop using the file; a failed transfer's partial is gone, a paused one stays."""
        await self._quiesce()
        if self.flow.state is ReceiveState.FAILED:
            await self._sink.discard()
        elif self._opened or self.flow.state is not ReceiveState.EXPECTING:
            await self._sink.close()


class TransferBook:
    """Every transfer between one agent and the platform, across that agent's connections."""

    def __init__(self, wording: Wording) -> None:
        self._wording = wording
        self.transport: Transport | None = None
        self._senders: dict[UUID, Sender] = {}
        self._receivers: dict[UUID, Receiver[object]] = {}
        # The last word (done or abort) of transfers that ended lately: said again when the
        # peer re-opens one (it missed it when the link fell); other late frames are dropped.
        self._finished: OrderedDict[UUID, str] = OrderedDict()
        # Opens for transfers not registered yet (the job and the open travel in that order,
        # but the job's handler runs in its own task; after a platform restart the agent
        # re-opens at once). Bounded: the transfer id alone grants nothing until registered.
        self._stashed: OrderedDict[UUID, TransferOpen] = OrderedDict()

    def check_new(self, transfer_id: UUID) -> None:
        if transfer_id in self._senders or transfer_id in self._receivers:
            raise ValueError(f"Transfer {transfer_id} is already registered.")

    async def run_sender(self, sender: Sender) -> TransferDone:
        """Register `sender`, open it when linked, and wait for its end; always closes it."""
        tid = sender.flow.transfer_id
        self.check_new(tid)
        self._senders[tid] = sender
        try:
            if self.transport is not None:
                await sender.start(self.transport)
            return await sender.result
        finally:
            await sender.close()
            self._senders.pop(tid, None)
            self._remember(tid, None)

    async def run_receiver(
        self, receiver: Receiver[R], *, before_close: Callable[[], Awaitable[None]] | None = None
    ) -> R:
        """Register `receiver`, take an open that came first, wait for its end; closes it."""
        tid = receiver.flow.transfer_id
        self.check_new(tid)
        self._receivers[tid] = receiver  # type: ignore[assignment]
        try:
            stashed = self._stashed.pop(tid, None)
            if stashed is not None and self.transport is not None:
                await receiver.on_open(self.transport, stashed)
            return await receiver.result
        finally:
            await receiver.close()
            self._receivers.pop(tid, None)
            self._remember(tid, receiver.last_word())
            if before_close is not None:
                await before_close()

    async def abort(self, transfer_id: UUID, reason: str) -> None:
        """Give a transfer up: tell the peer, remove any partial file."""
        receiver = self._receivers.get(transfer_id)
        if receiver is not None:
            await receiver.abort(reason)
        sender = self._senders.get(transfer_id)
        if sender is not None:
            await sender.abort(reason)

    async def attach(self, transport: Transport) -> None:
        """A new connection is up (after its welcome): resume what this side was sending."""
        self.detach()
        self.transport = transport
        for sender in list(self._senders.values()):
            if not sender.flow.finished:
                await sender.start(transport)

    def detach(self) -> None:
        """The connection is lost: pause every transfer until the next `attach`."""
        self.transport = None
        self._stashed.clear()
        for sender in self._senders.values():
            sender.pause()
        for receiver in self._receivers.values():
            receiver.pause()

    async def on_message(self, message: AnyTransferMessage) -> None:
        """One transfer control message from the peer; ProtocolError when out of turn."""
        transport = self.transport
        if transport is None:
            raise ProtocolError("A transfer message arrived on a detached connection.")
        tid = message.transfer_id
        if tid in self._finished and tid not in self._receivers and tid not in self._senders:
            last_word = self._finished[tid]
            if isinstance(message, TransferOpen) and last_word:
                await _send_quietly(transport, last_word)
            return
        if isinstance(message, TransferOpen):
            receiver = self._receivers.get(tid)
            if receiver is None:
                self._stash(message)
            else:
                await receiver.on_open(transport, message)
        elif isinstance(message, TransferEnd):
            await self._receiver(tid).on_end(message)
        elif isinstance(message, TransferAccept):
            self._sender(tid).on_accept(message)
        elif isinstance(message, TransferAck):
            self._sender(tid).on_ack(message)
        elif isinstance(message, TransferDone):
            await self._sender(tid).on_done(message)
        elif isinstance(message, TransferAbort):
            # An abort for a transfer already over (or never known) changes nothing.
            if tid in self._receivers:
                await self._receivers[tid].on_abort(message)
            elif tid in self._senders:
                self._senders[tid].on_abort(message)
            else:
                self._stashed.pop(tid, None)

    async def on_chunk(self, frame: bytes) -> None:
        """One binary frame from the peer; ProtocolError when malformed or out of turn."""
        header, payload = decode_chunk(frame)
        tid = header.transfer_id
        if tid in self._finished and tid not in self._receivers:
            return
        await self._receiver(tid).on_chunk(header, payload)

    def _stash(self, message: TransferOpen) -> None:
        self._stashed[message.transfer_id] = message
        while len(self._stashed) > _STASHED_OPENS:
            self._stashed.popitem(last=False)

    def _remember(self, transfer_id: UUID, last_word: str | None) -> None:
        self._finished[transfer_id] = last_word or ""
        while len(self._finished) > _REMEMBERED:
            self._finished.popitem(last=False)

    def _receiver(self, transfer_id: UUID) -> "Receiver[object]":
        receiver = self._receivers.get(transfer_id)
        if receiver is None:
            raise ProtocolError(self._wording.unknown_data.format(transfer_id))
        return receiver

    def _sender(self, transfer_id: UUID) -> Sender:
        sender = self._senders.get(transfer_id)
        if sender is None or sender.flow.state is SendState.IDLE:
            raise ProtocolError(self._wording.never_opened.format(transfer_id))
        return sender
