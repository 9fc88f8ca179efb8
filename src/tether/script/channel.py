"""The local channel between a running script and its agent, declared once for both sides.

JSON lines over a Unix domain socket in the run's private directory (TCP on 127.0.0.1 on
Windows). A request is `{"id": n, "method": name, "args": {...}}`; its reply is
`{"id": n, "result": ...}` or `{"id": n, "error": sentence}`.

On connecting, the agent first sends `{"challenge": 64 hex digits}`, fresh per connection; the
first request must be `hello` with `proof`, the HMAC-SHA256 of that challenge under the run's
secret (`hello_proof`), or the agent closes the connection. The secret itself never crosses the
channel, so whoever can watch loopback traffic on Windows learns nothing it can replay
(docs/adr/0041).

Standard library only: every script imports this, and a script should start in milliseconds, not
wait for pydantic to load.
"""

import hashlib
import hmac
import json
import math
import re
from typing import Any

# Where the child finds its agent, and what it must say first. Set by the agent per run.
ENV_ADDRESS = "TETHER_SCRIPT_CHANNEL"
ENV_SECRET = "TETHER_SCRIPT_SECRET"
ENV_AGENT_PID = "TETHER_AGENT_PID"

MAX_LINE_BYTES = 1024 * 1024

HELLO = "hello"
CHALLENGE = "challenge"
CHALLENGE_HEX_CHARS = 64
# Binds a proof to this use of the secret, so it means nothing anywhere else.
_PROOF_CONTEXT = b"tether script channel hello v1\x00"
PARAMS = "params"
ROW = "row"
LOG = "log"

# Calls the agent hands on to its services (`tether.agent.scripts.ScriptServices`), with their
# argument names; every argument is a bounded string. Adding a service call is one entry here,
# one method on ScriptServices and one function in `tether.script`.
SERVICE_CALLS: dict[str, tuple[str, ...]] = {
    "upload": ("path",),
    "download": ("name", "dest"),
    "isolate": ("mode",),
    "unisolate": (),
    "isolation_status": (),
}
MAX_ARG_CHARS = 4096

# The same bounds as the row model on the wire (tether.protocol's JobOutput fields), so a row
# the agent accepts here is one it can send on; restated because this module must not load pydantic.
MAX_ROW_FIELDS = 64
MAX_FIELD_NAME_CHARS = 64
MAX_FIELD_VALUE_CHARS = 4096
MAX_LOG_CHARS = 64 * 1024
# Rows end up in databases and spreadsheets: integers stay within 64 bits.
_INT_BOUND = 2**63

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Scalar = str | int | float | bool | None


class ChannelFormatError(ValueError):
    """A line on the channel is not a well-formed message; the message says what is wrong."""


def _refuse_constant(name: str) -> Any:
    raise ChannelFormatError(f"{name} is not a JSON number.")


def encode(message: dict[str, Any]) -> bytes:
    """One message as a JSON line; NaN and infinities are refused, not written."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one JSON line into an object, or raise ChannelFormatError with a sentence."""
    try:
        value = json.loads(line, parse_constant=_refuse_constant)
    except ChannelFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON, bad UTF-8 and integers past the digit limit.
        raise ChannelFormatError("The message is not valid JSON.") from exc
    if not isinstance(value, dict):
        raise ChannelFormatError("The message is not a JSON object.")
    return value


def check_row(fields: object) -> dict[str, Scalar]:
    """The fields of one result row, checked; ChannelFormatError says which field is wrong."""
    if not isinstance(fields, dict):
        raise ChannelFormatError("A row must be an object of field names to values.")
    if not fields:
        raise ChannelFormatError("A row needs at least one field.")
    if len(fields) > MAX_ROW_FIELDS:
        raise ChannelFormatError(f"A row has at most {MAX_ROW_FIELDS} fields.")
    for name, value in fields.items():
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= MAX_FIELD_NAME_CHARS
            or _CONTROL.search(name)
        ):
            raise ChannelFormatError(
                f"Row field names are 1 to {MAX_FIELD_NAME_CHARS} printable characters."
            )
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not -_INT_BOUND <= value < _INT_BOUND:
                raise ChannelFormatError(f"Row field {name!r} holds an integer past 64 bits.")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ChannelFormatError(f"Row field {name!r} holds a number that is not finite.")
        elif isinstance(value, str):
            if len(value) > MAX_FIELD_VALUE_CHARS:
                raise ChannelFormatError(
                    f"Row field {name!r} is longer than {MAX_FIELD_VALUE_CHARS} characters."
                )
        else:
            raise ChannelFormatError(
                f"Row field {name!r} must be a string, number, boolean or null, not {type(value).__name__}."
            )
    return fields


def hello_proof(secret: str, challenge: str) -> str:
    """What `hello` carries: HMAC-SHA256 over the agent's challenge, keyed with the run's secret."""
    message = _PROOF_CONTEXT + challenge.encode("ascii", errors="replace")
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def read_challenge(line: bytes) -> str:
    """The challenge in the agent's first line; ChannelFormatError when it is not one."""
    message = decode(line)
    challenge = message.get(CHALLENGE)
    if (
        not isinstance(challenge, str)
        or len(challenge) != CHALLENGE_HEX_CHARS
        or not all(c in "0123456789abcdef" for c in challenge)
    ):
        raise ChannelFormatError("The agent's first line is not a challenge.")
    return challenge


def unix_address(path: str) -> str:
    return f"unix:{path}"


def tcp_address(port: int) -> str:
    return f"tcp:127.0.0.1:{port}"


def parse_address(address: str) -> tuple[str, str | tuple[str, int]]:
    """("unix", path) or ("tcp", (host, port)); ChannelFormatError for anything else."""
    kind, _, rest = address.partition(":")
    if kind == "unix" and rest:
        return "unix", rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host == "127.0.0.1" and port.isdigit():
            return "tcp", (host, int(port))
    raise ChannelFormatError(f"{address!r} is not a script channel address.")
