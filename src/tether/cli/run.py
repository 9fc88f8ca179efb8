"""`tether run`: a script on hosts, a segment or every host, followed live to its end."""

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.client import Api
from tether.cli.errors import UsageError
from tether.cli.follow import Job, Piece, follow_jobs, offline_notices, submit
from tether.cli.jobs import print_rows
from tether.cli.output import emit_json, one_line, plain, terminal_text
from tether.cli.times import parse_duration, parse_instant
from tether.protocol import AWAITING_APPROVAL
from tether.protocol.action_names import SCRIPT_RUN
from tether.protocol.row_csv import rows_csv

SCRIPT_ACTION = SCRIPT_RUN
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
# What FastAPI answers for a route that does not exist, as opposed to a script that does not.
# Beyond this many jobs, Ctrl-C points at the batch rather than listing every job.
_LISTED_JOBS = 10


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`name=value` pairs; a value that parses as JSON is taken as JSON, else as a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not _PARAM_NAME.match(name):
            raise UsageError(
                f"--param {pair!r} is not name=value with a name of letters, digits and _.-."
            )
        if name in params:
            raise UsageError(f"--param {name} is given twice.")
        try:
            params[name] = json.loads(raw)
        except ValueError:
            params[name] = raw
    return params


def _selection(
    hosts: list[str], segment: str | None, everything: bool
) -> tuple[list[str] | None, str | None, bool]:
    chosen = sum((bool(hosts), segment is not None, everything))
    if chosen != 1:
        raise UsageError("Name hosts, --segment S or --all: exactly one of them.")
    return (hosts or None), segment, everything


def _read_script(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"Cannot read the script file {path}: {reason}.") from exc


def host_labels(jobs: list[Job]) -> dict[str, str]:
    """How each job's host is named in output, by job id: its hostname, followed by its id
    when another host of the run has the same name (a re-imaged machine, a clone)."""
    counts = Counter(job["hostname"] for job in jobs)
    return {
        job["id"]: (
            job["hostname"]
            if counts[job["hostname"]] == 1
            else f"{job['hostname']} ({job['host_id']})"
        )
        for job in jobs
    }


class StreamPrinter:
    """Writes output as it arrives: stdout to stdout (or to stderr with `text_to_stderr`, when
    stdout is kept for the rows' CSV), the rest to stderr, each line prefixed `[host]` when
    several hosts run; result rows are kept, by host, for tables or CSV at the end."""

    def __init__(
        self,
        prefixed: bool,
        labels: dict[str, str] | None = None,
        *,
        text_to_stderr: bool = False,
    ) -> None:
        self.prefixed = prefixed
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self._labels = labels or {}
        self._stdout = sys.stderr if text_to_stderr else sys.stdout
        self._partial: dict[tuple[str, str], str] = {}

    def label(self, job: Job) -> str:
        return str(self._labels.get(job["id"]) or job["hostname"])

    def piece(self, job: Job, piece: Piece) -> None:
        stream = piece["stream"]
        if stream == "row":
            self.rows.setdefault(self.label(job), []).append(piece.get("fields") or {})
            return
        text = terminal_text(piece.get("text") or "")
        if not self.prefixed and stream == "stdout":
            self._stdout.write(text)
            self._stdout.flush()
            return
        key = (job["id"], stream)
        *lines, self._partial[key] = (self._partial.get(key, "") + text).split("\n")
        for line in lines:
            self._line(job, stream, line)

    def end(self, job: Job) -> None:
        """Write what is left of the job's unfinished lines."""
        for key in [k for k in self._partial if k[0] == job["id"]]:
            rest = self._partial.pop(key)
            if rest:
                self._line(job, key[1], rest)

    def _line(self, job: Job, stream: str, line: str) -> None:
        prefix = f"[{plain(self.label(job))}] " if self.prefixed else ""
        label = "" if stream in ("stdout", "stderr") else f"{stream}: "
        target = self._stdout if stream == "stdout" else sys.stderr
        target.write(f"{prefix}{label}{line}\n")
        target.flush()


def exit_code_of(job: Job) -> object:
    result = job.get("result")
    return result.get("exit_code") if isinstance(result, dict) else None


def succeeded(job: Job) -> bool:
    """The job succeeded and, when it reports one, its exit code is 0."""
    return job["state"] == "succeeded" and exit_code_of(job) in (None, 0)


def summary_line(job: Job, label: str | None = None) -> str:
    line = f"{plain(label or job['hostname'])}: {job['state']}"
    code = exit_code_of(job)
    if code is not None:
        line += f", exit code {plain(code)}"
    if job.get("error"):
        line += f": {one_line(job['error'])}"
    return line


def _stopped_following(batch: dict[str, Any]) -> None:
    sys.stderr.write("Stopped following; the jobs keep going. Resume with:\n")
    if len(batch["jobs"]) > _LISTED_JOBS:
        sys.stderr.write(f"  tether jobs --batch {batch['id']}\n")
    for job in batch["jobs"][:_LISTED_JOBS]:
        sys.stderr.write(f"  tether job show {job['id']}    ({plain(job['hostname'])})\n")


def follow_batch(
    api: Api,
    batch: dict[str, Any],
    *,
    json_output: bool,
    prefixed: bool | None = None,
    csv_output: bool = False,
) -> dict[str, Job]:
    """Follow every job of a submitted batch, printing as it goes (or silently for --json);
    rows are printed as tables at the end, or with `csv_output` as CSV on stdout (the
    scripts' own output then goes to stderr). Ctrl-C stops following, says how to resume and
    exits 130."""
    for host, reason in batch.get("refused", {}).items():
        sys.stderr.write(f"host {plain(host)} refused: {one_line(reason)}\n")
    for notice in offline_notices(api, batch["jobs"]):
        sys.stderr.write(notice + "\n")
    printer = StreamPrinter(
        len(batch["jobs"]) > 1 if prefixed is None else prefixed,
        host_labels(batch["jobs"]),
        text_to_stderr=csv_output,
    )
    collected: dict[str, list[Piece]] = {j["id"]: [] for j in batch["jobs"]}

    def on_output(job: Job, piece: Piece) -> None:
        if json_output:
            collected[job["id"]].append(piece)
        else:
            printer.piece(job, piece)

    try:
        ended = follow_jobs(
            api,
            # A job awaiting approval may wait for hours; `submit` said how to follow it later.
            [j["id"] for j in batch["jobs"] if j["state"] != AWAITING_APPROVAL],
            on_output,
            None if json_output else printer.end,
        )
    except KeyboardInterrupt:
        _stopped_following(batch)
        raise typer.Exit(130) from None
    if json_output:
        return {i: {**job, "output": collected[i]} for i, job in ended.items()}
    if csv_output:
        pairs = [(host, row) for host, rows in sorted(printer.rows.items()) for row in rows]
        sys.stdout.write(rows_csv(pairs))
        sys.stdout.flush()
        return ended
    for hostname, rows in sorted(printer.rows.items()):
        print_rows(rows, f"rows from {plain(hostname)}:")
    return ended


def run(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="HOST... SCRIPT_FILE",
            help="Hosts (ids or hostnames), then the script file unless --script names one.",
            show_default=False,
        ),
    ] = None,
    segment: Annotated[
        str | None, typer.Option("--segment", help="Every host of this segment.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every enrolled host.")] = False,
    script: Annotated[
        str | None, typer.Option("--script", help="A script of the platform's library by name.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="name=value for the script; JSON values are read as JSON."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds the script may run.")
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option("--ttl", help="How long an offline host's job waits: 90s, 30m, 12h, 7d."),
    ] = None,
    not_after: Annotated[
        str | None,
        typer.Option("--not-after", help="Never start after this time (2026-12-01T08:00Z)."),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Print the batch and job ids and return.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    csv_output: Annotated[
        bool,
        typer.Option(
            "--csv",
            help="Print the result rows as CSV on stdout (a host column first); the scripts' "
            "output goes to stderr.",
        ),
    ] = False,
) -> None:
    """Run a script on hosts and follow its output; exit 0 only if it succeeded everywhere."""
    if csv_output and (json_output or detach):
        raise UsageError(
            "--csv prints the rows when the runs end; it goes without --json and --detach."
        )
    positional = list(targets or [])
    script_file: str | None = None
    if script is None:
        if not positional:
            raise UsageError("Give the script file after the hosts, or --script NAME.")
        script_file = positional.pop()
    hosts, seg, every = _selection(positional, segment, everything)
    params = parse_params(param or [])
    ttl_seconds = parse_duration(ttl) if ttl is not None else None
    if ttl_seconds is not None and ttl_seconds < 1:
        raise UsageError("--ttl must be at least 1s.")
    deadline = parse_instant(not_after) if not_after is not None else None
    source = _read_script(script_file) if script_file is not None else None
    api = Api.from_profile()
    args: dict[str, Any] = {"params": params}
    if source is not None:
        args["source"] = source
    batch = submit(
        api,
        SCRIPT_ACTION,
        args,
        hosts=hosts,
        segment=seg,
        everything=every,
        ttl_seconds=ttl_seconds,
        not_after=deadline,
        timeout_seconds=timeout,
        script=script if source is None else None,
    )
    if detach:
        _print_detached(batch, json_output)
        return
    ended = follow_batch(api, batch, json_output=json_output, csv_output=csv_output)
    jobs = sorted(ended.values(), key=lambda j: (j["hostname"], j["id"]))
    if json_output:
        emit_json({"batch": batch["id"], "refused": batch.get("refused", {}), "jobs": jobs})
    else:
        labels = host_labels(jobs)
        for job in jobs:
            sys.stderr.write(summary_line(job, labels[job["id"]]) + "\n")
    if batch.get("refused") or not all(succeeded(j) for j in jobs):
        raise typer.Exit(1)


def _print_detached(batch: dict[str, Any], json_output: bool) -> None:
    if json_output:
        emit_json(batch)
        return
    sys.stdout.write(f"batch {batch['id']}\n")
    for job in batch["jobs"]:
        sys.stdout.write(f"job {job['id']} {plain(job['hostname'])} {job['state']}\n")
    for host, reason in batch.get("refused", {}).items():
        sys.stderr.write(f"host {plain(host)} refused: {one_line(reason)}\n")
