"""The live shell's command language: what a line typed in a live session asks the endpoint.

`tether shell` and the web console read lines the same way here, so `ls`, `cd ..` or `kill 42`
mean one thing whichever client typed them. A line becomes a `Step`: the endpoint `Command`
(action and arguments) it sends, or, for the words a client completes itself (`run` names a
library script, `put` uploads a local file first, `help`), just the words. Paths are resolved against
the client's working directory before they leave; nothing here talks to the network.
"""

import ast
import json
import ntpath
import posixpath
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.protocol.action_names import (
    FILES_GET,
    FILES_LIST,
    FILES_PUT,
    PROCESSES_KILL,
    PROCESSES_LIST,
    SCRIPT_RUN,
)
from tether.protocol.scripts import exit_code_sentence

CAT_LIMIT = 64 * 1024
# What the generated `cat` and `py` exit with, once their one sentence is on stderr.
SHELL_FAILURE_CODE = 1

# Each command's usage and what it does, in the order `help` lists them.
COMMANDS = (
    ("ls [PATH]", "list a directory"),
    ("cd PATH", "change the current directory (checked on the endpoint)"),
    ("cat PATH", "print the first 64 KiB of a file"),
    ("get PATH [LOCAL]", "collect a file from the endpoint to the platform"),
    ("put LOCAL PATH", "deploy a file to the endpoint"),
    ("ps", "list processes"),
    ("kill PID [--tree]", "terminate a process (with --tree, its children too)"),
    ("run NAME [KEY=VALUE...]", "run a script from the library with parameters"),
    ("py CODE", "run a Python one-liner on the endpoint (an expression's value is shown)"),
    ("help", "this list"),
)


def help_text(*, omit: frozenset[str] = frozenset(), extra: Sequence[str] = ()) -> str:
    """The `help` answer: the commands but those named in `omit` (by their first word), then
    the client's own `extra` lines."""
    lines = ["Commands (paths are relative to the current directory):"]
    lines += [f"  {usage:<23} {what}" for usage, what in COMMANDS if usage.split()[0] not in omit]
    return "\n".join([*lines, *extra])


# Words whose command a client completes itself: it needs the script library or a local file.
CLIENT_WORDS = frozenset({"help", "run", "put"})


class ShellInputError(ValueError):
    """A line the shell cannot run; the message is one sentence for the person who typed it."""


@dataclass(frozen=True)
class Command:
    """What one shell line asks the endpoint to do."""

    action: str
    args: dict[str, Any]
    # A library script by name: the platform resolves its source, so the run counts as a
    # library run (the respond tier) rather than arbitrary source (the script tier).
    script: str | None = None


@dataclass(frozen=True)
class Step:
    """One line, read: its command word, its arguments and, when the line alone says it, the
    command to send and how to show its answer."""

    name: str
    words: list[str] = field(default_factory=list)
    command: Command | None = None
    # Print the command's streamed output and rows (False for `cd`, which only checks).
    show: bool = True
    # Also print the result's fields (False where the output already says everything).
    show_result: bool = True
    # `cd`: the directory the shell moves to once the endpoint listed it.
    cd_to: str | None = None


def root_directory(windows: bool) -> str:
    return "C:\\" if windows else "/"


def resolve(cwd: str, path: str, *, windows: bool) -> str:
    """`path` against the directory `cwd`, normalised (so `..` works client-side)."""
    if windows:
        return ntpath.normpath(ntpath.join(cwd, path))
    joined = posixpath.normpath(posixpath.join(cwd, path))
    # POSIX keeps a leading "//"; one slash is the same directory and reads better.
    return "/" + joined.lstrip("/")


def split_words(rest: str, *, windows: bool) -> list[str]:
    """The arguments of a line, quoted the way the endpoint's own shell would quote them."""
    try:
        words = shlex.split(rest, posix=not windows)
    except ValueError as exc:
        raise ShellInputError(f"cannot read the line ({exc}).") from exc
    if windows:
        words = [w[1:-1] if len(w) > 1 and w[0] == w[-1] == '"' else w for w in words]
    return words


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that reads as JSON (numbers, true, lists) is taken as such."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ShellInputError(f"{pair!r} is not KEY=VALUE.")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def cat_command(path: str) -> Command:
    """`cat` as one command: a script printing the first 64 KiB of the file, or one sentence
    on stderr (never a traceback) when the file cannot be read.

    The path travels as a Python string literal (`repr`), never as code."""
    source = (
        "import sys\n"
        "try:\n"
        f"    with open({path!r}, 'rb') as handle:\n"
        f"        data = handle.read({CAT_LIMIT + 1})\n"
        "except OSError as error:\n"
        "    why = (error.strerror or str(error)).rstrip('.')\n"
        # Concatenated, not an f-string: Python 3.11 allows no backslash (a Windows path's
        # repr) inside an f-string's braces.
        f"    sys.stderr.write('cat: cannot read ' + {path!r} + ': ' + why + '.\\n')\n"
        f"    raise SystemExit({SHELL_FAILURE_CODE})\n"
        f"sys.stdout.write(data[:{CAT_LIMIT}].decode('utf-8', 'replace'))\n"
        f"if len(data) > {CAT_LIMIT}:\n"
        "    sys.stderr.write('\\n[only the first 64 KiB is shown]\\n')\n"
    )
    return Command(SCRIPT_RUN, {"source": source, "params": {}})


_CAT_OPEN = "    with open("
_CAT_MODE = ", 'rb') as handle:"
# The line of the source that names the file (after "import sys" and "try:").
_CAT_LINE = 2


def is_cat_source(source: object) -> bool:
    """Whether `source` is exactly what `cat_command` builds for some path: a read of one file's
    first 64 KiB, which the collect tier may run (any other script needs the script tier)."""
    return cat_path_of(source) is not None


def cat_path_of(source: object) -> str | None:
    """The path `source` reads when it is exactly what `cat_command` builds, else None."""
    if not isinstance(source, str):
        return None
    lines = source.split("\n")
    if len(lines) <= _CAT_LINE:
        return None
    opening = lines[_CAT_LINE]
    if not (opening.startswith(_CAT_OPEN) and opening.endswith(_CAT_MODE)):
        return None
    path = _literal(opening[len(_CAT_OPEN) : -len(_CAT_MODE)])
    # Rebuilt and compared whole: any other line, or a path that is not a plain string, fails.
    if isinstance(path, str) and cat_command(path).args["source"] == source:
        return path
    return None


def python_code_of(source: object) -> str | None:
    """The one-liner `source` runs when it is exactly what `python_command` builds, else None."""
    if not isinstance(source, str) or not source.startswith(_PY_CODE):
        return None
    code = _literal(source[len(_PY_CODE) :].split("\n", 1)[0])
    if isinstance(code, str) and python_command(code).args["source"] == source:
        return code
    return None


def said_why_it_failed(action: str, args: Mapping[str, Any] | None, error: str | None) -> bool:
    """Whether a failed job is a shell-built `cat` or `py` that failed as they do: one sentence
    of their own on stderr ("cat: cannot read /x: No such file or directory."), then exit code
    1. A console that showed that stderr prints nothing after it, rather than the agent's "The
    script exited with code 1." as a second line: one failure, one sentence."""
    if action != SCRIPT_RUN or not args or error != exit_code_sentence(SHELL_FAILURE_CODE):
        return False
    source = args.get("source")
    return cat_path_of(source) is not None or python_code_of(source) is not None


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


_PY_CODE = "_code = "


def python_command(code: str) -> Command:
    """`py CODE`: an expression's value is printed, a statement is run as it is. An exception
    ends it with one line (its type and message) on stderr, not a traceback through the lines
    wrapped around CODE here."""
    source = (
        f"_code = {code!r}\n"
        "try:\n"
        "    try:\n"
        "        _compiled = compile(_code, '<py>', 'eval')\n"
        "    except SyntaxError:\n"
        "        exec(compile(_code, '<py>', 'exec'))\n"
        "    else:\n"
        "        _value = eval(_compiled)\n"
        "        if _value is not None:\n"
        "            print(repr(_value))\n"
        "except Exception as _error:\n"
        "    import sys\n"
        "    sys.stderr.write(f'{type(_error).__name__}: {_error}\\n')\n"
        f"    raise SystemExit({SHELL_FAILURE_CODE}) from None\n"
    )
    return Command(SCRIPT_RUN, {"source": source, "params": {}})


def script_command(words: Sequence[str]) -> Command:
    """`run NAME KEY=VALUE...`: library script NAME, which the platform looks up."""
    return Command(SCRIPT_RUN, {"params": parse_params(words[1:])}, script=words[0])


def put_command(
    sha256: str,
    size: int,
    words: Sequence[str],
    cwd: str,
    *,
    windows: bool,
    mode: str | None = None,
) -> Command:
    """`put LOCAL PATH [--overwrite]` once the client put LOCAL in the library; `mode` is the
    permission bits to deploy with (octal), as `tether put` chooses them."""
    args: dict[str, Any] = {
        "sha256": sha256,
        "size": size,
        "path": resolve(cwd, words[1], windows=windows),
        "overwrite": list(words[2:]) == ["--overwrite"],
    }
    if mode is not None:
        args["mode"] = mode
    return Command(FILES_PUT, args)


def _arity(words: Sequence[str], least: int, most: int, usage: str) -> None:
    if not least <= len(words) <= most:
        raise ShellInputError(f"usage: {usage}")


def read_line(line: str, cwd: str, *, windows: bool) -> Step | None:
    """What `line` asks, typed in directory `cwd`; None for an empty line.

    Raises ShellInputError with one sentence for a line that cannot run."""
    line = line.strip()
    if not line:
        return None
    name, _, rest = line.partition(" ")
    if name == "py":
        if not rest.strip():
            raise ShellInputError("py needs some Python code, for example: py import os; 1 + 1")
        return Step(name, command=python_command(rest.strip()), show_result=False)
    if name == "help":
        return Step(name)
    words = split_words(rest, windows=windows)
    if name in ("ls", "dir"):
        _arity(words, 0, 1, "ls [PATH]")
        path = resolve(cwd, words[0], windows=windows) if words else cwd
        return Step(name, words, Command(FILES_LIST, {"path": path}))
    if name == "cd":
        _arity(words, 1, 1, "cd PATH")
        path = resolve(cwd, words[0], windows=windows)
        return Step(name, words, Command(FILES_LIST, {"path": path}), show=False, cd_to=path)
    if name == "cat":
        _arity(words, 1, 1, "cat PATH")
        return Step(
            name, words, cat_command(resolve(cwd, words[0], windows=windows)), show_result=False
        )
    if name == "get":
        _arity(words, 1, 2, "get PATH [LOCAL]")
        path = resolve(cwd, words[0], windows=windows)
        return Step(name, words, Command(FILES_GET, {"path": path}))
    if name == "ps":
        _arity(words, 0, 0, "ps")
        return Step(name, words, Command(PROCESSES_LIST, {}))
    if name == "kill":
        tree = "--tree" in words
        pids = [w for w in words if w != "--tree"]
        _arity(pids, 1, 1, "kill PID [--tree]")
        if not pids[0].isdigit():
            raise ShellInputError(f"{pids[0]!r} is not a process id.")
        return Step(name, words, Command(PROCESSES_KILL, {"pid": int(pids[0]), "tree": tree}))
    if name == "run":
        if not words:
            raise ShellInputError("usage: run NAME [KEY=VALUE ...]")
        parse_params(words[1:])  # refuse a bad pair before the client looks the script up
        return Step(name, words)
    if name == "put":
        _arity(words, 2, 3, "put LOCAL PATH [--overwrite]")
        return Step(name, words)
    raise ShellInputError(f"{name!r} is not a shell command; 'help' lists them.")
