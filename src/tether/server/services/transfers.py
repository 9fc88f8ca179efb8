"""The platform's side of file transfers with one agent: receiving `files.get`, sending `files.put`.

One `HostTransfers` per host, kept across that host's reconnects (and rebuilt after a platform
restart from the jobs still running). The gateway drives it:

    transfers.attach(transport)          after the agent's welcome, on every connection
    await transfers.on_message(message)  for each transfer.* text frame, in arrival order
    await transfers.on_chunk(frame)      for each binary frame, in arrival order
    transfers.detach()                   when the connection is gone

and the job logic awaits `receive_file` / `send_blob`. Everything the agent sends is checked by
`ReceiverFlow` / `SenderFlow`; a violation of the protocol raises `ProtocolError` out of
`on_message` / `on_chunk` (the gateway closes the connection with 4000), a transfer that cannot
complete fails alone with a sentence, sent to the agent as `transfer.abort`.
"""

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from uuid import UUID

from tether.protocol.errors import ProtocolError
from tether.protocol.transfer import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_WINDOW_BYTES,
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
    encode_chunk,
)
from tether.server.store.blobs import (
    Blob,
    BlobError,
    BlobMismatch,
    BlobReader,
    BlobStore,
    PartialBlob,
)
from tether.workers import ThreadWork

log = logging.getLogger("tether.server.transfers")

_REMEMBERED = 256
_STASHED_OPENS = 16


def unstreamed_confirmation(streamed: int, size: int) -> str:
    """Why a receiver's `transfer.done` for bytes this platform did not send is not believed."""
    return (
        f"The endpoint confirmed the file when the platform had sent it only {streamed} of its "
        f"{size} bytes, so the deploy is not counted (the file may still be on the endpoint)."
    )


async def _send(transport: Transport | None, text: str) -> None:
    """Send if linked; a link that just died is the gateway's to notice, not ours."""
    if transport is None:
        return
    with contextlib.suppress(ConnectionError):
        await transport.send_text(text)


class _BlobReceiver:
    """files.get: the agent's bytes into a partial blob, committed under their SHA-256."""

    def __init__(self, store: BlobStore, flow: ReceiverFlow) -> None:
        self.flow = flow
        self._store = store
        self._partial: PartialBlob | None = None
        self._transport: Transport | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.result: asyncio.Future[Blob] = asyncio.get_running_loop().create_future()

    async def on_open(self, transport: Transport, message: TransferOpen) -> None:
        flow = self.flow
        if flow.state is ReceiveState.DONE and flow.result is not None:
            # The sender missed our done (the link fell): say it again.
            await _send(transport, flow.result.model_dump_json())
            return
        if flow.state is ReceiveState.FAILED:
            await _send(transport, flow.fail(flow.failure).model_dump_json())
            return
        try:
            size = flow.check_open(message)
            if self._partial is None:
                self._partial = await self._store.open_partial(flow.transfer_id, declared_size=size)
            await self._wait_for_sync()
            held = await self._partial.sync()
            if held > size:
                raise TransferFailed(
                    f"The platform holds {held} bytes of this transfer but the endpoint now "
                    f"declares {size}; the file changed."
                )
            accept = flow.accept(size, held)
        except (TransferFailed, BlobError) as exc:
            await self._fail(transport, str(exc))
            return
        self._transport = transport
        await _send(transport, accept.model_dump_json())

    async def on_chunk(self, header: ChunkHeader, payload: memoryview) -> None:
        if self.flow.state is ReceiveState.FAILED:
            return  # chunks the sender had in flight when we aborted
        try:
            self.flow.chunk(header, len(payload))  # ProtocolError goes up to the gateway
        except TransferFailed as exc:
            await self._fail(self._transport, str(exc))
            return
        assert self._partial is not None  # opened before the flow could accept
        try:
            await self._partial.write(header.offset, payload)
        except BlobError as exc:
            await self._fail(self._transport, str(exc))
            return
        self._schedule_sync()

    def _schedule_sync(self) -> None:
        if self.flow.sync_due() is not None:
            self._sync_task = asyncio.create_task(self._sync_and_ack())

    async def _sync_and_ack(self) -> None:
        assert self._partial is not None
        try:
            held = await self._partial.sync()
        except BlobError as exc:
            self.flow.synced(0)
            await self._fail(self._transport, str(exc))
            return
        ack = self.flow.synced(held)
        if ack is not None:
            await _send(self._transport, ack.model_dump_json())
            self._schedule_sync()

    async def _wait_for_sync(self) -> None:
        task = self._sync_task
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def on_end(self, message: TransferEnd) -> None:
        try:
            self.flow.end(message)
        except TransferFailed as exc:
            await self._fail(self._transport, str(exc))
            return
        await self._wait_for_sync()
        assert self._partial is not None
        try:
            blob = await self._partial.commit(message.sha256, message.size)
        except BlobMismatch as exc:
            await self._fail(
                self._transport,
                f"The file's SHA-256 on arrival ({exc.actual_sha256}) does not match the one "
                f"the endpoint computed ({message.sha256}).",
            )
            return
        except BlobError as exc:
            await self._fail(self._transport, str(exc))
            return
        done = self.flow.done(blob.sha256)
        await _send(self._transport, done.model_dump_json())
        if not self.result.done():
            self.result.set_result(blob)

    async def on_abort(self, message: TransferAbort) -> None:
        if self.flow.finished:
            return
        self.flow.aborted(message)
        await self._cleanup()
        self._settle(TransferFailed(f"The endpoint gave up the transfer: {message.reason}"))

    async def abort(self, reason: str) -> None:
        """Fail on the platform's decision (job cancelled, timed out): tell the agent, clean up."""
        if not self.flow.finished:
            await self._fail(self._transport, reason)

    async def _fail(self, transport: Transport | None, reason: str) -> None:
        abort = self.flow.fail(reason)
        log.warning("Transfer %s failed: %s", self.flow.transfer_id, reason)
        await self._cleanup()
        await _send(transport, abort.model_dump_json())
        self._settle(TransferFailed(reason))

    async def _cleanup(self) -> None:
        await self._wait_for_sync()
        if self._partial is not None:
            await self._partial.discard()

    def _settle(self, exc: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(exc)

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
        """Let go of the file, keeping the partial on disk for a later resume."""
        await self._wait_for_sync()
        if self._partial is not None and not self.flow.finished:
            await self._partial.close()


class _BlobSender:
    """files.put: a blob from the library to the agent, at most a window ahead of its acks."""

    def __init__(
        self,
        flow: SenderFlow,
        reader: BlobReader,
        settled: Callable[[UUID, TransferDone | str], None] | None = None,
    ) -> None:
        self.flow = flow
        self._reader = reader
        # Told at once how the send ended (the verified done, or why not), before any await.
        self._settled = settled
        self._transport: Transport | None = None
        self._pump: asyncio.Task[None] | None = None
        self._credit = asyncio.Event()
        self._reads = ThreadWork()
        # How much of the file, from its first byte on, this process itself has sent: a receiver
        # that says it already holds bytes (an accept past 0) or that is done without them is
        # believed only for what was streamed to it here.
        self.streamed = 0
        self.result: asyncio.Future[TransferDone] = asyncio.get_running_loop().create_future()

    async def start(self, transport: Transport) -> None:
        self._stop_pump()
        self._transport = transport
        await _send(transport, self.flow.open().model_dump_json())

    def on_accept(self, message: TransferAccept) -> None:
        self.flow.accepted(message)
        self._stop_pump()
        self._pump = asyncio.create_task(self._send_chunks())

    def on_ack(self, message: TransferAck) -> None:
        self.flow.acknowledged(message)
        self._credit.set()

    def on_done(self, message: TransferDone) -> None:
        try:
            self.flow.done(message, self._reader.sha256)
            if self.streamed < self.flow.size:
                self.flow.state = SendState.FAILED
                self.flow.failure = unstreamed_confirmation(self.streamed, self.flow.size)
                raise TransferFailed(self.flow.failure)
        except TransferFailed as exc:
            self._finish(exc)
            return
        self._finish(None, message)

    def on_abort(self, message: TransferAbort) -> None:
        if self.flow.finished:
            return
        self.flow.aborted(message)
        self._finish(TransferFailed(f"The endpoint refused the file: {message.reason}"))

    async def abort(self, reason: str) -> None:
        if self.flow.finished:
            return
        message = self.flow.fail(reason)
        await _send(self._transport, message.model_dump_json())
        self._finish(TransferFailed(reason))

    async def _send_chunks(self) -> None:
        flow = self.flow
        transport = self._transport
        if transport is None:
            return
        try:
            while not flow.all_sent:
                length = flow.credit()
                if length == 0:
                    self._credit.clear()
                    await self._credit.wait()
                    continue
                offset = flow.next_offset
                frame = await self._reads.run(self._read_frame, offset, length)
                flow.sent(offset, length)
                await transport.send_binary(frame)
                if offset <= self.streamed:
                    self.streamed = max(self.streamed, offset + length)
            await transport.send_text(flow.end(self._reader.sha256).model_dump_json())
        except ConnectionError:
            flow.pause()  # the gateway detaches us; the next attach resumes
        except TransferFailed as exc:
            await self.abort(str(exc))

    def _read_frame(self, offset: int, length: int) -> bytes:
        data = self._reader.read_at_blocking(offset, length)
        if len(data) != length:
            raise TransferFailed(
                f"The library file {self._reader.sha256} is shorter than its recorded size."
            )
        return encode_chunk(self.flow.transfer_id, offset, data)

    def _stop_pump(self) -> None:
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        self._pump = None

    def pause(self) -> None:
        self._stop_pump()
        self.flow.pause()
        self._transport = None

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
        self._reader.close()


class HostTransfers:
    """Every transfer between the platform and one host, across that host's connections."""

    def __init__(
        self,
        store: BlobStore,
        *,
        window: int = DEFAULT_WINDOW_BYTES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self._store = store
        self._window = window
        self._chunk_bytes = chunk_bytes
        self._transport: Transport | None = None
        self._receivers: dict[UUID, _BlobReceiver] = {}
        self._senders: dict[UUID, _BlobSender] = {}
        # The last word (done or abort) of transfers that ended lately: said again when the
        # agent re-opens one (it missed it when the link fell); other late frames are dropped.
        self._finished: OrderedDict[UUID, str] = OrderedDict()
        # Opens for transfers not registered yet: after a platform restart the agent re-opens
        # at once, while the jobs still running are registered again. Bounded, so an agent
        # cannot grow it; the transfer id alone grants nothing until a job registers it.
        self._stashed: OrderedDict[UUID, TransferOpen] = OrderedDict()
        # How each send ended, set the moment the agent's verdict arrives (before the job's
        # status, which follows it on the same connection, can be recorded): the done it
        # confirmed after receiving every byte from here, or why it is not believed.
        self._send_outcomes: OrderedDict[UUID, TransferDone | str] = OrderedDict()

    def send_outcome(self, transfer_id: UUID) -> TransferDone | str | None:
        """How send `transfer_id` ended: the agent's verified done, the reason it failed, or
        None while it has not ended (or was never started here)."""
        return self._send_outcomes.get(transfer_id)

    def forget_send(self, transfer_id: UUID) -> None:
        self._send_outcomes.pop(transfer_id, None)

    async def receive_file(
        self, transfer_id: UUID, job_id: str, *, max_bytes: int | None = None
    ) -> Blob:
        """files.get: wait for the agent to send transfer `transfer_id`; the stored blob.

        Resumes from a partial left on disk under the same transfer id (a platform restart).
        Raises TransferFailed with the reason. Cancelling the wait leaves the partial on disk
        (for a resume after restart); call `abort` to give the transfer up for good.
        """
        if transfer_id in self._receivers or transfer_id in self._senders:
            raise ValueError(f"Transfer {transfer_id} is already registered.")
        flow = ReceiverFlow(
            transfer_id,
            job_id,
            "get",
            max_size=min(max_bytes or self._store.max_bytes, self._store.max_bytes),
            limit_label="retrieved files",
            window=self._window,
        )
        receiver = _BlobReceiver(self._store, flow)
        self._receivers[transfer_id] = receiver
        try:
            stashed = self._stashed.pop(transfer_id, None)
            if stashed is not None and self._transport is not None:
                await receiver.on_open(self._transport, stashed)
            return await receiver.result
        finally:
            await receiver.close()
            self._receivers.pop(transfer_id, None)
            self._remember(transfer_id, receiver.last_word())

    async def send_blob(
        self, transfer_id: UUID, job_id: str, sha256: str, *, path: str = ""
    ) -> TransferDone:
        """files.put: send the library blob `sha256`; returns the agent's verified done.

        `path` is shown to the agent as the source name. Raises BlobNotFound or TransferFailed.
        """
        if transfer_id in self._receivers or transfer_id in self._senders:
            raise ValueError(f"Transfer {transfer_id} is already registered.")
        reader = await self._store.open_read(sha256)
        flow = SenderFlow(
            transfer_id, job_id, "put", reader.size, path=path, chunk_bytes=self._chunk_bytes
        )
        sender = _BlobSender(flow, reader, settled=self._settled_send)
        self._senders[transfer_id] = sender
        try:
            if self._transport is not None:
                await sender.start(self._transport)
            return await sender.result
        finally:
            await sender.close()
            self._senders.pop(transfer_id, None)
            self._remember(transfer_id, None)

    async def abort(self, transfer_id: UUID, reason: str) -> None:
        """Give a transfer up (job cancelled or timed out): tell the agent, remove partials."""
        receiver = self._receivers.get(transfer_id)
        if receiver is not None:
            await receiver.abort(reason)
        sender = self._senders.get(transfer_id)
        if sender is not None:
            await sender.abort(reason)

    async def attach(self, transport: Transport) -> None:
        """A connection of this host is up: resume what the platform sends on it."""
        self.detach()
        self._transport = transport
        for sender in list(self._senders.values()):
            if not sender.flow.finished:
                await sender.start(transport)

    def detach(self) -> None:
        """The connection is gone: pause everything until the next `attach`."""
        self._transport = None
        self._stashed.clear()
        for sender in self._senders.values():
            sender.pause()
        for receiver in self._receivers.values():
            receiver.pause()

    async def on_message(self, message: AnyTransferMessage) -> None:
        """One transfer control message from the agent; ProtocolError when it breaks the rules."""
        transport = self._transport
        if transport is None:
            raise ProtocolError("A transfer message arrived on a detached connection.")
        tid = message.transfer_id
        if tid in self._finished and tid not in self._receivers and tid not in self._senders:
            last_word = self._finished[tid]
            if isinstance(message, TransferOpen) and last_word:
                await _send(transport, last_word)
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
            self._sender(tid).on_done(message)
        elif isinstance(message, TransferAbort):
            # An abort for a transfer already over (or never known) changes nothing.
            if tid in self._receivers:
                await self._receivers[tid].on_abort(message)
            elif tid in self._senders:
                self._senders[tid].on_abort(message)
            else:
                self._stashed.pop(tid, None)

    async def on_chunk(self, frame: bytes) -> None:
        """One binary frame from the agent; ProtocolError when it is malformed or out of turn."""
        header, payload = decode_chunk(frame)
        if header.transfer_id in self._finished and header.transfer_id not in self._receivers:
            return
        await self._receiver(header.transfer_id).on_chunk(header, payload)

    def _settled_send(self, transfer_id: UUID, outcome: TransferDone | str) -> None:
        if isinstance(self._send_outcomes.get(transfer_id), TransferDone):
            return  # verified once: a later re-open (and the agent's repeated done) adds nothing
        self._send_outcomes[transfer_id] = outcome
        while len(self._send_outcomes) > _REMEMBERED:
            self._send_outcomes.popitem(last=False)

    def _stash(self, message: TransferOpen) -> None:
        self._stashed[message.transfer_id] = message
        while len(self._stashed) > _STASHED_OPENS:
            self._stashed.popitem(last=False)

    def _remember(self, transfer_id: UUID, last_word: str | None) -> None:
        self._finished[transfer_id] = last_word or ""
        while len(self._finished) > _REMEMBERED:
            self._finished.popitem(last=False)

    def _receiver(self, transfer_id: UUID) -> _BlobReceiver:
        receiver = self._receivers.get(transfer_id)
        if receiver is None:
            raise ProtocolError(
                f"The agent sent data for transfer {transfer_id}, which it was not asked for."
            )
        return receiver

    def _sender(self, transfer_id: UUID) -> _BlobSender:
        sender = self._senders.get(transfer_id)
        if sender is None or sender.flow.state is SendState.IDLE:
            raise ProtocolError(
                f"The agent answered transfer {transfer_id}, which was never opened."
            )
        return sender
