"""`tether shell HOST`: an audited live response session with a small command set.

Each line becomes one command of the session (a job on the host, `POST /sessions/{id}/commands`)
whose output is followed with the long poll and printed as it arrives. The working directory is
the client's: `cd` checks the directory exists on the endpoint, every path is resolved against it
before it is sent. Everything the endpoint sends is untrusted and passes through `terminal_text` (or
the table printer) before it reaches the terminal.
"""

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from tether.cli import files
from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.output import console, errors, plain, table, terminal_text
from tether.protocol import FINAL_STATES
from tether.protocol.shell import (
    Command,
    ShellInputError,
    Step,
    help_text,
    put_command,
    read_line,
    resolve,
    root_directory,
    said_why_it_failed,
    script_command,
)

HELP = help_text(
    extra=(
        f"  {'exit':<23} stop the session (Ctrl-D does too)",
        "Ctrl-C stops the running command; at the prompt it stops the session.",
    )
)
# How long one long poll for output may wait (the platform allows 30 s; the client's read
# timeout is 30 s too).
FOLLOW_WAIT_SECONDS = 20


class SessionEnded(CliError):
    """The platform ended the session (idle, access lost): the shell has to stop."""


@dataclass
class Outcome:
    ok: bool
    job: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return [(k, k) for k in keys]


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def render_result(result: dict[str, Any] | None) -> None:
    """Flat results print as `key: value` lines; a result with one list of records as a table
    with its other fields above it; any other shape as JSON."""
    if not result:
        return
    lists = [key for key, value in result.items() if _is_rows(value)]
    scalars = {k: v for k, v in result.items() if k not in lists}
    if len(lists) <= 1 and all(not isinstance(v, dict | list) for v in scalars.values()):
        for key, value in scalars.items():
            console.print(f"{plain(key)}: {plain(value)}", markup=False, highlight=False)
        if lists:
            rows = result[lists[0]]
            if rows:
                table(rows, _columns(rows))
            else:
                console.print(f"(no {plain(lists[0])})", markup=False, highlight=False)
        return
    console.print(
        terminal_text(json.dumps(result, indent=2, ensure_ascii=False)),
        markup=False,
        highlight=False,
    )


class Shell:
    """One live session on one host, driven line by line (the lines are read by
    `tether.protocol.shell`, as the web console reads them)."""

    def __init__(self, api: Api, host: str) -> None:
        self._api = api
        self._host_ref = host
        self.session_id = ""
        self.hostname = host
        self.cwd = "/"
        self._windows = False

    # -- the session -----------------------------------------------------------------------------

    def start(self) -> None:
        session = self._api.post("/sessions", json={"host": self._host_ref})
        self.session_id = str(session["id"])
        self.hostname = terminal_text(str(session["hostname"]))
        host = self._api.get(f"/hosts/{quote(str(session['host_id']), safe='')}")
        self._windows = host.get("os_family") == "windows"
        self.cwd = root_directory(self._windows)
        errors.print(
            f"Live session {self.session_id} on {self.hostname} started; it is audited. "
            "Type 'help' for the commands.",
            markup=False,
            highlight=False,
        )

    def stop(self) -> None:
        """Stop the session; one that already ended is left as it is."""
        if not self.session_id:
            return
        try:
            self._api.delete(f"/sessions/{self.session_id}")
        except CliError:
            return
        errors.print(f"Live session {self.session_id} stopped.", markup=False, highlight=False)

    @property
    def prompt(self) -> str:
        return f"tether {self.hostname}:{terminal_text(self.cwd)}> "

    # -- one line --------------------------------------------------------------------------------

    def run_line(self, line: str) -> bool:
        """Run one line; False when it failed. Raises SessionEnded when the session is over."""
        name = line.strip().partition(" ")[0]
        try:
            step = read_line(line, self.cwd, windows=self._windows)
            if step is None:
                return True
            return self._run_step(step).ok
        except SessionEnded:
            raise
        except ShellInputError as exc:
            errors.print(f"{name}: {exc}", markup=False, highlight=False)
            return False
        except CliError as exc:
            errors.print(f"{name}: {exc}", markup=False, highlight=False)
            return False

    def _run_step(self, step: Step) -> Outcome:
        if step.name == "help":
            console.print(HELP, markup=False, highlight=False)
            return Outcome(ok=True)
        if step.name == "run":
            return self._execute(self._script(step.words))
        if step.name == "put":
            local = Path(step.words[0])
            mode = files.deploy_mode(local, None)
            entry = files.upload(self._api, local)
            command = put_command(
                entry["sha256"],
                entry["size"],
                step.words,
                self.cwd,
                windows=self._windows,
                mode=mode,
            )
            return self._execute(command)
        if step.command is None:
            raise CliError(f"{step.name!r} is not a shell command; 'help' lists them.")
        outcome = self._execute(step.command, show=step.show, show_result=step.show_result)
        if outcome.ok and step.cd_to is not None:
            self.cwd = step.cd_to
        if outcome.ok and step.name == "get" and len(step.words) == 2 and outcome.job:
            entry = files.retrieved_by(self._api, str(outcome.job["id"]))
            saved = files.download(self._api, entry, files.destination(step.words[1]))
            console.print(f"Saved {saved}.", markup=False, highlight=False)
        return outcome

    def resolve(self, path: str) -> str:
        """`path` against the current directory."""
        return resolve(self.cwd, path, windows=self._windows)

    def _script(self, words: list[str]) -> Command:
        """`run NAME ...`: the platform resolves the library script (a library run)."""
        return script_command(words)

    # -- a command's job ---------------------------------------------------------------------------

    def _execute(self, command: Command, *, show: bool = True, show_result: bool = True) -> Outcome:
        try:
            job = self._api.post(
                f"/sessions/{self.session_id}/commands",
                json=self._command_body(command),
            )
        except CliError:
            self._raise_if_ended()
            raise
        try:
            return self._follow(job, show=show, show_result=show_result)
        except KeyboardInterrupt:
            self._api.post(f"/jobs/{job['id']}/cancel")
            errors.print("Cancelled.", markup=False, highlight=False)
            return Outcome(ok=False, job=job)

    def _command_body(self, command: Command) -> dict[str, Any]:
        body: dict[str, Any] = {"action": command.action, "args": command.args, "cwd": self.cwd}
        if command.script is not None:
            body["script"] = {"name": command.script}
        return body

    def _raise_if_ended(self) -> None:
        session = self._api.get(f"/sessions/{self.session_id}")
        if not session.get("open", False):
            reason = terminal_text(str(session.get("end_reason") or "ended"))
            raise SessionEnded(
                f"The live session ended ({reason}); run 'tether shell {self._host_ref}' "
                "to start a new one."
            )

    def _follow(self, job: dict[str, Any], *, show: bool, show_result: bool) -> Outcome:
        cursor = 0
        rows: list[dict[str, Any]] = []
        wrote_stderr = False
        while True:
            answer = self._api.get(
                f"/jobs/{job['id']}/output",
                params={"after": cursor, "wait": FOLLOW_WAIT_SECONDS},
            )
            job = answer["job"]
            for piece in answer["output"]:
                if piece["stream"] == "row" and piece.get("fields"):
                    rows.append(piece["fields"])
                elif show and piece.get("text"):
                    _print_piece(piece["stream"], piece["text"])
                    wrote_stderr = wrote_stderr or piece["stream"] == "stderr"
            cursor = answer["cursor"]
            if job["state"] in FINAL_STATES and not answer["output"]:
                break
        sys.stdout.flush()
        ok = job["state"] == "succeeded"
        if show:
            if rows:
                table(rows, _columns(rows))
            if ok and show_result:
                render_result(job.get("result"))
        if not ok and not (wrote_stderr and _said_why(job)):
            reason = terminal_text(str(job.get("error") or "no reason given"))
            errors.print(f"{job['state']}: {reason}", markup=False, highlight=False)
        return Outcome(ok=ok, job=job, rows=rows)


def _said_why(job: dict[str, Any]) -> bool:
    """A failed `cat` or `py` whose own sentence is already on the screen (stderr)."""
    return job["state"] == "failed" and said_why_it_failed(
        job["action"], job.get("args"), job.get("error")
    )


def _print_piece(stream: str, text: str) -> None:
    clean = terminal_text(text)
    if stream == "stdout":
        sys.stdout.write(clean)
        sys.stdout.flush()
    else:
        # stderr, log and the platform's notices: kept apart from the data on stdout.
        sys.stderr.write(clean)
        sys.stderr.flush()


def _interactive(shell: Shell) -> int:
    # Line editing and history for input(), where the platform has readline.
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401
    status = 0
    while True:
        try:
            line = input(shell.prompt)
        except EOFError:  # Ctrl-D
            console.print()
            return status
        except KeyboardInterrupt:  # Ctrl-C at the prompt
            console.print()
            return 130
        if line.strip() in {"exit", "quit", "logout"}:
            return status
        if not shell.run_line(line):
            status = 1


def shell(
    host: Annotated[str, typer.Argument(help="Host id or hostname.")],
    commands: Annotated[
        list[str] | None,
        typer.Option(
            "--command",
            "-c",
            help="Run this shell command and exit (repeat for several, in order).",
        ),
    ] = None,
) -> None:
    """Open an audited live response session on HOST: ls, cd, cat, get, put, ps, kill, run, py.

    Without --command it is interactive; with --command the commands run in one session and the
    exit status is 1 if any of them failed."""
    api = Api.from_profile()
    session = Shell(api, host)
    session.start()
    status = 0
    try:
        if commands:
            for line in commands:
                if not session.run_line(line):
                    status = 1
        else:
            status = _interactive(session)
    except SessionEnded as exc:
        errors.print(str(exc), markup=False, highlight=False)
        status = 1
    except KeyboardInterrupt:
        status = 130
    finally:
        session.stop()
        api.close()
    if status:
        raise typer.Exit(status)
