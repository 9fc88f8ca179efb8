"""File transfers on the agent connection: binary chunk frames, JSON control messages, and the
two small state machines (sender, receiver) that both ends drive.

The state machines here do no I/O (no sockets, no files, no clock): the agent and the platform
wrap them with their own reading and writing, so the rules of the protocol (who may say what,
when; how far a sender may run ahead) are written once. Anything the other side does out of turn
raises `ProtocolError`; a transfer that cannot go on for a reason a user should read raises
`TransferFailed`, whose message becomes the `transfer.abort` reason.

Wire format of a chunk (one binary WebSocket frame, at most `MAX_FRAME_BYTES`):

    u8 format version (1) | u8 kind (1 = data) | 16 bytes transfer id (UUID) | u64 offset | payload

all big-endian. See docs/protocol.md, "File transfers", for the message sequence.
"""

import struct
import uuid
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Annotated, Literal, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError

from tether.errors import TetherError
from tether.protocol.errors import ProtocolError
from tether.protocol.validation import first_error
from tether.protocol.version import MAX_FRAME_BYTES

CHUNK_FORMAT_VERSION = 1
_HEADER = struct.Struct(">BB16sQ")
CHUNK_HEADER_BYTES = _HEADER.size
MAX_CHUNK_PAYLOAD = MAX_FRAME_BYTES - CHUNK_HEADER_BYTES

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# The largest page-aligned payload in one 1 MiB frame (255 pages): every chunk costs a fixed
# amount (a hand-off to a worker thread, a WebSocket frame and its copies, an allocation in the
# WebSocket library), and halving their number took a third off the CPU of a files.get through
# both engines (benchmarks/transfer_engine.py --chunk-kib 512 / 1020, docs/performance.md).
DEFAULT_CHUNK_BYTES = 1020 * KiB
DEFAULT_WINDOW_BYTES = 8 * MiB
# The window is the receiver's choice, within these bounds: at least two full chunks so a sender
# is never stuck below one chunk of credit; at most what one connection should ever buffer.
MIN_WINDOW_BYTES = 2 * MiB
MAX_WINDOW_BYTES = 64 * MiB
# Acknowledgements come every eighth of a window, so credit flows back long before it runs out.
ACKS_PER_WINDOW = 8
MAX_TRANSFER_BYTES = 1 << 50  # 1 PiB: a sanity bound on the wire; the real caps are settings.

Direction = Literal["get", "put"]
"""`get`: endpoint -> platform (the agent sends). `put`: platform -> endpoint (the agent receives)."""


class TransferFailed(TetherError):
    """The transfer cannot go on; the message is one sentence for the analyst and the peer."""


class ChunkKind(IntEnum):
    DATA = 1


@dataclass(frozen=True)
class ChunkHeader:
    """The fixed header in front of every chunk's payload."""

    transfer_id: UUID
    offset: int
    kind: ChunkKind = ChunkKind.DATA


def encode_chunk(transfer_id: UUID, offset: int, payload: bytes | bytearray | memoryview) -> bytes:
    """One binary frame carrying `payload` at `offset` of transfer `transfer_id`."""
    if len(payload) > MAX_CHUNK_PAYLOAD:
        raise ValueError(f"A chunk carries at most {MAX_CHUNK_PAYLOAD} bytes, not {len(payload)}.")
    if not 0 <= offset < 1 << 64:
        raise ValueError(f"Chunk offset {offset} is out of range.")
    return _HEADER.pack(CHUNK_FORMAT_VERSION, ChunkKind.DATA, transfer_id.bytes, offset) + payload


def pack_chunk_header(frame: bytearray | memoryview, transfer_id: UUID, offset: int) -> None:
    """Write the header of a chunk at `offset` into the first bytes of `frame`, in place: a
    sender reads the payload into the rest of the same buffer, so no chunk is copied to be framed.
    """
    if not 0 <= offset < 1 << 64:
        raise ValueError(f"Chunk offset {offset} is out of range.")
    if len(frame) - CHUNK_HEADER_BYTES > MAX_CHUNK_PAYLOAD:
        raise ValueError(f"A chunk carries at most {MAX_CHUNK_PAYLOAD} bytes.")
    _HEADER.pack_into(frame, 0, CHUNK_FORMAT_VERSION, ChunkKind.DATA, transfer_id.bytes, offset)


def decode_chunk(frame: bytes | bytearray | memoryview) -> tuple[ChunkHeader, memoryview]:
    """The header and payload of one binary frame, or ProtocolError when it is malformed.

    The payload is a view into `frame`, so a 512 KiB chunk is not copied on its way to disk.
    """
    view = memoryview(frame)
    if len(view) < CHUNK_HEADER_BYTES:
        raise ProtocolError(
            f"A file chunk of {len(view)} bytes is shorter than its {CHUNK_HEADER_BYTES}-byte header."
        )
    version, kind, raw_id, offset = _HEADER.unpack_from(view)
    if version != CHUNK_FORMAT_VERSION:
        raise ProtocolError(f"A file chunk has format version {version}; this side speaks 1.")
    if kind != ChunkKind.DATA:
        raise ProtocolError(f"A file chunk has unknown kind {kind}.")
    payload = view[CHUNK_HEADER_BYTES:]
    if len(payload) > MAX_CHUNK_PAYLOAD:
        raise ProtocolError(
            f"A file chunk carries {len(payload)} bytes, over the {MAX_CHUNK_PAYLOAD}-byte limit."
        )
    return ChunkHeader(UUID(bytes=raw_id), offset, ChunkKind(kind)), payload


_TRANSFER_NAMESPACE = UUID("6f1d3c52-8e0b-4f44-9a55-2b1f3f0c7e10")


def transfer_id_for(job_id: str, seq: int | None = None) -> UUID:
    """The stable transfer id of a job's file (of a script's `seq`th file): the same after any
    restart of either side, so a transfer resumes from the partial file."""
    return uuid.uuid5(_TRANSFER_NAMESPACE, job_id if seq is None else f"{job_id}/{seq}")


def format_size(size: int) -> str:
    """`5.0 GiB`, `12.5 MiB`, `900 bytes`: sizes as the sentences users read show them."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


# ---- control messages ------------------------------------------------------------------------

# Strict: a JSON integer only, never "12" or 12.0 or true coerced into a size.
Size = Annotated[int, Strict(), Field(ge=0, le=MAX_TRANSFER_BYTES)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
JobId = Annotated[str, Field(min_length=1, max_length=64)]
Reason = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]*$")]
SourcePath = Annotated[str, Field(max_length=4096, pattern=r"^[^\x00-\x1f\x7f]*$")]
Window = Annotated[int, Strict(), Field(ge=MIN_WINDOW_BYTES, le=MAX_WINDOW_BYTES)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransferOpen(_Message):
    """Sender -> receiver: start (or resume, after a reconnect) sending `size` bytes."""

    type: Literal["transfer.open"] = "transfer.open"
    transfer_id: UUID
    job_id: JobId
    direction: Direction
    size: Size
    # Informational: the path the bytes come from on the sending side ("" when it has none).
    path: SourcePath = ""


class TransferAccept(_Message):
    """Receiver -> sender: send from `offset` (what I hold durably), at most `window` ahead."""

    type: Literal["transfer.accept"] = "transfer.accept"
    transfer_id: UUID
    offset: Size
    window: Window


class TransferAck(_Message):
    """Receiver -> sender: the first `offset` bytes are on disk (fsynced); grants credit."""

    type: Literal["transfer.ack"] = "transfer.ack"
    transfer_id: UUID
    offset: Size


class TransferEnd(_Message):
    """Sender -> receiver: all `size` bytes are sent; their SHA-256 at the source."""

    type: Literal["transfer.end"] = "transfer.end"
    transfer_id: UUID
    size: Size
    sha256: Sha256


class TransferDone(_Message):
    """Receiver -> sender: the bytes are verified and in place; the transfer is over."""

    type: Literal["transfer.done"] = "transfer.done"
    transfer_id: UUID
    size: Size
    sha256: Sha256


class TransferAbort(_Message):
    """Either side: the transfer failed for good, for `reason`; nothing is left half-written."""

    type: Literal["transfer.abort"] = "transfer.abort"
    transfer_id: UUID
    reason: Reason


# A running script may move at most this many files (tether.script upload and download): enough
# for the shipped Directory Access Control's default of 1000 files, bounded for the platform.
MAX_SCRIPT_TRANSFERS = 1000
LibraryName = Annotated[str, Field(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")]


class TransferRequest(_Message):
    """Agent -> platform: a running script asks to move a file (docs/adr/0011).

    `get` sends endpoint file `path` (of `size` bytes) to the platform; `put` writes library file
    `name` to endpoint path `path`. `seq` numbers the script's requests from 0; a request is sent
    again after every reconnect until its transfer ends, and the platform answers a repeat with
    the same grant.
    """

    type: Literal["transfer.request"] = "transfer.request"
    job_id: JobId
    seq: Annotated[int, Strict(), Field(ge=0, lt=MAX_SCRIPT_TRANSFERS)]
    direction: Direction
    path: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f\x7f]*$")]
    name: LibraryName = ""
    size: Size = 0


class TransferGrant(_Message):
    """Platform -> agent: the answer to a request; `transfer_id` to use, or `error` why not.

    For `put`, the size and SHA-256 of the library file, which the agent verifies it received.
    """

    type: Literal["transfer.grant"] = "transfer.grant"
    job_id: JobId
    seq: Annotated[int, Strict(), Field(ge=0, lt=MAX_SCRIPT_TRANSFERS)]
    transfer_id: UUID | None = None
    size: Size = 0
    sha256: Sha256 | None = None
    error: Reason | None = None


TransferMessage = Annotated[
    TransferOpen | TransferAccept | TransferAck | TransferEnd | TransferDone | TransferAbort,
    Field(discriminator="type"),
]
"""The control messages of a transfer; both the agent's and the platform's unions take them all.

`transfer.request` and `transfer.grant` are not among them: they start a transfer, one way each.
"""

AnyTransferMessage = (
    TransferOpen | TransferAccept | TransferAck | TransferEnd | TransferDone | TransferAbort
)
TRANSFER_MESSAGE_TYPES = frozenset(
    {"transfer.open", "transfer.accept", "transfer.ack", "transfer.end", "transfer.done"}
    | {"transfer.abort"}
)

_adapter: TypeAdapter[AnyTransferMessage] = TypeAdapter(TransferMessage)


def parse_transfer_message(frame: str | bytes) -> AnyTransferMessage:
    """Validate one transfer control frame, raising ProtocolError with the first problem."""
    if isinstance(frame, bytes):
        raise ProtocolError("A binary frame arrived where a JSON control message was expected.")
    try:
        return _adapter.validate_json(frame)
    except ValidationError as exc:
        problem, evidence = first_error(exc)
        raise ProtocolError(f"Malformed transfer message ({problem}).", evidence=evidence) from exc


class Transport(Protocol):
    """What a transfer engine needs of a connection; sends raise ConnectionError once it is gone.

    `send_binary` may be given a view of a buffer the sender reuses for its next chunk: the
    frame must be framed (copied into the connection's output) before the call returns, as
    the websockets library does, or copied by a transport that keeps it.
    """

    async def send_text(self, text: str) -> None: ...

    async def send_binary(self, frame: bytes | memoryview) -> None: ...


# ---- state machines --------------------------------------------------------------------------


class SendState(Enum):
    IDLE = "idle"  # created, never opened
    OPENING = "opening"  # open sent, waiting for accept
    SENDING = "sending"  # chunks flowing
    ENDING = "ending"  # end sent, waiting for done
    PAUSED = "paused"  # link lost; a new open resumes
    DONE = "done"
    FAILED = "failed"


_SENDER_LIVE = (SendState.OPENING, SendState.SENDING, SendState.ENDING)


class SenderFlow:
    """The sending side of one transfer: what it may send now, and what it may receive."""

    def __init__(
        self,
        transfer_id: UUID,
        job_id: str,
        direction: Direction,
        size: int,
        *,
        path: str = "",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if not 0 < chunk_bytes <= MAX_CHUNK_PAYLOAD:
            raise ValueError(f"chunk_bytes must be between 1 and {MAX_CHUNK_PAYLOAD}.")
        self.transfer_id = transfer_id
        self.job_id = job_id
        self.direction: Direction = direction
        self.size = size
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.state = SendState.IDLE
        self.next_offset = 0
        self.acked = 0
        self.window = MIN_WINDOW_BYTES
        self.failure = ""

    def _expect(self, *states: SendState, doing: str) -> None:
        if self.state not in states:
            raise ProtocolError(
                f"Transfer {self.transfer_id}: {doing} is not valid while {self.state.value}."
            )

    def open(self) -> TransferOpen:
        self._expect(SendState.IDLE, SendState.PAUSED, doing="opening")
        self.state = SendState.OPENING
        return TransferOpen(
            transfer_id=self.transfer_id,
            job_id=self.job_id,
            direction=self.direction,
            size=self.size,
            path=self.path,
        )

    def accepted(self, message: TransferAccept) -> int:
        """Start sending from the receiver's offset; returns that offset."""
        self._expect(SendState.OPENING, doing="an accept")
        if message.offset > self.size:
            raise ProtocolError(
                f"Transfer {self.transfer_id}: the receiver holds {message.offset} bytes of a "
                f"{self.size}-byte file."
            )
        self.state = SendState.SENDING
        self.next_offset = self.acked = message.offset
        self.window = message.window
        return message.offset

    def credit(self) -> int:
        """How many bytes the next chunk may carry now (0: wait for an ack or the end)."""
        self._expect(SendState.SENDING, doing="sending a chunk")
        room = self.acked + self.window - self.next_offset
        return max(0, min(self.chunk_bytes, self.size - self.next_offset, room))

    def sent(self, offset: int, length: int) -> None:
        self._expect(SendState.SENDING, doing="sending a chunk")
        if offset != self.next_offset or not 0 < length <= self.credit():
            raise ValueError(f"Chunk at {offset} (+{length}) is not within the sender's credit.")
        self.next_offset += length

    @property
    def all_sent(self) -> bool:
        return self.next_offset == self.size

    @property
    def in_flight(self) -> int:
        return self.next_offset - self.acked

    def acknowledged(self, message: TransferAck) -> None:
        self._expect(SendState.SENDING, SendState.ENDING, doing="an ack")
        if not self.acked <= message.offset <= self.next_offset:
            raise ProtocolError(
                f"Transfer {self.transfer_id}: ack of {message.offset} bytes outside the "
                f"{self.acked}..{self.next_offset} sent and not yet acknowledged."
            )
        self.acked = message.offset

    def end(self, sha256: str) -> TransferEnd:
        self._expect(SendState.SENDING, doing="ending")
        if not self.all_sent:
            raise ValueError("The transfer cannot end before every byte is sent.")
        self.state = SendState.ENDING
        return TransferEnd(transfer_id=self.transfer_id, size=self.size, sha256=sha256)

    def done(self, message: TransferDone, sha256: str) -> None:
        """The receiver's verdict; TransferFailed if it verified other bytes than were sent.

        Valid after `end`, and also right after a re-`open`: the receiver finished while the
        link was down and says so again instead of accepting.
        """
        self._expect(SendState.ENDING, SendState.OPENING, doing="a done")
        if message.size != self.size or message.sha256 != sha256:
            self.state = SendState.FAILED
            self.failure = (
                f"The receiver stored {message.size} bytes with SHA-256 {message.sha256}, "
                f"not the {self.size} bytes with SHA-256 {sha256} that were sent."
            )
            raise TransferFailed(self.failure)
        self.state = SendState.DONE

    def aborted(self, message: TransferAbort) -> None:
        self._expect(SendState.IDLE, SendState.PAUSED, *_SENDER_LIVE, doing="an abort")
        self.state = SendState.FAILED
        self.failure = message.reason

    def fail(self, reason: str) -> TransferAbort:
        """Give up on this side; returns the abort to tell the receiver."""
        self.state = SendState.FAILED
        self.failure = _reason(reason)
        return TransferAbort(transfer_id=self.transfer_id, reason=self.failure)

    def pause(self) -> None:
        """The link is gone; `open` again on the next one."""
        if self.state in _SENDER_LIVE:
            self.state = SendState.PAUSED

    @property
    def finished(self) -> bool:
        return self.state in (SendState.DONE, SendState.FAILED)


class ReceiveState(Enum):
    EXPECTING = "expecting"  # registered by a job, waiting for the sender's open
    RECEIVING = "receiving"  # accepted; chunks flowing (also across reconnects)
    DONE = "done"
    FAILED = "failed"


class ReceiverFlow:
    """The receiving side of one transfer: validates everything the sender says."""

    def __init__(
        self,
        transfer_id: UUID,
        job_id: str,
        direction: Direction,
        *,
        max_size: int,
        limit_label: str = "files",
        expected_size: int | None = None,
        window: int = DEFAULT_WINDOW_BYTES,
    ) -> None:
        if not MIN_WINDOW_BYTES <= window <= MAX_WINDOW_BYTES:
            raise ValueError(f"window must be between {MIN_WINDOW_BYTES} and {MAX_WINDOW_BYTES}.")
        self.transfer_id = transfer_id
        self.job_id = job_id
        self.direction: Direction = direction
        self.max_size = max_size
        self.limit_label = limit_label
        self.expected_size = expected_size
        self.window = window
        self.ack_every = window // ACKS_PER_WINDOW
        self.state = ReceiveState.EXPECTING
        self.size: int | None = None  # declared by the first open
        self.received = 0
        self.durable = 0
        self.syncing = False
        self.failure = ""
        self.result: TransferDone | None = None

    def _expect(self, *states: ReceiveState, doing: str) -> None:
        if self.state not in states:
            raise ProtocolError(
                f"Transfer {self.transfer_id}: {doing} is not valid while {self.state.value}."
            )

    def check_open(self, message: TransferOpen) -> int:
        """Validate an open (first or resumed); returns the declared size."""
        self._expect(ReceiveState.EXPECTING, ReceiveState.RECEIVING, doing="an open")
        if message.job_id != self.job_id or message.direction != self.direction:
            raise ProtocolError(
                f"Transfer {self.transfer_id} belongs to job {self.job_id} ({self.direction}), "
                f"not to job {message.job_id} ({message.direction})."
            )
        if self.size is not None and message.size != self.size:
            raise TransferFailed(
                f"The sender resumed with a size of {message.size} bytes after declaring "
                f"{self.size}; the file changed."
            )
        if message.size > self.max_size:
            raise TransferFailed(
                f"The file is {format_size(message.size)}, over the "
                f"{format_size(self.max_size)} limit for {self.limit_label}."
            )
        if self.expected_size is not None and message.size != self.expected_size:
            raise TransferFailed(
                f"The sender declared {message.size} bytes where {self.expected_size} were expected."
            )
        return message.size

    def accept(self, size: int, held: int) -> TransferAccept:
        """Start (or resume) receiving with `held` bytes already durable on this side."""
        self._expect(ReceiveState.EXPECTING, ReceiveState.RECEIVING, doing="an accept")
        if held > size:
            raise ValueError("The receiver holds more bytes than the sender declared.")
        self.state = ReceiveState.RECEIVING
        self.size = size
        self.received = self.durable = held
        return TransferAccept(transfer_id=self.transfer_id, offset=held, window=self.window)

    def chunk(self, header: ChunkHeader, length: int) -> None:
        """Validate a chunk before it is written (ProtocolError or TransferFailed)."""
        self._expect(ReceiveState.RECEIVING, doing="a chunk")
        if length == 0:
            # A sender never needs one; a stream of them would cost a disk write each for nothing.
            raise ProtocolError(f"Transfer {self.transfer_id}: an empty chunk.")
        if header.offset != self.received:
            raise ProtocolError(
                f"Transfer {self.transfer_id}: chunk at offset {header.offset}, expected "
                f"{self.received}."
            )
        assert self.size is not None  # set by accept, the only way into RECEIVING
        if self.received + length > self.size:
            raise TransferFailed(f"The sender sent more than the {self.size} bytes it declared.")
        if self.received + length - self.durable > self.window:
            raise ProtocolError(
                f"Transfer {self.transfer_id}: the sender ran more than its window of "
                f"{self.window} bytes ahead of what was acknowledged."
            )
        self.received += length

    def sync_due(self) -> int | None:
        """The offset to fsync and acknowledge now, or None (not enough new bytes, or busy)."""
        if self.syncing or self.state is not ReceiveState.RECEIVING:
            return None
        if self.received - self.durable < self.ack_every:
            return None
        self.syncing = True
        return self.received

    def synced(self, offset: int) -> TransferAck | None:
        """Bytes up to `offset` are on disk: the ack to send (None once the transfer is over)."""
        self.syncing = False
        if self.state is not ReceiveState.RECEIVING:
            return None
        self.durable = max(self.durable, offset)
        return TransferAck(transfer_id=self.transfer_id, offset=self.durable)

    def end(self, message: TransferEnd) -> None:
        self._expect(ReceiveState.RECEIVING, doing="an end")
        if message.size != self.size or self.received != self.size:
            raise TransferFailed(
                f"The sender ended after {self.received} bytes of a declared {self.size}, "
                f"claiming {message.size}."
            )

    def done(self, sha256: str) -> TransferDone:
        self._expect(ReceiveState.RECEIVING, doing="finishing")
        self.state = ReceiveState.DONE
        self.result = TransferDone(transfer_id=self.transfer_id, size=self.received, sha256=sha256)
        return self.result

    def fail(self, reason: str) -> TransferAbort:
        self.state = ReceiveState.FAILED
        self.failure = _reason(reason)
        return TransferAbort(transfer_id=self.transfer_id, reason=self.failure)

    def aborted(self, message: TransferAbort) -> None:
        self._expect(ReceiveState.EXPECTING, ReceiveState.RECEIVING, doing="an abort")
        self.state = ReceiveState.FAILED
        self.failure = message.reason

    @property
    def finished(self) -> bool:
        return self.state in (ReceiveState.DONE, ReceiveState.FAILED)


def _reason(text: str) -> str:
    """A reason that fits `TransferAbort`: one printable line of at most 1024 characters."""
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip() or "Transfer failed."
    return cleaned[:1024]
