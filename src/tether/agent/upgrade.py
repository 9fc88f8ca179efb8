"""`agent.upgrade`: check the platform's signature, fetch the bundle, unpack it, swap, restart.

In this order, and nothing before the first check (docs/adr/0051):
1. the signature over (version, SHA-256, size) must verify with the upgrade key this agent
   learned at enrollment: otherwise nothing is fetched;
2. the archive comes over the agent's own connection (the file transfer engine, as a
   `files.put` does) into the state directory, and its SHA-256 and size must be the signed ones;
3. it is unpacked beside the running version (`<state>/upgrades/<version>/`), its VERSION must
   be the signed version, then `current` is pointed at it in one rename;
4. the agent replaces itself with the trial supervisor (`tether.agent.upgrade_trial`), which
   runs the new version and rolls back by itself if it has not connected within the window.

The job stays running across the restart; whichever agent learns how the trial ended reports
it: the new version when it connects ("upgraded"), the previous one when it is started again
("Rolled back ...").
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tether.agent.context import job_context
from tether.agent.errors import ActionError, AgentError
from tether.agent.journal import Journal
from tether.agent.upgrade_files import (
    EXECUTABLE,
    TRIAL_ENV,
    UPGRADE_KEY_FILE,
    WINDOW_ENV,
    Trial,
    UpgradeFiles,
)
from tether.agent.upgrade_trial import TRIAL_COMMAND, replace_process
from tether.agent.version import bundle_dir, running_version
from tether.protocol import JobStatus
from tether.protocol.action_names import AGENT_UPGRADE
from tether.protocol.transfer import TransferFailed, transfer_id_for
from tether.protocol.upgrade import (
    BUNDLE_DIRECTORY,
    DEFAULT_WINDOW_SECONDS,
    REFUSED,
    ROLLED_BACK,
    VERSION_FILE,
    UpgradeArgs,
    UpgradeResult,
    signed_statement,
)

log = logging.getLogger("tether.agent.upgrade")

UPGRADE_ACTION = AGENT_UPGRADE
# The public half of the platform's upgrade-signing key, hex, learned at enrollment.
KEY_FILE = UPGRADE_KEY_FILE
_CHUNK = 1024 * 1024


class RestartForUpgrade(AgentError):
    """The agent stops serving to replace itself with the trial of a new version."""


def refused(sentence: str) -> ActionError:
    """An upgrade refused before anything was installed; the platform reads it as "refused"."""
    return ActionError(f"{REFUSED}: {sentence}")


def window_from_environment() -> float:
    """The trial window: TETHER_AGENT_UPGRADE_WINDOW seconds (1 to 3600), else 60."""
    text = os.environ.get(WINDOW_ENV, "")
    if not text:
        return DEFAULT_WINDOW_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        return DEFAULT_WINDOW_SECONDS
    return min(max(seconds, 1.0), 3600.0)


def load_key(path: Path) -> "Ed25519PublicKey | None":
    """The upgrade key in `path` (hex of the raw 32 bytes), or None when there is none."""
    # Imported here, not at the top: an idle agent never loads cryptography (docs/adr/0052).
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(path.read_text().strip()))
    except (OSError, ValueError):
        return None


def verify_signature(key: "Ed25519PublicKey", args: UpgradeArgs) -> None:
    """Refuse unless `args.signature` is the key's signature over what it names."""
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(
            bytes.fromhex(args.signature), signed_statement(args.version, args.sha256, args.size)
        )
    except (InvalidSignature, ValueError) as exc:
        raise refused(
            "the bundle's signature does not verify with this agent's upgrade key, so nothing "
            "was fetched or installed."
        ) from exc


def _sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def unpack(archive: Path, args: UpgradeArgs, files: UpgradeFiles, scratch: Path) -> Path:
    """Check the archive against the signed hash and size, unpack it, put it in place under its
    version; returns the new bundle's directory. Blocking."""
    sha256, size = _sha256_of(archive)
    if sha256 != args.sha256 or size != args.size:
        raise refused(
            f"the received bundle is {size} bytes with SHA-256 {sha256}, not the signed "
            f"{args.size} bytes with {args.sha256}; it was not installed."
        )
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    try:
        with tarfile.open(archive, "r:gz") as bundle:
            for member in bundle.getmembers():
                top = member.name.split("/", 1)[0]
                if top != BUNDLE_DIRECTORY:
                    raise refused(
                        f"the archive holds {member.name!r}, outside {BUNDLE_DIRECTORY}/; it "
                        "was not installed."
                    )
            # "data": no absolute paths, no links leaving the folder, no device or setuid bits.
            bundle.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise refused(
            f"the bundle archive cannot be unpacked ({exc}); it was not installed."
        ) from exc
    unpacked = scratch / BUNDLE_DIRECTORY
    executable = unpacked / EXECUTABLE
    if not executable.is_file() or not os.access(executable, os.X_OK):
        raise refused(
            f"the archive has no executable {BUNDLE_DIRECTORY}/{EXECUTABLE}; it was not installed."
        )
    try:
        stated = (unpacked / VERSION_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        stated = ""
    if stated != args.version:
        raise refused(
            f"the archive says version {stated or 'nothing'!r}, the signature {args.version}; "
            "it was not installed."
        )
    target = files.version_dir(args.version)
    if target.exists():
        shutil.rmtree(target)
    os.rename(unpacked, target)
    return target


class Upgrader:
    """The `agent.upgrade` handler of one agent, and what its start makes of an earlier trial."""

    def __init__(self, state_root: Path) -> None:
        self._state_root = state_root
        self.files = UpgradeFiles(state_root)
        self.restart = asyncio.Event()
        # The trial this process is the new version of, until it connects and claims it.
        self._on_trial: Trial | None = None

    @property
    def key_path(self) -> Path:
        return self._state_root / KEY_FILE

    def settle(self, journal: Journal) -> frozenset[str]:
        """At start, before the journal's recovery: end the upgrade job of a finished trial in
        the journal, and name the job of a trial this process is on (kept running)."""
        rolled_back = self.files.rolled_back()
        if rolled_back is not None:
            job = journal.get(rolled_back.job_id)
            if job is not None and job.status is None:
                journal.finish(
                    JobStatus(
                        job_id=rolled_back.job_id,
                        state="failed",
                        error=(
                            f"{ROLLED_BACK} to {rolled_back.previous}: version "
                            f"{rolled_back.version} {rolled_back.reason or 'did not connect'}."
                        ),
                    )
                )
                log.warning(
                    "Upgrade to %s rolled back: %s", rolled_back.version, rolled_back.reason
                )
            self.files.forget(self.files.rolled_back_file)
        upgraded = self.files.upgraded()
        if upgraded is not None:
            self._finish_upgraded(journal, upgraded)
        trial = self.files.trial()
        if (
            trial is not None
            and os.environ.get(TRIAL_ENV) == trial.job_id
            and trial.version == running_version()
        ):
            self._on_trial = trial
            return frozenset({trial.job_id})
        return frozenset()

    def _finish_upgraded(self, journal: Journal, trial: Trial) -> None:
        job = journal.get(trial.job_id)
        if job is not None and job.status is None:
            result = UpgradeResult(version=trial.version, previous=trial.previous)
            journal.finish(
                JobStatus(job_id=trial.job_id, state="succeeded", result=result.model_dump())
            )
        self.files.forget(self.files.upgraded_file)

    def connected(self, journal: Journal) -> None:
        """This process reached the platform: if it is a version on trial, the upgrade took."""
        trial, self._on_trial = self._on_trial, None
        if trial is None:
            return
        if self.files.claim_upgraded():
            log.info("Upgraded from %s to %s", trial.previous, trial.version)
            self._finish_upgraded(journal, trial)

    async def run(self, args: UpgradeArgs) -> UpgradeResult:
        """The `agent.upgrade` handler; returns only by raising (the restart ends this process)."""
        if sys.platform == "win32":
            raise refused(
                "self-upgrade runs on Linux endpoints; upgrade a Windows agent with its package."
            )
        running = bundle_dir()
        if running is None:
            raise refused(
                "this agent runs from a Python environment, not a bundle; upgrade it with pip "
                "or its package."
            )
        key = load_key(self.key_path)
        if key is None:
            raise refused(
                "this agent has no upgrade key (it enrolled before signed upgrades); install "
                "the new package instead."
            )
        verify_signature(key, args)
        current = running_version()
        if args.version == current:
            raise refused(f"this agent already runs version {current}.")
        if self.files.trial() is not None:
            raise refused("another upgrade of this agent is still on trial.")
        context = job_context()
        if context.transfers is None:
            raise ActionError("This agent has no file transfer channel to the platform.")
        await asyncio.to_thread(self.files.ensure)
        incoming = self.files.root / f"incoming-{context.job_id}.tar.gz"
        try:
            await context.transfers.receive_file(
                transfer_id_for(context.job_id),
                context.job_id,
                incoming,
                size=args.size,
                sha256=args.sha256,
            )
        except TransferFailed as exc:
            raise ActionError(str(exc)) from exc
        scratch = self.files.root / f".unpack-{context.job_id}"
        try:
            await asyncio.to_thread(unpack, incoming, args, self.files, scratch)
        finally:
            with contextlib.suppress(OSError):
                incoming.unlink()
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        trial = Trial(
            job_id=context.job_id,
            version=args.version,
            previous=current,
            previous_executable=str(running / EXECUTABLE),
            run_args=sys.argv[1:],
            window_seconds=window_from_environment(),
        )
        await asyncio.to_thread(self.files.write_trial, trial)
        await asyncio.to_thread(self.files.point_current_at, args.version)
        log.info("Upgrade to %s unpacked; restarting into its trial", args.version)
        self.restart.set()
        # The restart cancels this task; the job stays running in the journal until the trial
        # ends and the agent that learns how reports it.
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover


def restart_into_trial(state_root: Path) -> None:
    """Replace this process with its own bundle's trial supervisor (same process id)."""
    if sys.platform == "win32":
        return
    replace_process(sys.executable, [sys.executable, TRIAL_COMMAND, str(state_root)])
