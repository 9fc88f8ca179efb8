"""WebSocket close codes the platform uses to tell an agent why it was sent away."""

from enum import IntEnum


class CloseCode(IntEnum):
    """Application close codes (4000-4999 are reserved for applications by RFC 6455)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    BAD_FRAME = 4000
    UNKNOWN_CERTIFICATE = 4001
    UNSUPPORTED_VERSION = 4002
    REVOKED = 4003
    HELLO_TIMEOUT = 4004
    REPLACED = 4005
    IDLE = 4006

    @property
    def is_final(self) -> bool:
        """True when reconnecting cannot help, so the agent must stop instead of retrying."""
        return self in {
            CloseCode.UNKNOWN_CERTIFICATE,
            CloseCode.REVOKED,
            CloseCode.UNSUPPORTED_VERSION,
        }
