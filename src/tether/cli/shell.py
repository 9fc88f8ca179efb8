"""`tether shell HOST`: an audited live response session with a small command set.

Each line becomes one command of the session (a job on the host, `POST /sessions/{id}/commands`)
whose output is followed with the long poll and printed as it arrives. The working directory is
the client's: `cd` checks the directory exists on the endpoint, every path is resolved against it
before it is sent. Everything the endpoint sends is untrusted and passes through `terminal_text` (or
the table printer) before it reaches the terminal.
"""

import contextlib
import json
import ntpath
import posixpath
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from tether.cli import files
from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.output import console, errors, plain, table, terminal_text

FINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "expired"})
# How long one long poll for output may wait (the platform allows 30 s; the client's read
# timeout is 30 s too).
FOLLOW_WAIT_SECONDS = 20
CAT_LIMIT = 64 * 1024

HELP = """\
Commands (paths are relative to the current directory):
  ls [PATH]               list a directory
  cd PATH                 change the current directory (checked on the endpoint)
  cat PATH                print the first 64 KiB of a file
  get PATH [LOCAL]        collect a file from the endpoint to the platform
  put LOCAL PATH          deploy a file to the endpoint
  ps                      list processes
  kill PID [--tree]       terminate a process (with --tree, its children too)
  run NAME [KEY=VALUE...] run a script from the library with parameters
  py CODE                 run a Python one-liner on the endpoint (an expression's value is shown)
  help                    this list
  exit                    stop the session (Ctrl-D does too)
Ctrl-C stops the running command; at the prompt it stops the session."""


class SessionEnded(CliError):
    """The platform ended the session (idle, access lost): the shell has to stop."""


@dataclass(frozen=True)
class Command:
    """What one shell line asks the endpoint to do."""

    action: str
    args: dict[str, Any]


@dataclass
class Outcome:
    ok: bool
    job: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def cat_command(path: str) -> Command:
    """`cat` as one command: a script printing the first 64 KiB of the file.

    The path travels as a Python string literal (`repr`), never as code; swap this for
    `files.get` once the shell can download what it collects."""
    source = (
        "import sys\n"
        f"with open({path!r}, 'rb') as handle:\n"
        f"    data = handle.read({CAT_LIMIT + 1})\n"
        f"sys.stdout.write(data[:{CAT_LIMIT}].decode('utf-8', 'replace'))\n"
        f"if len(data) > {CAT_LIMIT}:\n"
        "    sys.stderr.write('\\n[only the first 64 KiB is shown]\\n')\n"
    )
    return Command("script.run", {"source": source, "params": {}})


def python_command(code: str) -> Command:
    """`py CODE`: an expression's value is printed, a statement is run as it is."""
    source = (
        f"_code = {code!r}\n"
        "try:\n"
        "    _compiled = compile(_code, '<py>', 'eval')\n"
        "except SyntaxError:\n"
        "    exec(compile(_code, '<py>', 'exec'))\n"
        "else:\n"
        "    _value = eval(_compiled)\n"
        "    if _value is not None:\n"
        "        print(repr(_value))\n"
    )
    return Command("script.run", {"source": source, "params": {}})


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that reads as JSON (numbers, true, lists) is taken as such."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{pair!r} is not KEY=VALUE.")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


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
    """One live session on one host, driven line by line."""

    def __init__(self, api: Api, host: str) -> None:
        self._api = api
        self._host_ref = host
        self.session_id = ""
        self.hostname = host
        self.cwd = "/"
        self._windows = False
        self._handlers: dict[str, Callable[[list[str]], Outcome]] = {
            "ls": self._ls,
            "dir": self._ls,
            "cd": self._cd,
            "cat": self._cat,
            "get": self._get,
            "put": self._put,
            "ps": self._ps,
            "kill": self._kill,
            "run": self._run,
        }

    # -- the session -----------------------------------------------------------------------------

    def start(self) -> None:
        session = self._api.post("/sessions", json={"host": self._host_ref})
        self.session_id = str(session["id"])
        self.hostname = terminal_text(str(session["hostname"]))
        host = self._api.get(f"/hosts/{quote(str(session['host_id']), safe='')}")
        self._windows = host.get("os_family") == "windows"
        self.cwd = "C:\\" if self._windows else "/"
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
        line = line.strip()
        if not line:
            return True
        name, _, rest = line.partition(" ")
        try:
            if name == "help":
                console.print(HELP, markup=False, highlight=False)
                return True
            if name == "py":
                if not rest.strip():
                    raise CliError("py needs some Python code, for example: py import os; 1 + 1")
                return self._execute(python_command(rest.strip()), show_result=False).ok
            handler = self._handlers.get(name)
            if handler is None:
                raise CliError(f"{name!r} is not a shell command; 'help' lists them.")
            return handler(self._split(rest)).ok
        except SessionEnded:
            raise
        except CliError as exc:
            errors.print(f"{name}: {exc}", markup=False, highlight=False)
            return False

    def _split(self, rest: str) -> list[str]:
        try:
            words = shlex.split(rest, posix=not self._windows)
        except ValueError as exc:
            raise CliError(f"cannot read the line ({exc}).") from exc
        if self._windows:
            words = [w[1:-1] if len(w) > 1 and w[0] == w[-1] == '"' else w for w in words]
        return words

    def resolve(self, path: str) -> str:
        """`path` against the current directory, normalised (so `..` works client-side)."""
        if self._windows:
            return ntpath.normpath(ntpath.join(self.cwd, path))
        joined = posixpath.normpath(posixpath.join(self.cwd, path))
        # POSIX keeps a leading "//"; one slash is the same directory and reads better.
        return "/" + joined.lstrip("/")

    # -- commands --------------------------------------------------------------------------------

    def _ls(self, words: list[str]) -> Outcome:
        _arity(words, 0, 1, "ls [PATH]")
        path = self.resolve(words[0]) if words else self.cwd
        return self._execute(Command("files.list", {"path": path}))

    def _cd(self, words: list[str]) -> Outcome:
        _arity(words, 1, 1, "cd PATH")
        path = self.resolve(words[0])
        outcome = self._execute(Command("files.list", {"path": path}), show=False)
        if outcome.ok:
            self.cwd = path
        return outcome

    def _cat(self, words: list[str]) -> Outcome:
        _arity(words, 1, 1, "cat PATH")
        return self._execute(cat_command(self.resolve(words[0])), show_result=False)

    def _get(self, words: list[str]) -> Outcome:
        _arity(words, 1, 2, "get PATH [LOCAL]")
        outcome = self._execute(Command("files.get", {"path": self.resolve(words[0])}))
        if outcome.ok and len(words) == 2 and outcome.job is not None:
            entry = files.retrieved_by(self._api, str(outcome.job["id"]))
            saved = files.download(self._api, entry, Path(words[1]))
            console.print(f"Saved {saved}.", markup=False, highlight=False)
        return outcome

    def _put(self, words: list[str]) -> Outcome:
        _arity(words, 2, 3, "put LOCAL PATH [--overwrite]")
        entry = files.upload(self._api, Path(words[0]))
        args = {
            "sha256": entry["sha256"],
            "size": entry["size"],
            "path": self.resolve(words[1]),
            "overwrite": words[2:] == ["--overwrite"],
        }
        return self._execute(Command("files.put", args))

    def _ps(self, words: list[str]) -> Outcome:
        _arity(words, 0, 0, "ps")
        return self._execute(Command("processes.list", {}))

    def _kill(self, words: list[str]) -> Outcome:
        tree = "--tree" in words
        rest = [w for w in words if w != "--tree"]
        _arity(rest, 1, 1, "kill PID [--tree]")
        if not rest[0].isdigit():
            raise CliError(f"{rest[0]!r} is not a process id.")
        return self._execute(Command("processes.kill", {"pid": int(rest[0]), "tree": tree}))

    def _run(self, words: list[str]) -> Outcome:
        if not words:
            raise CliError("usage: run NAME [KEY=VALUE ...]")
        name, params = words[0], parse_params(words[1:])
        script = self._api.get_optional(f"/scripts/{quote(name, safe='')}")
        if script is None:
            raise CliError(
                f"The library has no script named {name!r}; 'tether scripts' lists them."
            )
        source = script.get("source") if isinstance(script, dict) else None
        if not isinstance(source, str):
            raise CliError(f"The platform sent script {name!r} without its source.")
        return self._execute(Command("script.run", {"source": source, "params": params}))

    # -- a command's job ---------------------------------------------------------------------------

    def _execute(self, command: Command, *, show: bool = True, show_result: bool = True) -> Outcome:
        try:
            job = self._api.post(
                f"/sessions/{self.session_id}/commands",
                json={"action": command.action, "args": command.args, "cwd": self.cwd},
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
        if not ok:
            reason = terminal_text(str(job.get("error") or "no reason given"))
            errors.print(f"{job['state']}: {reason}", markup=False, highlight=False)
        return Outcome(ok=ok, job=job, rows=rows)


def _print_piece(stream: str, text: str) -> None:
    clean = terminal_text(text)
    if stream == "stdout":
        sys.stdout.write(clean)
        sys.stdout.flush()
    else:
        # stderr, log and the platform's notices: kept apart from the data on stdout.
        sys.stderr.write(clean)
        sys.stderr.flush()


def _arity(words: list[str], least: int, most: int, usage: str) -> None:
    if not least <= len(words) <= most:
        raise CliError(f"usage: {usage}")


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
