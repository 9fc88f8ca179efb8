"""Files: retrieve from and deploy to endpoints, and the platform's file library.

`tether get` runs `files.get` and downloads what the platform verified; `tether put` uploads to
the library (once per content) and runs `files.put`. Downloads land in a temporary file next to
the destination, are checked against the library's SHA-256, then renamed into place.
"""

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from tether.cli.client import Api
from tether.cli.errors import CliError, UsageError
from tether.cli.follow import submit, wait_for_job
from tether.cli.output import console, emit_json, errors, one_line, table
from tether.cli.times import short_time
from tether.protocol.action_names import FILES_GET, FILES_PUT

files_app = typer.Typer(help="The file library: uploaded tools and retrieved files.")

CHUNK = 1024 * 1024


def _progress() -> Progress:
    # On a terminal only: scripts reading stdout or stderr get no bar drawn over their lines.
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=errors,
        disable=not errors.is_terminal,
        transient=True,
    )


def upload(api: Api, local: Path, name: str | None = None) -> dict[str, Any]:
    """Put a local file into the library (streamed); returns the library entry."""
    try:
        size = local.stat().st_size
        handle = local.open("rb")
    except OSError as exc:
        raise CliError(f"Cannot read {local}: {exc.strerror or exc}.") from exc
    with handle, _progress() as bar:
        task = bar.add_task(f"upload {local.name}", total=size)

        def chunks() -> Iterator[bytes]:
            while chunk := handle.read(CHUNK):
                bar.advance(task, len(chunk))
                yield chunk

        entry: dict[str, Any] = api.post(
            "/files", params={"name": name or local.name}, content=chunks()
        )
    return entry


def local_name(name: str, sha256: str) -> str:
    """A file name safe to create here from a name an endpoint chose: its last component,
    never hidden, never a drive or stream reference; otherwise one made from the hash."""
    base = re.split(r"[/\\]", name)[-1]
    if not base or base.startswith(".") or ":" in base or not base.isprintable():
        return f"retrieved-{sha256[:16]}"
    return base


def download(
    api: Api,
    entry: dict[str, Any],
    dest: Path,
    name: str | None = None,
    *,
    bar: Progress | None = None,
) -> Path:
    """Save a library file at `dest` (a directory means `name`, or the library's, inside it),
    verified against the library's SHA-256. An existing file is never replaced, and nothing is
    left behind if anything fails."""
    chosen = local_name(name or str(entry["name"]), str(entry["sha256"]))
    target = dest / chosen if dest.is_dir() else dest
    directory = target.parent
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except OSError as exc:
        raise CliError(f"Cannot write in {directory}: {exc.strerror or exc}.") from exc
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, contextlib.ExitStack() as stack:
            if bar is None:
                bar = stack.enter_context(_progress())
            task = bar.add_task(f"platform -> {target.name}", total=int(entry["size"]))

            def sink(chunk: bytes) -> None:
                out.write(chunk)
                digest.update(chunk)
                bar.advance(task, len(chunk))

            api.download(f"/files/{quote(str(entry['id']), safe='')}/content", sink)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != entry["sha256"]:
            raise CliError(
                f"The download's SHA-256 ({digest.hexdigest()}) does not match the library's "
                f"({entry['sha256']}); nothing was saved."
            )
        try:
            # A link, not a rename: it fails instead of replacing a file that exists.
            os.link(temporary, target)
        except FileExistsError as exc:
            raise CliError(
                f"{target} already exists; remove it or choose another --output."
            ) from exc
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def destination(output: str | None) -> Path:
    """Where `-o OUTPUT` saves, checked before anything runs on an endpoint: an existing
    directory, a directory to create (OUTPUT ends with a separator), or a file in an existing
    directory. Without OUTPUT, the current directory."""
    if output is None:
        return Path.cwd()
    if not output.strip():
        raise UsageError("--output needs a file or directory name.")
    path = Path(output)
    if output.endswith(("/", os.sep)):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise CliError(f"{path} exists and is not a directory.") from exc
        except OSError as exc:
            raise CliError(f"Cannot create the directory {path}: {exc.strerror or exc}.") from exc
        return path
    if path.is_dir():
        return path
    if not path.parent.is_dir():
        raise CliError(
            f"The directory {path.parent} does not exist; create it, or end --output with / "
            "to have it created."
        )
    return path


def retrieved_by(api: Api, job_id: str) -> dict[str, Any]:
    """The library entry a succeeded files.get job produced."""
    found = api.get("/files", params={"job": job_id, "kind": "retrieved"})
    if not found:
        raise CliError(f"Job {job_id} left no file in the library.")
    entry: dict[str, Any] = found[0]
    return entry


# How often a transfer's progress is asked for while the bar is drawn (the platform writes it
# about once a second); without a terminal, the job is followed with the usual long poll.
PROGRESS_POLL_SECONDS = 1.0


def _finished(
    api: Api, job_id: str, what: str, *, bar: Progress | None = None, label: str = ""
) -> dict[str, Any]:
    """Wait for the job to end, showing its transfer's bytes and rate on `bar`; the job."""
    if bar is None or bar.disable:
        job = wait_for_job(api, job_id)
    else:
        task = bar.add_task(label, total=None)

        def show(seen: dict[str, Any]) -> None:
            # The endpoint's side of the transfer: bytes durable on the receiving side.
            done, size = seen.get("transfer_bytes"), seen.get("transfer_size")
            if done is not None and size is not None:
                bar.update(task, completed=done, total=size)

        job = wait_for_job(api, job_id, on_poll=show, wait=PROGRESS_POLL_SECONDS)
        if job["state"] == "succeeded" and job.get("transfer_size") is not None:
            bar.update(task, completed=job["transfer_size"], total=job["transfer_size"])
    if job["state"] != "succeeded":
        raise CliError(f"{what} {job['state']}: {one_line(job.get('error') or 'no reason given')}")
    return dict(job)


def get(
    host: Annotated[str, typer.Argument(help="Host id or hostname.")],
    path: Annotated[str, typer.Argument(help="Absolute path of the file on the endpoint.")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Local file or directory; a name ending with / is a directory, created if new.",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Retrieve a file from an endpoint: verified, kept in the library, saved locally."""
    # Before the job: a typo in -o must not cost a retrieval, nor land as a file.
    target = destination(output)
    api = Api.from_profile()
    batch = submit(api, FILES_GET, {"path": path}, hosts=[host])
    # One bar for the whole transfer: endpoint -> platform, then platform -> the local file.
    with _progress() as bar:
        label = f"{one_line(batch['jobs'][0]['hostname'])} -> platform"
        job = _finished(api, batch["jobs"][0]["id"], "The retrieval", bar=bar, label=label)
        entry = retrieved_by(api, job["id"])
        # Named after the path the analyst asked for, never after what the endpoint reported.
        saved = download(api, entry, target, name=path, bar=bar)
    if json_output:
        emit_json({"file": entry, "saved": str(saved)})
        return
    console.print(
        f"Retrieved {one_line(entry['source_path'])} from {one_line(job['hostname'])}: "
        f"{entry['size']} bytes, SHA-256 {entry['sha256']}, saved to {saved}.",
        markup=False,
        highlight=False,
    )


def deploy_mode(local: Path, mode: str | None) -> str:
    """The mode a put asks for, in octal: `--mode` as given, else the source's read, write and
    execute bits without write for group and others (a deployed file runs as root)."""
    if mode is not None:
        if not _MODE.fullmatch(mode.strip()):
            raise UsageError(
                f"--mode {mode!r} is not three octal digits like 755 or 0644 (setuid, setgid "
                "and sticky bits are not deployed)."
            )
        return f"{int(mode, 8):04o}"
    try:
        bits = stat.S_IMODE(local.stat().st_mode)
    except OSError as exc:
        raise CliError(f"Cannot read {local}: {exc.strerror or exc}.") from exc
    return f"{bits & _SOURCE_MODE_BITS:04o}"


# What --mode takes (the protocol's FILE_MODE_PATTERN), and what is kept of a source's mode.
_MODE = re.compile(r"0?[0-7]{3}")
_SOURCE_MODE_BITS = 0o755


def put(
    host: Annotated[str, typer.Argument(help="Host id or hostname.")],
    local: Annotated[Path, typer.Argument(help="Local file to deploy.")],
    path: Annotated[str, typer.Argument(help="Absolute destination path on the endpoint.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    mode: Annotated[
        str | None,
        typer.Option(
            help="Permission bits in octal, like 755 (default: the local file's, without write "
            "for group and others)."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Deploy a local file to an endpoint path through the library (verified, then renamed)."""
    wanted = deploy_mode(local, mode)
    api = Api.from_profile()
    entry = upload(api, local)
    args = {
        "sha256": entry["sha256"],
        "size": entry["size"],
        "path": path,
        "overwrite": overwrite,
        "mode": wanted,
    }
    batch = submit(api, FILES_PUT, args, hosts=[host])
    with _progress() as bar:
        label = f"platform -> {one_line(batch['jobs'][0]['hostname'])}"
        job = _finished(api, batch["jobs"][0]["id"], "The deployment", bar=bar, label=label)
    if json_output:
        emit_json({"file": entry, "job": job})
        return
    # The mode the endpoint reports the file has now (none where there are no such bits).
    installed = (job.get("result") or {}).get("mode")
    shown_mode = f"mode {one_line(installed)}, " if installed else ""
    console.print(
        f"Deployed {local.name} to {path} on {one_line(job['hostname'])}: {entry['size']} bytes, "
        f"{shown_mode}SHA-256 {entry['sha256']}.",
        markup=False,
        highlight=False,
    )


@files_app.command("upload")
def upload_command(
    local: Annotated[Path, typer.Argument(help="Local file to add to the library.")],
    name: Annotated[str | None, typer.Option(help="Library name (default: the file's).")] = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Add a tool or remediation file to the library."""
    entry = upload(Api.from_profile(), local, name)
    if json_output:
        emit_json(entry)
        return
    console.print(
        f"Uploaded {entry['name']}: {entry['size']} bytes, SHA-256 {entry['sha256']}.",
        markup=False,
        highlight=False,
    )


@files_app.command("list")
def list_command(
    kind: Annotated[str | None, typer.Option(help="upload or retrieved.")] = None,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Library files, newest first, with the chain of custody of retrieved ones."""
    if kind not in (None, "upload", "retrieved"):
        raise UsageError("--kind is upload or retrieved.")
    params = {"kind": kind} if kind else {}
    entries: list[dict[str, Any]] = Api.from_profile().get("/files", params=params)
    if json_output:
        emit_json(entries)
        return
    rows = [
        {
            **e,
            "id": e["id"][:12],
            "sha256": e["sha256"][:16],
            "origin": f"{e['hostname']}:{e['source_path']}" if e["kind"] == "retrieved" else "",
            "created_at": short_time(e["created_at"]),
        }
        for e in entries
    ]
    table(
        rows,
        [
            ("id", "ID"),
            ("kind", "Kind"),
            ("name", "Name"),
            ("size", "Size"),
            ("sha256", "SHA-256"),
            ("origin", "From"),
            ("created_by", "By"),
            ("created_at", "When"),
        ],
        truncate=("origin",),
    )


@files_app.command("download")
def download_command(
    ref: Annotated[str, typer.Argument(help="Library file id, or an uploaded file's name.")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Local file or directory; a name ending with / is a directory, created if new.",
        ),
    ] = None,
) -> None:
    """Save a library file locally, verified against its SHA-256."""
    target = destination(output)
    api = Api.from_profile()
    entry: dict[str, Any] = api.get(f"/files/{quote(ref, safe='')}")
    saved = download(api, entry, target)
    console.print(f"Saved {saved} (SHA-256 {entry['sha256']}).", markup=False, highlight=False)
