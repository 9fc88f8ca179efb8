"""Process Control: find processes by name, pid, user or executable SHA-256; list, kill, suspend
or resume them. One result row per process acted on.

Never touches this script or the agent that runs it (nor their ancestors), whatever matches.
"""

import fnmatch
import hashlib
import re
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import psutil

import tether.script
from tether.script import ScriptError, row

ACTIONS = ("list", "kill", "suspend", "resume")
SELECTORS = ("name", "pid", "user", "sha256")
MAX_TEXT = 4096  # what one row field holds


def fail(sentence: str) -> NoReturn:
    """Stop the script with one sentence on stderr and exit code 1, no traceback."""
    sys.exit(sentence)


def read_params() -> dict[str, Any]:
    raw = tether.script.params
    if not isinstance(raw, dict):
        fail("The parameters must be an object.")
    unknown = sorted(set(raw) - {"action", "tree", *SELECTORS})
    if unknown:
        fail(f"Unknown parameter {unknown[0]!r}; expected action, name, pid, user, sha256, tree.")
    action = raw.get("action", "list")
    if action not in ACTIONS:
        fail(f"Parameter 'action' must be one of {', '.join(ACTIONS)}.")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 255):
        fail("Parameter 'name' must be a process name of 1 to 255 characters.")
    pid = raw.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 1):
        fail("Parameter 'pid' must be a positive whole number.")
    user = raw.get("user")
    if user is not None and (not isinstance(user, str) or not 0 < len(user) <= 255):
        fail("Parameter 'user' must be a user name of 1 to 255 characters.")
    digest = raw.get("sha256")
    if digest is not None and (
        not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest)
    ):
        fail("Parameter 'sha256' must be 64 hexadecimal characters.")
    tree = raw.get("tree", False)
    if not isinstance(tree, bool):
        fail("Parameter 'tree' must be true or false.")
    if action != "list" and all(raw.get(key) is None for key in SELECTORS):
        fail(f"To {action} processes, give at least one of name, pid, user or sha256.")
    return {
        "action": action,
        "name": name,
        "pid": pid,
        "user": user,
        "sha256": digest.lower() if digest else None,
        "tree": tree,
    }


def untouchable() -> set[int]:
    """This script and everything above it, the agent included."""
    me = psutil.Process()
    return {me.pid, *(parent.pid for parent in me.parents())}


class ExecutableHashes:
    """SHA-256 of executables, each file read once however many processes run it."""

    def __init__(self) -> None:
        self._known: dict[str, str | None] = {}

    def of(self, path: str) -> str | None:
        if path not in self._known:
            try:
                digest = hashlib.sha256()
                with open(path, "rb") as file:
                    for block in iter(lambda: file.read(1024 * 1024), b""):
                        digest.update(block)
                self._known[path] = digest.hexdigest()
            except OSError:
                self._known[path] = None
        return self._known[path]


def matches(info: dict[str, Any], wanted: dict[str, Any], hashes: ExecutableHashes) -> bool:
    if wanted["pid"] is not None and info["pid"] != wanted["pid"]:
        return False
    if wanted["name"] is not None and not fnmatch.fnmatch(
        (info["name"] or "").lower(), wanted["name"].lower()
    ):
        return False
    if wanted["user"] is not None:
        owner = (info["username"] or "").lower()
        # Windows names carry a domain ("HOST\\alice"); either form matches.
        if wanted["user"].lower() not in (owner, owner.rpartition("\\")[2]):
            return False
    return wanted["sha256"] is None or (
        bool(info["exe"]) and hashes.of(info["exe"]) == wanted["sha256"]
    )


def describe(info: dict[str, Any]) -> dict[str, Any]:
    cmdline = " ".join(info["cmdline"] or [])
    return {
        "pid": info["pid"],
        "ppid": info["ppid"],
        "name": info["name"],
        "username": info["username"],
        "exe": info["exe"],
        "cmdline": cmdline[:MAX_TEXT],
    }


def settled_status(process: psutil.Process, settled: Callable[[str], bool]) -> str:
    """The status once the signal has taken effect (delivery is not instant), within a second."""
    deadline = time.monotonic() + 1.0
    status = process.status()
    while not settled(status) and time.monotonic() < deadline:
        time.sleep(0.01)
        status = process.status()
    return status


def act(action: str, pid: int, tree: bool) -> tuple[str, str | None]:
    """Do `action` to `pid`; returns (outcome, status after), outcome "failed: ..." on error."""
    try:
        if action == "kill":
            killed = tether.script.kill(pid, tree=tree)
            return "killed " + ",".join(str(each) for each in killed), None
        process = psutil.Process(pid)
        if action == "suspend":
            process.suspend()
            return "suspended", settled_status(
                process, lambda status: status == psutil.STATUS_STOPPED
            )
        if action == "resume":
            process.resume()
            return "resumed", settled_status(
                process, lambda status: status != psutil.STATUS_STOPPED
            )
        return "listed", process.status()
    except ScriptError as exc:
        return f"failed: {exc}", None
    except psutil.NoSuchProcess:
        return "failed: the process has already exited", None
    except psutil.AccessDenied:
        return "failed: access denied", None


def main() -> None:
    wanted = read_params()
    spared = untouchable()
    hashes = ExecutableHashes()
    fields = ["pid", "ppid", "name", "username", "cmdline", "exe"]
    acted = 0
    for process in psutil.process_iter(fields, ad_value=None):
        info = dict(process.info)
        if info["pid"] in spared or not matches(info, wanted, hashes):
            continue
        outcome, status = act(wanted["action"], info["pid"], wanted["tree"])
        row(action=wanted["action"], outcome=outcome[:MAX_TEXT], status=status, **describe(info))
        acted += 1
    tether.script.log(f"{wanted['action']}: {acted} matching process(es).")
    print(f"{acted} process(es) matched.")


if __name__ == "__main__":
    main()
