"""The agent's watch for a CA rotation, without cryptography until one is under way.

Every connection hands the platform's certificate to the CA rollover (tether.agent.ca_rollover),
which parses it with cryptography: about 9 MiB of resident memory the idle agent otherwise never
loads (docs/adr/0052). A rotation shows in the certificate as an extension whose identifier's DER
bytes must then appear in it, and on the agent as a marker file while it moves; when neither is
there, nothing is under way and the certificate need not be parsed at all. A false "maybe" only
costs the parse; a rotation is never missed, since its extension cannot be there without its
identifier's bytes.
"""

from typing import TYPE_CHECKING

from tether.agent.state import StateDir
from tether.protocol.ca_rollover import NEXT_CA_OID, CaCertificate, CaRekey

if TYPE_CHECKING:
    from tether.agent.ca_rollover import CaRollover

# Written by the rollover when a new certificate was taken: the CA to keep once connected with it.
MARKER = "ca-rollover.json"


class RolloverRefused(Exception):
    """A `ca.certificate` this agent will not take; the message is one sentence."""


def oid_content(dotted: str) -> bytes:
    """The DER content octets of an object identifier (X.690 8.19)."""
    arcs = [int(part) for part in dotted.split(".")]
    numbers = [arcs[0] * 40 + arcs[1], *arcs[2:]]
    out = bytearray()
    for number in numbers:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


_NEXT_CA = oid_content(NEXT_CA_OID)


class CaWatch:
    """`connected` and `accept` of the CA rollover, which is imported on first need."""

    def __init__(self, state: StateDir) -> None:
        self._state = state

    def _rollover(self) -> "CaRollover":
        from tether.agent.ca_rollover import CaRollover

        return CaRollover(self._state)

    def under_way(self, server_der: bytes) -> bool:
        """Whether the platform's certificate may name a next CA or this agent is moving."""
        return _NEXT_CA in server_der or (self._state.root / MARKER).is_file()

    def connected(self, server_der: bytes | None) -> CaRekey | None:
        if server_der is None or not self.under_way(server_der):
            return None
        return self._rollover().connected(server_der)

    def accept(self, message: CaCertificate, server_der: bytes | None) -> None:
        self._rollover().accept(message, server_der)
