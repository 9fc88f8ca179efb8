"""Errors raised while reading what the other side sent."""

from tether.errors import TetherError


class ProtocolError(TetherError):
    """A frame or token that does not follow the Tether protocol."""
