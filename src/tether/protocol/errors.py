"""Errors raised while reading what the other side sent."""

from collections.abc import Mapping

from tether.errors import TetherError


class ProtocolError(TetherError):
    """A frame or token that does not follow the Tether protocol.

    The message is one bounded sentence safe to log and show; `evidence` holds what identifies
    the offending input for a record (bounded excerpts with length and SHA-256, never the input).
    """

    def __init__(self, message: str, *, evidence: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.evidence: dict[str, object] = dict(evidence or {})
