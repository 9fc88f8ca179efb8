"""The transfer wire format and the two state machines: everything a peer may get wrong."""

import json
import struct
import uuid
from typing import Any

import pytest

from tether.protocol import MAX_FRAME_BYTES, ProtocolError
from tether.protocol.transfer import (
    CHUNK_HEADER_BYTES,
    MAX_CHUNK_PAYLOAD,
    MIN_WINDOW_BYTES,
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
    decode_chunk,
    encode_chunk,
    format_size,
    parse_transfer_message,
    transfer_id_for,
)

TID = uuid.UUID("12345678-1234-5678-1234-567812345678")
SHA = "a" * 64


def test_chunk_round_trips_with_a_26_byte_header() -> None:
    frame = encode_chunk(TID, 7 << 40, b"payload")
    assert len(frame) == CHUNK_HEADER_BYTES + 7 == 26 + 7
    header, payload = decode_chunk(frame)
    assert header == ChunkHeader(TID, 7 << 40)
    assert bytes(payload) == b"payload"


def test_a_full_chunk_fits_one_frame() -> None:
    frame = encode_chunk(TID, 0, bytes(MAX_CHUNK_PAYLOAD))
    assert len(frame) == MAX_FRAME_BYTES
    with pytest.raises(ValueError, match="at most"):
        encode_chunk(TID, 0, bytes(MAX_CHUNK_PAYLOAD + 1))


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"", "shorter than"),
        (encode_chunk(TID, 0, b"")[:-1], "shorter than"),
        (b"\x02" + encode_chunk(TID, 0, b"x")[1:], "format version 2"),
        (b"\x01\x07" + encode_chunk(TID, 0, b"x")[2:], "unknown kind 7"),
        (encode_chunk(TID, 0, b"") + bytes(MAX_CHUNK_PAYLOAD + 1), "over the"),
    ],
)
def test_malformed_chunks_are_refused(frame: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode_chunk(frame)


def test_header_is_big_endian_version_kind_id_offset() -> None:
    frame = encode_chunk(TID, 0x0102030405060708, b"")
    assert frame == struct.pack(">BB16sQ", 1, 1, TID.bytes, 0x0102030405060708)


def open_dict(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "transfer.open",
        "transfer_id": str(TID),
        "job_id": "job-1",
        "direction": "get",
        "size": 10,
        "path": "/var/log/syslog",
    }
    message.update(changes)
    return message


def test_every_control_message_round_trips() -> None:
    for message in (
        TransferOpen(transfer_id=TID, job_id="j", direction="put", size=5),
        TransferAccept(transfer_id=TID, offset=3, window=MIN_WINDOW_BYTES),
        TransferAck(transfer_id=TID, offset=4),
        TransferEnd(transfer_id=TID, size=5, sha256=SHA),
        TransferDone(transfer_id=TID, size=5, sha256=SHA),
        TransferAbort(transfer_id=TID, reason="Disk full."),
    ):
        assert parse_transfer_message(message.model_dump_json()) == message


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"sneaky": 1}, "sneaky"),
        ({"size": "10"}, "size"),
        ({"size": True}, "size"),
        ({"size": 10.0}, "size"),
        ({"size": -1}, "size"),
        ({"transfer_id": "../../etc"}, "transfer_id"),
        ({"direction": "sideways"}, "direction"),
        ({"job_id": ""}, "job_id"),
        ({"path": "a\nb"}, "path"),
        ({"type": "transfer.nope"}, "type"),
    ],
)
def test_bad_control_messages_are_refused_and_named(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse_transfer_message(json.dumps(open_dict(**changes)))


def test_sha_and_window_are_bounded() -> None:
    with pytest.raises(ProtocolError, match="sha256"):
        parse_transfer_message(
            json.dumps(
                {"type": "transfer.end", "transfer_id": str(TID), "size": 1, "sha256": "A" * 64}
            )
        )
    with pytest.raises(ProtocolError, match="window"):
        parse_transfer_message(
            json.dumps(
                {"type": "transfer.accept", "transfer_id": str(TID), "offset": 0, "window": 1}
            )
        )
    with pytest.raises(ProtocolError, match="binary"):
        parse_transfer_message(b"{}")


def test_transfer_ids_are_stable_per_job() -> None:
    assert transfer_id_for("job-1") == transfer_id_for("job-1") != transfer_id_for("job-2")


def test_sizes_read_as_users_expect() -> None:
    assert format_size(5 * 1024**3) == "5.0 GiB"
    assert format_size(3 * 1024**2 // 2) == "1.5 MiB"
    assert format_size(900) == "900 bytes"


# ---- sender -------------------------------------------------------------------------------------


def sender(size: int = 10 * 1024 * 1024, chunk: int = 512 * 1024) -> SenderFlow:
    return SenderFlow(TID, "job-1", "get", size, chunk_bytes=chunk)


def accept(offset: int = 0, window: int = MIN_WINDOW_BYTES) -> TransferAccept:
    return TransferAccept(transfer_id=TID, offset=offset, window=window)


def test_sender_runs_at_most_a_window_ahead() -> None:
    flow = sender()
    flow.open()
    flow.accepted(accept())
    while (length := flow.credit()) > 0:
        flow.sent(flow.next_offset, length)
    assert flow.in_flight == MIN_WINDOW_BYTES
    flow.acknowledged(TransferAck(transfer_id=TID, offset=1024 * 1024))
    assert flow.credit() == 512 * 1024


def test_sender_refuses_what_comes_out_of_turn() -> None:
    flow = sender()
    with pytest.raises(ProtocolError, match="accept is not valid while idle"):
        flow.accepted(accept())
    flow.open()
    with pytest.raises(ProtocolError, match="ack is not valid while opening"):
        flow.acknowledged(TransferAck(transfer_id=TID, offset=0))
    with pytest.raises(ProtocolError, match="holds"):
        flow.accepted(accept(offset=flow.size + 1))
    flow.accepted(accept())
    flow.sent(0, 1000)
    with pytest.raises(ProtocolError, match="outside"):
        flow.acknowledged(TransferAck(transfer_id=TID, offset=1001))
    with pytest.raises(ProtocolError, match="done is not valid while sending"):
        flow.done(TransferDone(transfer_id=TID, size=flow.size, sha256=SHA), SHA)
    with pytest.raises(ValueError, match="before every byte"):
        flow.end(SHA)


def test_sender_pauses_and_reopens_from_the_receivers_offset() -> None:
    flow = sender(size=100, chunk=10)
    flow.open()
    flow.accepted(accept())
    flow.sent(0, 10)
    flow.pause()
    assert flow.state is SendState.PAUSED
    flow.open()
    assert flow.accepted(accept(offset=10)) == 10
    assert flow.next_offset == flow.acked == 10


def test_sender_rejects_a_done_for_other_bytes() -> None:
    flow = sender(size=10, chunk=10)
    flow.open()
    flow.accepted(accept())
    flow.sent(0, 10)
    flow.end(SHA)
    with pytest.raises(TransferFailed, match="not the 10 bytes"):
        flow.done(TransferDone(transfer_id=TID, size=10, sha256="b" * 64), SHA)
    assert flow.state is SendState.FAILED


# ---- receiver -----------------------------------------------------------------------------------


def receiver(max_size: int = 1 << 30) -> ReceiverFlow:
    return ReceiverFlow(TID, "job-1", "get", max_size=max_size, limit_label="retrieved files")


def opened(flow: ReceiverFlow, size: int = 100) -> None:
    declared = flow.check_open(
        TransferOpen(transfer_id=TID, job_id="job-1", direction="get", size=size)
    )
    flow.accept(declared, 0)


def test_receiver_checks_offsets_sizes_and_the_window() -> None:
    flow = receiver()
    with pytest.raises(ProtocolError, match="chunk is not valid while expecting"):
        flow.chunk(ChunkHeader(TID, 0), 10)
    opened(flow, size=100)
    flow.chunk(ChunkHeader(TID, 0), 10)
    with pytest.raises(ProtocolError, match="offset 20, expected 10"):
        flow.chunk(ChunkHeader(TID, 20), 10)
    with pytest.raises(TransferFailed, match="more than the 100 bytes it declared"):
        flow.chunk(ChunkHeader(TID, 10), 91)
    with pytest.raises(ProtocolError, match="empty chunk"):
        flow.chunk(ChunkHeader(TID, 10), 0)


def test_receiver_refuses_a_sender_beyond_its_window() -> None:
    flow = receiver()
    opened(flow, size=10 * 1024 * 1024)
    flow.chunk(ChunkHeader(TID, 0), flow.window)
    with pytest.raises(ProtocolError, match="window"):
        flow.chunk(ChunkHeader(TID, flow.window), 1)


def test_receiver_enforces_the_cap_and_the_job() -> None:
    flow = receiver(max_size=4 * 1024**3)
    with pytest.raises(
        TransferFailed, match=r"The file is 5\.0 GiB, over the 4\.0 GiB limit for retrieved files\."
    ):
        flow.check_open(
            TransferOpen(transfer_id=TID, job_id="job-1", direction="get", size=5 * 1024**3)
        )
    with pytest.raises(ProtocolError, match="belongs to job job-1"):
        flow.check_open(TransferOpen(transfer_id=TID, job_id="job-2", direction="get", size=1))
    with pytest.raises(ProtocolError, match="belongs to job"):
        flow.check_open(TransferOpen(transfer_id=TID, job_id="job-1", direction="put", size=1))


def test_receiver_acks_after_each_eighth_of_a_window() -> None:
    flow = receiver()
    opened(flow, size=10 * 1024 * 1024)
    flow.chunk(ChunkHeader(TID, 0), flow.ack_every - 1)
    assert flow.sync_due() is None
    flow.chunk(ChunkHeader(TID, flow.ack_every - 1), 1)
    assert flow.sync_due() == flow.ack_every
    assert flow.sync_due() is None  # one fsync at a time
    ack = flow.synced(flow.ack_every)
    assert ack == TransferAck(transfer_id=TID, offset=flow.ack_every)


def test_receiver_end_must_match_what_arrived() -> None:
    flow = receiver()
    opened(flow, size=100)
    flow.chunk(ChunkHeader(TID, 0), 50)
    with pytest.raises(TransferFailed, match="after 50 bytes of a declared 100"):
        flow.end(TransferEnd(transfer_id=TID, size=100, sha256=SHA))
    flow.chunk(ChunkHeader(TID, 50), 50)
    flow.end(TransferEnd(transfer_id=TID, size=100, sha256=SHA))
    assert flow.done(SHA).size == 100
    assert flow.state is ReceiveState.DONE
    with pytest.raises(ProtocolError, match="chunk is not valid while done"):
        flow.chunk(ChunkHeader(TID, 100), 1)


def test_a_resumed_open_must_keep_its_size() -> None:
    flow = receiver()
    opened(flow, size=100)
    with pytest.raises(TransferFailed, match="the file changed"):
        flow.check_open(TransferOpen(transfer_id=TID, job_id="job-1", direction="get", size=101))


def test_abort_reasons_are_made_printable_and_bounded() -> None:
    flow = receiver()
    abort = flow.fail("bad\nthing " + "x" * 2000)
    assert "\n" not in abort.reason
    assert len(abort.reason) == 1024
