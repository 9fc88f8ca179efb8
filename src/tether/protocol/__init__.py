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
    FINAL_AGENT_STATES,
    MAX_OUTPUT_TEXT,
    AgentMessage,
    Heartbeat,
    Hello,
    JobAck,
    JobCancel,
    JobOutput,
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
from tether.protocol.version import MAX_FRAME_BYTES, PROTOCOL_VERSION

__all__ = [
    "ACTIONS",
    "FINAL_AGENT_STATES",
    "MAX_FRAME_BYTES",
    "MAX_OUTPUT_TEXT",
    "MFA_REQUIRED_ROLES",
    "PROTOCOL_VERSION",
    "ROLE_PERMISSIONS",
    "ActionSpec",
    "AgentMessage",
    "CloseCode",
    "EnrollRequest",
    "EnrollResponse",
    "EnrollmentToken",
    "Heartbeat",
    "Hello",
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
    "Welcome",
    "action",
    "parse_agent_message",
    "parse_platform_message",
    "permissions_of",
]
