"""WebSocket close codes the platform uses to tell an agent why it was sent away."""

import re
from enum import IntEnum

from tether.protocol.text import fit_bytes

# RFC 6455 section 5.5: a control frame's payload is at most 125 bytes, two of them the code.
MAX_CLOSE_REASON_BYTES = 123


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
    # The connection spent its frame, byte or CPU budget; the reason says when to come back
    # (`retry_after`), and the platform refuses the host until then.
    OVER_BUDGET = 4007

    @property
    def is_final(self) -> bool:
        """True when reconnecting cannot help, so the agent must stop instead of retrying."""
        return self in {
            CloseCode.UNKNOWN_CERTIFICATE,
            CloseCode.REVOKED,
            CloseCode.UNSUPPORTED_VERSION,
        }


_RETRY_AFTER = re.compile(r"[Rr]econnect after (\d{1,5}) s\.$")


def close_reason(text: str) -> str:
    """`text` made fit for a close frame: escaped, at most 123 bytes of UTF-8."""
    return fit_bytes(text, MAX_CLOSE_REASON_BYTES)


def retry_reason(sentence: str, seconds: int) -> str:
    """A close reason that ends by telling the agent when it may reconnect."""
    tail = f" Reconnect after {seconds} s."
    return fit_bytes(sentence, MAX_CLOSE_REASON_BYTES - len(tail)).rstrip() + tail


def retry_after(reason: str) -> int | None:
    """The seconds a close reason made by `retry_reason` asks the agent to wait, if any."""
    found = _RETRY_AFTER.search(reason)
    return int(found.group(1)) if found else None
