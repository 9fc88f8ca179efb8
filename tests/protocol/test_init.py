"""The public surface of `tether.protocol`: the agent, the platform and the CLI all build on it."""

import tether.protocol

EXPECTED = [
    "ACTIONS",
    "FINAL_AGENT_STATES",
    "FINAL_STATES",
    "STATES",
    "UNFINISHED",
    "AgentJobState",
    "InvalidTransition",
    "JobState",
    "can_move",
    "check_move",
    "is_final",
    "MAX_OUTPUT_TEXT",
    "MAX_SCRIPT_BYTES",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "MFA_REQUIRED_ROLES",
    "ROLE_PERMISSIONS",
    "ActionSpec",
    "AgentMessage",
    "CloseCode",
    "EnrollRequest",
    "EnrollResponse",
    "EnrollmentToken",
    "Heartbeat",
    "Hello",
    "IsolationReport",
    "InvalidEnrollmentToken",
    "JobAck",
    "JobCancel",
    "JobOutput",
    "JobRequest",
    "JobStatus",
    "NoopArgs",
    "NoopResult",
    "OsInfo",
    "Permission",
    "PlatformMessage",
    "Policy",
    "ProtocolError",
    "Role",
    "ScriptRunArgs",
    "ScriptRunResult",
    "Welcome",
    "ChunkHeader",
    "TransferAbort",
    "TransferAccept",
    "TransferAck",
    "TransferDone",
    "TransferEnd",
    "TransferFailed",
    "TransferGrant",
    "TransferMessage",
    "TransferOpen",
    "TransferRequest",
    "decode_chunk",
    "encode_chunk",
    "parse_transfer_message",
    "transfer_id_for",
    "action",
    "parse_agent_message",
    "parse_platform_message",
    "permissions_of",
    "DEFAULT_LIST_LIMIT",
    "MAX_LIST_LIMIT",
    "MAX_PATH",
    "FileEntry",
    "FileGetArgs",
    "FileGetResult",
    "FileHash",
    "FileHashArgs",
    "FileList",
    "FileListArgs",
    "FilePutArgs",
    "FilePutResult",
    "MAX_COMMAND_LINE",
    "MAX_PROCESSES",
    "KilledProcess",
    "ProcessInfo",
    "ProcessKillArgs",
    "ProcessKillResult",
    "ProcessList",
    "ProcessListArgs",
    "ENDPOINT_TEXT",
    "TRUNCATION_MARKER",
    "clip",
    "escape_text",
    "safe_text",
    "MAX_RESULT_BYTES",
    "EntryType",
    "HashAlgorithm",
    "HashUnavailable",
    "KillOutcome",
]


def test_public_surface_is_pinned() -> None:
    # A change here is a protocol change: update this list on purpose, with docs/protocol.md.
    assert sorted(tether.protocol.__all__) == sorted(EXPECTED)
    assert len(set(tether.protocol.__all__)) == len(tether.protocol.__all__)


def test_every_exported_name_exists() -> None:
    for name in tether.protocol.__all__:
        assert hasattr(tether.protocol, name), name


def test_version_and_limits() -> None:
    assert tether.protocol.PROTOCOL_VERSION == 1
    assert tether.protocol.MAX_FRAME_BYTES == 1024 * 1024
    assert tether.protocol.MAX_RESULT_BYTES < tether.protocol.MAX_FRAME_BYTES
