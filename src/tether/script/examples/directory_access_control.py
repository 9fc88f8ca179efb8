"""Directory Access Control: list, hash, retrieve, quarantine, restore or delete files.

Quarantine moves a file into the quarantine directory under a neutral name, records where it came
from (path, mode, owner, SHA-256) beside it, and locks it to owner-read-only with no execute
(icacls on Windows). Restore puts it back at its original path with its original mode (and owner
when running as root; its saved ACL on Windows) after checking its SHA-256. One row per file.
Symbolic links are skipped, never followed.
"""

import fnmatch
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import tether.script
from tether.script import ScriptError, row, upload

ACTIONS = ("list", "hash", "retrieve", "quarantine", "restore", "delete")
WINDOWS = sys.platform == "win32"
if WINDOWS:
    DEFAULT_QUARANTINE = os.path.join(
        os.environ.get("PROGRAMDATA", r"C:\ProgramData"), "Tether", "Quarantine"
    )
else:
    DEFAULT_QUARANTINE = "/var/lib/tether/quarantine"
# Well-known SIDs, so the commands work whatever the system's language.
SYSTEM_SID = "*S-1-5-18"
ADMINISTRATORS_SID = "*S-1-5-32-544"
MAX_TEXT = 4096


def fail(sentence: str) -> NoReturn:
    """Stop the script with one sentence on stderr and exit code 1, no traceback."""
    sys.exit(sentence)


def read_params() -> dict[str, Any]:
    raw = tether.script.params
    if not isinstance(raw, dict):
        fail("The parameters must be an object.")
    known = {"action", "path", "pattern", "recursive", "quarantine_dir", "max_files"}
    unknown = sorted(set(raw) - known)
    if unknown:
        fail(f"Unknown parameter {unknown[0]!r}; expected {', '.join(sorted(known))}.")
    action = raw.get("action")
    if action not in ACTIONS:
        fail(f"Parameter 'action' must be one of {', '.join(ACTIONS)}.")
    path = raw.get("path")
    if not isinstance(path, str) or not path or not os.path.isabs(path):
        fail("Parameter 'path' must be an absolute path to a file or directory.")
    pattern = raw.get("pattern", "*")
    if not isinstance(pattern, str) or not pattern:
        fail("Parameter 'pattern' must be a file name pattern such as *.exe.")
    recursive = raw.get("recursive", False)
    if not isinstance(recursive, bool):
        fail("Parameter 'recursive' must be true or false.")
    quarantine = raw.get("quarantine_dir", DEFAULT_QUARANTINE)
    if not isinstance(quarantine, str) or not os.path.isabs(quarantine):
        fail("Parameter 'quarantine_dir' must be an absolute directory path.")
    max_files = raw.get("max_files", 1000)
    if (
        isinstance(max_files, bool)
        or not isinstance(max_files, int)
        or not 0 < max_files <= 100_000
    ):
        fail("Parameter 'max_files' must be a whole number from 1 to 100000.")
    target = os.path.abspath(path)
    if action in ("quarantine", "delete") and recursive and Path(target).parent == Path(target):
        fail(f"Refusing to {action} a whole filesystem from its root; choose a directory.")
    return {
        "action": action,
        "path": target,
        "pattern": pattern,
        "recursive": recursive,
        "quarantine_dir": os.path.abspath(quarantine),
        "max_files": max_files,
    }


def files_at(path: str, pattern: str, recursive: bool) -> Iterator[str]:
    """Regular files at `path`: the file itself, or those in the directory matching `pattern`."""
    if os.path.islink(path):
        return
    if os.path.isfile(path):
        yield path
        return
    if not os.path.isdir(path):
        fail(f"{path} does not exist.")
    for folder, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(folder, name)
            if fnmatch.fnmatch(name, pattern) and not os.path.islink(full) and os.path.isfile(full):
                yield full
        if not recursive:
            return


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def icacls(*args: str) -> None:
    subprocess.run(["icacls", *args], check=True, capture_output=True)


def lock_directory(folder: str) -> None:
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if WINDOWS:
        icacls(
            folder,
            "/inheritance:r",
            "/grant:r",
            f"{SYSTEM_SID}:(OI)(CI)F",
            "/grant:r",
            f"{ADMINISTRATORS_SID}:(OI)(CI)F",
        )
    else:
        os.chmod(folder, 0o700)


def lock_file(path: str) -> None:
    """Owner (the agent's account) may read; nobody may write or execute."""
    if WINDOWS:
        icacls(
            path,
            "/inheritance:r",
            "/grant:r",
            f"{SYSTEM_SID}:(R)",
            "/grant:r",
            f"{ADMINISTRATORS_SID}:(R)",
        )
    else:
        os.chmod(path, stat.S_IRUSR)


def describe(path: str) -> dict[str, Any]:
    info = os.stat(path)
    return {
        "path": path,
        "size": info.st_size,
        "mode": oct(stat.S_IMODE(info.st_mode)),
        "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.st_mtime)),
        "owner": info.st_uid if not WINDOWS else None,
    }


def quarantine(path: str, folder: str) -> dict[str, Any]:
    if os.path.commonpath([path, folder]) == folder:
        return {"path": path, "outcome": "skipped: already in the quarantine directory"}
    lock_directory(folder)
    info = os.stat(path)
    item = uuid.uuid4().hex
    stored = os.path.join(folder, item + ".quarantined")
    manifest = {
        "original_path": path,
        "sha256": sha256_of(path),
        "size": info.st_size,
        "mode": stat.S_IMODE(info.st_mode),
        "uid": getattr(info, "st_uid", None),
        "gid": getattr(info, "st_gid", None),
        "quarantined_at": time.time(),
    }
    manifest_path = os.path.join(folder, item + ".json")
    with open(manifest_path, "x", encoding="utf-8") as file:
        json.dump(manifest, file)
    try:
        if WINDOWS:
            # Saved by file name; restored onto the same name in the original directory.
            icacls(path, "/save", os.path.join(folder, item + ".acl"))
        shutil.move(path, stored)
    except BaseException:
        os.remove(manifest_path)
        raise
    lock_file(stored)
    return {
        "path": path,
        "outcome": "quarantined",
        "sha256": manifest["sha256"],
        "quarantine_id": item,
    }


def quarantined_items(
    folder: str, target: str, pattern: str, recursive: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(item id, manifest) of every quarantined file whose original path is selected."""
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as file:
            manifest = json.load(file)
        original = manifest["original_path"]
        parent = os.path.dirname(original)
        selected = original == target or (
            fnmatch.fnmatch(os.path.basename(original), pattern)
            and (parent == target or (recursive and os.path.commonpath([parent, target]) == target))
        )
        if selected:
            yield name[: -len(".json")], manifest


def restore(item: str, manifest: dict[str, Any], folder: str) -> dict[str, Any]:
    original = manifest["original_path"]
    stored = os.path.join(folder, item + ".quarantined")
    if os.path.lexists(original):
        return {
            "path": original,
            "outcome": "failed: a file exists at the original path; not overwritten",
        }
    if sha256_of(stored) != manifest["sha256"]:
        return {
            "path": original,
            "outcome": "failed: the quarantined copy no longer matches its SHA-256",
        }
    os.makedirs(os.path.dirname(original), exist_ok=True)
    shutil.move(stored, original)
    if WINDOWS:
        acl = os.path.join(folder, item + ".acl")
        icacls(os.path.dirname(original), "/restore", acl)
        os.remove(acl)
    else:
        os.chmod(original, manifest["mode"])
        if os.geteuid() == 0 and manifest.get("uid") is not None:
            os.chown(original, manifest["uid"], manifest["gid"])
    os.remove(os.path.join(folder, item + ".json"))
    return {"path": original, "outcome": "restored", "sha256": manifest["sha256"]}


def handle(action: str, path: str, folder: str) -> dict[str, Any]:
    if action == "list":
        return {**describe(path), "outcome": "listed"}
    if action == "hash":
        return {**describe(path), "outcome": "hashed", "sha256": sha256_of(path)}
    if action == "retrieve":
        sent = upload(path)
        return {
            "path": path,
            "outcome": "retrieved",
            "sha256": sent.get("sha256"),
            "size": sent.get("size"),
        }
    if action == "quarantine":
        return quarantine(path, folder)
    os.remove(path)
    return {"path": path, "outcome": "deleted"}


def emit(fields: dict[str, Any]) -> None:
    """One row; text is clipped to what a row field holds (an error naming a long path)."""
    row(
        **{
            key: value[:MAX_TEXT] if isinstance(value, str) else value
            for key, value in fields.items()
        }
    )


def main() -> None:
    wanted = read_params()
    action, folder = wanted["action"], wanted["quarantine_dir"]
    done = 0
    if action == "restore":
        items = quarantined_items(folder, wanted["path"], wanted["pattern"], wanted["recursive"])
        for item, manifest in items:
            if done >= wanted["max_files"]:
                break
            try:
                emit(restore(item, manifest, folder))
            except (OSError, subprocess.CalledProcessError) as exc:
                emit({"path": manifest["original_path"], "outcome": f"failed: {exc}"})
            done += 1
    else:
        for path in files_at(wanted["path"], wanted["pattern"], wanted["recursive"]):
            if done >= wanted["max_files"]:
                tether.script.log(f"Stopped at max_files={wanted['max_files']}; more files match.")
                break
            try:
                emit(handle(action, path, folder))
            except (OSError, ScriptError, subprocess.CalledProcessError) as exc:
                emit({"path": path, "outcome": f"failed: {exc}"})
            done += 1
    print(f"{action}: {done} file(s).")


if __name__ == "__main__":
    main()
