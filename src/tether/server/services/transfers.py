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

from collections import OrderedDict
from uuid import UUID

from tether.protocol.transfer import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_WINDOW_BYTES,
    AnyTransferMessage,
    ReceiverFlow,
    SenderFlow,
    TransferDone,
    TransferFailed,
    Transport,
)
from tether.protocol.transfer_engine import (
    ProgressSink,
    Receiver,
    Sender,
    TransferBook,
    Wording,
)
from tether.server.store.blobs import (
    Blob,
    BlobError,
    BlobMismatch,
    BlobReader,
    BlobStore,
    PartialBlob,
)

_REMEMBERED = 256

_WORDING = Wording(
    peer_gave_up_receive="The endpoint gave up the transfer: {}",
    peer_gave_up_send="The endpoint refused the file: {}",
    unknown_data="The agent sent data for transfer {}, which it was not asked for.",
    never_opened="The agent answered transfer {}, which was never opened.",
)


def unstreamed_confirmation(streamed: int, size: int) -> str:
    """Why a receiver's `transfer.done` for bytes this platform did not send is not believed."""
    return (
        f"The endpoint confirmed the file when the platform had sent it only {streamed} of its "
        f"{size} bytes, so the deploy is not counted (the file may still be on the endpoint)."
    )


class _BlobSink:
    """files.get: the agent's bytes into a partial blob, committed under their SHA-256."""

    def __init__(self, store: BlobStore, transfer_id: UUID) -> None:
        self._store = store
        self._transfer_id = transfer_id
        self._partial: PartialBlob | None = None

    async def open(self, size: int) -> int:
        try:
            if self._partial is None:
                self._partial = await self._store.open_partial(
                    self._transfer_id, declared_size=size
                )
            held = await self._partial.sync()
        except BlobError as exc:
            raise TransferFailed(str(exc)) from exc
        if held > size:
            raise TransferFailed(
                f"The platform holds {held} bytes of this transfer but the endpoint now "
                f"declares {size}; the file changed."
            )
        return held

    def _opened(self) -> PartialBlob:
        if self._partial is None:
            raise TransferFailed("The platform's partial file is not open.")
        return self._partial

    async def write(self, offset: int, data: memoryview) -> None:
        try:
            await self._opened().write(offset, data)
        except BlobError as exc:
            raise TransferFailed(str(exc)) from exc

    async def sync(self) -> int:
        try:
            return await self._opened().sync()
        except BlobError as exc:
            raise TransferFailed(str(exc)) from exc

    async def commit(self, size: int, sha256: str) -> tuple[str, Blob]:
        try:
            blob = await self._opened().commit(sha256, size)
        except BlobMismatch as exc:
            raise TransferFailed(
                f"The file's SHA-256 on arrival ({exc.actual_sha256}) does not match the one "
                f"the endpoint computed ({sha256})."
            ) from exc
        except BlobError as exc:
            raise TransferFailed(str(exc)) from exc
        self._partial = None
        return blob.sha256, blob

    async def discard(self) -> None:
        if self._partial is not None:
            await self._partial.discard()
            self._partial = None

    async def close(self) -> None:
        if self._partial is not None:
            await self._partial.close()


class _BlobSource:
    """files.put: a library blob read at offsets into the sender's buffer."""

    def __init__(self, reader: BlobReader) -> None:
        self._reader = reader
        self.size = reader.size

    def read_into(self, buffer: memoryview, offset: int) -> None:
        if self._reader.read_into_blocking(buffer, offset) != len(buffer):
            raise TransferFailed(
                f"The library file {self._reader.sha256} is shorter than its recorded size."
            )

    def close(self) -> None:
        self._reader.close()


class HostTransfers:
    """Every transfer between the platform and one host, across that host's connections."""

    def __init__(
        self,
        store: BlobStore,
        *,
        window: int = DEFAULT_WINDOW_BYTES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        progress: ProgressSink | None = None,
    ) -> None:
        self._store = store
        self._window = window
        self._chunk_bytes = chunk_bytes
        self._book = TransferBook(_WORDING)
        # Told bytes and rate as each transfer goes (the job and Host pages show them).
        self._progress = progress
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
        self._book.check_new(transfer_id)
        flow = ReceiverFlow(
            transfer_id,
            job_id,
            "get",
            max_size=min(max_bytes or self._store.max_bytes, self._store.max_bytes),
            limit_label="retrieved files",
            window=self._window,
        )
        sink = _BlobSink(self._store, transfer_id)
        receiver = Receiver(flow, sink, _WORDING, progress=self._progress)
        return await self._book.run_receiver(receiver)

    async def send_blob(
        self, transfer_id: UUID, job_id: str, sha256: str, *, path: str = ""
    ) -> TransferDone:
        """files.put: send the library blob `sha256`; returns the agent's verified done.

        `path` is shown to the agent as the source name. Raises BlobNotFound or TransferFailed.
        """
        self._book.check_new(transfer_id)
        reader = await self._store.open_read(sha256)
        flow = SenderFlow(
            transfer_id, job_id, "put", reader.size, path=path, chunk_bytes=self._chunk_bytes
        )
        sender = Sender(
            flow,
            _BlobSource(reader),
            _WORDING,
            sha256=reader.sha256,
            unstreamed=unstreamed_confirmation,
            settled=self._settled_send,
            progress=self._progress,
        )
        return await self._book.run_sender(sender)

    async def abort(self, transfer_id: UUID, reason: str) -> None:
        """Give a transfer up (job cancelled or timed out): tell the agent, remove partials."""
        await self._book.abort(transfer_id, reason)

    async def attach(self, transport: Transport) -> None:
        """A connection of this host is up: resume what the platform sends on it."""
        await self._book.attach(transport)

    def detach(self) -> None:
        """The connection is gone: pause everything until the next `attach`."""
        self._book.detach()

    async def on_message(self, message: AnyTransferMessage) -> None:
        """One transfer control message from the agent; ProtocolError when it breaks the rules."""
        await self._book.on_message(message)

    async def on_chunk(self, frame: bytes) -> None:
        """One binary frame from the agent; ProtocolError when it is malformed or out of turn."""
        await self._book.on_chunk(frame)

    def _settled_send(self, transfer_id: UUID, outcome: TransferDone | str) -> None:
        if isinstance(self._send_outcomes.get(transfer_id), TransferDone):
            return  # verified once: a later re-open (and the agent's repeated done) adds nothing
        self._send_outcomes[transfer_id] = outcome
        while len(self._send_outcomes) > _REMEMBERED:
            self._send_outcomes.popitem(last=False)
