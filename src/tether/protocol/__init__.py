"""Wire models and action declarations shared by the agent, the platform, the CLI and the UI.

Everything an agent and the platform say to each other is declared here once. This package
depends on the standard library and pydantic only.
"""

from tether.protocol.actions import ACTIONS, ActionSpec, NoopArgs, NoopResult, action
from tether.protocol.closecodes import CloseCode
from tether.protocol.enrollment import (
    EnrollmentToken,
    EnrollRequest,
    EnrollResponse,
    InvalidEnrollmentToken,
)
from tether.protocol.errors import ProtocolError
from tether.protocol.messages import (
    AgentMessage,
    Heartbeat,
    Hello,
    JobRequest,
    JobStatus,
    OsInfo,
    PlatformMessage,
    Policy,
    Welcome,
    parse_agent_message,
    parse_platform_message,
)
from tether.protocol.permissions import (
    MFA_REQUIRED_ROLES,
    ROLE_PERMISSIONS,
    Permission,
    Role,
    permissions_of,
)
from tether.protocol.transfer import (
    ChunkHeader,
    TransferAbort,
    TransferAccept,
    TransferAck,
    TransferDone,
    TransferEnd,
    TransferFailed,
    TransferMessage,
    TransferOpen,
    decode_chunk,
    encode_chunk,
    parse_transfer_message,
    transfer_id_for,
)
from tether.protocol.version import MAX_FRAME_BYTES, PROTOCOL_VERSION

__all__ = [
    "ACTIONS",
    "MAX_FRAME_BYTES",
    "MFA_REQUIRED_ROLES",
    "PROTOCOL_VERSION",
    "ROLE_PERMISSIONS",
    "ActionSpec",
    "AgentMessage",
    "ChunkHeader",
    "CloseCode",
    "EnrollRequest",
    "EnrollResponse",
    "EnrollmentToken",
    "Heartbeat",
    "Hello",
    "InvalidEnrollmentToken",
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
    "TransferAbort",
    "TransferAccept",
    "TransferAck",
    "TransferDone",
    "TransferEnd",
    "TransferFailed",
    "TransferMessage",
    "TransferOpen",
    "Welcome",
    "action",
    "decode_chunk",
    "encode_chunk",
    "parse_agent_message",
    "parse_platform_message",
    "parse_transfer_message",
    "permissions_of",
    "transfer_id_for",
]
