"""Speaking to agents of the previous protocol version during a rollout.

The platform is upgraded first and its agents later, so for a while it serves agents that say
`OLDEST_PROTOCOL_VERSION` in their hello. To them it sends each message in the shape their
version reads: `ADDITIONS` lists what the platform's messages gained since, and `frame_for`
leaves it out. Every entry says what leaving it out means for the older agent, because that is
what an operator loses until the agent is upgraded.
"""

import json
from dataclasses import dataclass
from typing import Any, Literal

from tether.protocol.action_names import FILES_PUT
from tether.protocol.version import OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION


@dataclass(frozen=True)
class Addition:
    """A field a platform message gained at protocol version `version`.

    For a `job` message, `action` names the action and `field` one of its arguments. `dropped`
    says when a frame for an older agent leaves the field out: `always` (the older agent has no
    use for it), or `when_null` (it is left out only while it holds its null default, so the
    older agent does the same; a value it would ignore is sent, and the older agent refuses the
    job in its own words rather than quietly doing something else than was asked).
    """

    version: int
    message: str
    field: str
    dropped: Literal["always", "when_null"]
    action: str | None = None
    meaning: str = ""
    # For `when_null`: why a job holding a value is not sent to an older agent, in the words of
    # a job's failure ("Not sent: ...").
    refusal: str = ""


ADDITIONS: tuple[Addition, ...] = (
    Addition(
        version=2,
        message="policy",
        field="isolation_allow",
        dropped="always",
        meaning=(
            "A version-1 agent is not given the admin isolation allowlist: agents of that line "
            "have no isolation backend, so isolation jobs fail on them and nothing is lost; "
            "agents built between that line and the bump lose the allowlist for isolation a "
            "script asks for until they are upgraded."
        ),
    ),
    Addition(
        version=2,
        message="job",
        action=FILES_PUT,
        field="mode",
        dropped="when_null",
        meaning=(
            "A deploy without a mode reaches a version-1 agent as before; a deploy with one "
            "(the CLI sends the local file's mode) is not sent to it, since it would be "
            "written 0600 whatever was asked."
        ),
        refusal="cannot set a deployed file's mode",
    ),
    Addition(
        # Added within version 2 (docs/adr/0049): agents of version 2 built before it ignore
        # an unknown top-level welcome field (ADR 0046), so no bump was needed.
        version=2,
        message="welcome",
        field="agent_addresses",
        dropped="always",
        meaning=(
            "A version-1 agent is not given the platform's list of agent addresses: it keeps "
            "dialling the one address it was enrolled with."
        ),
    ),
)


def speaks(version: int) -> bool:
    """True when the platform can serve an agent of protocol `version`."""
    return OLDEST_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION


def unsendable(action: str, args: dict[str, Any], version: int) -> str | None:
    """Why a job of `action` with `args` must not go to an agent of `version` (it asks for
    something that version cannot do), or None when it may."""
    for addition in ADDITIONS:
        if (
            addition.version > version
            and addition.message == "job"
            and addition.action == action
            and args.get(addition.field) is not None
        ):
            return (
                f"this host's agent speaks protocol version {version}, which "
                f"{addition.refusal}; upgrade the agent first."
            )
    return None


def frame_for(frame: str, version: int) -> str:
    """The JSON control frame `frame` (current version) in the shape an agent of `version`
    reads; the same string for a current agent, so they pay nothing."""
    if version >= PROTOCOL_VERSION:
        return frame
    message = json.loads(frame)
    if not isinstance(message, dict) or not _downgrade(message, version):
        return frame
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def _downgrade(message: dict[str, Any], version: int) -> bool:
    """Leave out of `message` what an agent of `version` does not read; True if it changed."""
    changed = False
    kind = message.get("type")
    for addition in ADDITIONS:
        if addition.version <= version or addition.message != kind:
            continue
        holder: Any = message
        if addition.action is not None:
            if message.get("action") != addition.action:
                continue
            holder = message.get("args")
        if not isinstance(holder, dict) or addition.field not in holder:
            continue
        if addition.dropped == "when_null" and holder[addition.field] is not None:
            continue
        del holder[addition.field]
        changed = True
    return changed


def version_refusal(version: int) -> str | None:
    """The sentence refusing an agent of protocol `version`, or None when it is served."""
    if speaks(version):
        return None
    if version > PROTOCOL_VERSION:
        return (
            f"This platform speaks protocol version {PROTOCOL_VERSION}, not {version}; "
            "upgrade the platform before its agents."
        )
    return (
        f"This platform speaks protocol version {PROTOCOL_VERSION} (and "
        f"{OLDEST_PROTOCOL_VERSION} during an upgrade), not {version}; upgrade the agent."
    )
