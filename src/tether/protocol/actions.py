"""Endpoint actions, each declared once: name, argument and result models, permission, limits.

The agent looks up its handler by name, the platform validates arguments against the same model
before persisting a job, and the CLI and UI list what exists from here.
"""

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from tether.protocol.action_names import (
    AGENT_UPGRADE,
    FILES_GET,
    FILES_HASH,
    FILES_LIST,
    FILES_PUT,
    ISOLATION_ISOLATE,
    ISOLATION_RELEASE,
    ISOLATION_STATUS,
    PROCESSES_KILL,
    PROCESSES_LIST,
    SCRIPT_RUN,
    SYSTEM_NOOP,
)
from tether.protocol.filesystem import (
    FileGetArgs,
    FileGetResult,
    FileHash,
    FileHashArgs,
    FileList,
    FileListArgs,
    FilePutArgs,
    FilePutResult,
)
from tether.protocol.isolation import IsolateArgs, IsolationStatus, ReleaseArgs
from tether.protocol.permissions import TIERS, Permission, Tier
from tether.protocol.processes import (
    ProcessKillArgs,
    ProcessKillResult,
    ProcessList,
    ProcessListArgs,
)
from tether.protocol.scripts import ScriptRunArgs, ScriptRunResult
from tether.protocol.shell import is_cat_source
from tether.protocol.upgrade import UpgradeArgs, UpgradeResult


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ActionSpec:
    """One endpoint capability."""

    name: str
    args: type[BaseModel]
    result: type[BaseModel]
    permission: Permission
    timeout_seconds: float
    description: str
    # A response action changes or reads endpoint content. It needs the Active Response role and
    # a segment with Active Response on, and the agent refuses it unless its policy allows it.
    # True unless declared otherwise, so a new action forgetting the flag fails closed.
    response: bool = True
    # The Active Response tier a response action needs, and how a refusal names the action
    # ("rita has the collect tier; kill needs respond"). The highest tier unless declared, so an
    # action forgetting it fails closed.
    tier: Tier = Tier.SCRIPT
    label: str = ""
    # `script.run` of a script from the library (reviewed, written by a script-tier holder) needs
    # less than arbitrary source; None where the action has no library form.
    library_tier: Tier | None = None
    library_label: str = ""


class NoopArgs(_Model):
    """Arguments of `system.noop`: an optional token echoed back."""

    echo: str = Field(default="", max_length=256)


class NoopResult(_Model):
    """Result of `system.noop`."""

    echo: str = Field(max_length=256)


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            name=SYSTEM_NOOP,
            args=NoopArgs,
            result=NoopResult,
            permission=Permission.HOSTS_MANAGE,
            timeout_seconds=30.0,
            description="Round trip to the agent and back; touches nothing on the endpoint.",
            response=False,
        ),
        ActionSpec(
            name=PROCESSES_LIST,
            args=ProcessListArgs,
            result=ProcessList,
            permission=Permission.ACTIVE_RESPONSE,
            tier=Tier.COLLECT,
            label="process list",
            # Hashing every executable of a busy server reads a few hundred files.
            timeout_seconds=120.0,
            description="List the endpoint's processes, optionally filtered and with the SHA-256 of each executable.",
        ),
        ActionSpec(
            name=PROCESSES_KILL,
            args=ProcessKillArgs,
            result=ProcessKillResult,
            permission=Permission.ACTIVE_RESPONSE,
            tier=Tier.RESPOND,
            label="kill",
            timeout_seconds=30.0,
            description="Kill a process, or a process and all its descendants; never init or the agent itself.",
        ),
        ActionSpec(
            name=FILES_LIST,
            args=FileListArgs,
            result=FileList,
            permission=Permission.ACTIVE_RESPONSE,
            tier=Tier.COLLECT,
            label="file list",
            timeout_seconds=60.0,
            description="List a directory's entries with type, size, mode, owner and times; links are not followed.",
        ),
        ActionSpec(
            name=FILES_HASH,
            args=FileHashArgs,
            result=FileHash,
            permission=Permission.ACTIVE_RESPONSE,
            tier=Tier.COLLECT,
            label="file hash",
            # Sized for the 3 GB files the platform transfers, read from a slow disk.
            timeout_seconds=600.0,
            description="Hash one file on the endpoint with SHA-256, SHA-1 and/or MD5.",
        ),
        ActionSpec(
            name=FILES_GET,
            args=FileGetArgs,
            result=FileGetResult,
            permission=Permission.ACTIVE_RESPONSE,
            tier=Tier.COLLECT,
            label="file retrieval",
            # A 4 GiB file over a slow link; the transfer resumes across reconnects meanwhile.
            timeout_seconds=6 * 3600.0,
            description=(
                "Retrieve a file from the endpoint: chunked, resumable, SHA-256 verified, kept "
                "in the platform's file library with its chain of custody."
            ),
        ),
        ActionSpec(
            name=FILES_PUT,
            args=FilePutArgs,
            result=FilePutResult,
            permission=Permission.ACTIVE_RESPONSE,
            tier=Tier.RESPOND,
            label="file deployment",
            timeout_seconds=6 * 3600.0,
            description=(
                "Write a file from the library to an endpoint path: received into a temporary "
                "file, verified, then renamed into place."
            ),
        ),
        ActionSpec(
            name=SCRIPT_RUN,
            args=ScriptRunArgs,
            result=ScriptRunResult,
            permission=Permission.ACTIVE_RESPONSE,
            tier=Tier.SCRIPT,
            label="an arbitrary script",
            library_tier=Tier.RESPOND,
            library_label="a library script",
            timeout_seconds=600.0,
            description=(
                "Run a Python script with the agent's privileges; stdout, stderr and result "
                "rows stream back as it runs."
            ),
        ),
        ActionSpec(
            name=ISOLATION_ISOLATE,
            args=IsolateArgs,
            result=IsolationStatus,
            permission=Permission.ACTIVE_RESPONSE,
            tier=Tier.RESPOND,
            label="isolation",
            # Applying rules and testing the platform link through them takes seconds.
            timeout_seconds=60.0,
            description=(
                "Isolate the host: outbound traffic blocked except to the platform and the "
                "allowlist (full mode blocks new inbound connections too); rolled back when the "
                "platform is unreachable through the new rules."
            ),
        ),
        ActionSpec(
            name=ISOLATION_RELEASE,
            args=ReleaseArgs,
            result=IsolationStatus,
            permission=Permission.ACTIVE_RESPONSE,
            tier=Tier.RESPOND,
            label="release from isolation",
            timeout_seconds=60.0,
            description="Release the host from isolation: the isolation rules are removed whole.",
        ),
        ActionSpec(
            name=ISOLATION_STATUS,
            args=ReleaseArgs,
            result=IsolationStatus,
            permission=Permission.HOSTS_READ,
            timeout_seconds=30.0,
            description="Report what the host's firewall holds for isolation; changes nothing.",
            response=False,
        ),
        ActionSpec(
            name=AGENT_UPGRADE,
            args=UpgradeArgs,
            result=UpgradeResult,
            # Code execution as root on every host of a rollout: an admin's permission AND the
            # highest tier (and a fresh second factor at the route), never one of them alone.
            permission=Permission.HOSTS_MANAGE,
            tier=Tier.SCRIPT,
            label="an agent upgrade",
            # Fetch the bundle, restart, connect again: the agent's own window is 60 s.
            timeout_seconds=1800.0,
            description=(
                "Replace the agent with a bundle signed by the platform: verified, unpacked "
                "beside the current one, swapped, restarted, rolled back by the agent itself "
                "if the new version does not connect in time."
            ),
        ),
    )
}


def tier_needed(spec: ActionSpec, args: dict[str, object], *, from_library: bool) -> Tier:
    """The tier a submission of `spec` with (validated) `args` needs.

    A library script needs the action's `library_tier`; the live shell's `cat` (a script the
    platform can recognise as exactly the read `cat_command` builds) needs only collect.
    """
    if from_library and spec.library_tier is not None:
        return spec.library_tier
    if spec.name == SCRIPT_RUN and is_cat_source(args.get("source")):
        return Tier.COLLECT
    return spec.tier


def refusal_name(spec: ActionSpec, *, from_library: bool) -> str:
    """How a tier refusal names this submission: "kill", "a library script"."""
    if from_library and spec.library_tier is not None:
        return spec.library_label
    return spec.label


def action(name: str) -> ActionSpec:
    """The declaration of action `name`, or KeyError when no such action exists."""
    return ACTIONS[name]


def tier_additions() -> dict[Tier, list[str]]:
    """What each tier adds to the tiers below it, in the words its refusals use ("kill", "a
    library script"): each response action's label under the tier it needs, and its library
    form's label under the library tier. Pages explain the tiers from this, not from a list of
    their own, so a new action shows up where it belongs."""
    added: dict[Tier, list[str]] = {tier: [] for tier in TIERS}
    for spec in ACTIONS.values():
        if not spec.response:
            continue
        added[spec.tier].append(spec.label)
        if spec.library_tier is not None:
            added[spec.library_tier].append(spec.library_label)
    return added
