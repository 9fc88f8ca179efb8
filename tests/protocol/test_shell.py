"""The live shell's command language, shared by `tether shell` and the web console."""

import subprocess
import sys
from pathlib import Path

import pytest

from tether.protocol.scripts import exit_code_sentence
from tether.protocol.shell import (
    Command,
    ShellInputError,
    cat_command,
    help_text,
    is_cat_source,
    python_command,
    read_line,
    resolve,
    said_why_it_failed,
)


def test_lines_become_the_endpoint_commands_with_paths_resolved() -> None:
    assert read_line("   ", "/var", windows=False) is None
    ls = read_line("ls ../log", "/var/tmp", windows=False)
    assert ls is not None
    assert ls.command == Command("files.list", {"path": "/var/log"})
    cd = read_line("cd 'my dir'", "/home", windows=False)
    assert cd is not None
    assert (cd.command, cd.cd_to, cd.show) == (
        Command("files.list", {"path": "/home/my dir"}),
        "/home/my dir",
        False,
    )
    kill = read_line("kill --tree 42", "/", windows=False)
    assert kill is not None
    assert kill.command == Command("processes.kill", {"pid": 42, "tree": True})
    get = read_line('get "Program Files\\x.exe"', "C:\\", windows=True)
    assert get is not None
    assert get.command == Command("files.get", {"path": "C:\\Program Files\\x.exe"})
    cat = read_line("cat /etc/passwd", "/", windows=False)
    assert cat is not None
    assert cat.command is not None
    # The path is a string literal in the script, never code.
    assert "open('/etc/passwd', 'rb')" in cat.command.args["source"]
    assert is_cat_source(cat.command.args["source"])
    # Words a client completes itself carry no command.
    run = read_line("run triage depth=2", "/", windows=False)
    assert run is not None
    assert (run.command, run.words) == (None, ["triage", "depth=2"])


@pytest.mark.parametrize(
    ("line", "sentence"),
    [
        ("rm -rf /", "'rm' is not a shell command; 'help' lists them."),
        ("kill 1 2", "usage: kill PID [--tree]"),
        ("kill -9", "'-9' is not a process id."),
        ("ls 'open", "cannot read the line (No closing quotation)."),
        ("run x oops", "'oops' is not KEY=VALUE."),
        ("py", "py needs some Python code, for example: py import os; 1 + 1"),
    ],
)
def test_a_line_that_cannot_run_is_one_sentence(line: str, sentence: str) -> None:
    with pytest.raises(ShellInputError) as refused:
        read_line(line, "/", windows=False)
    assert str(refused.value) == sentence


def test_resolve_and_help() -> None:
    assert resolve("/", "//etc/../root", windows=False) == "/root"
    assert resolve("C:\\Users", "..", windows=True) == "C:\\"
    listed = help_text(omit=frozenset({"put"}), extra=("bye",))
    assert "ls [PATH]" in listed
    assert "put LOCAL" not in listed
    assert listed.endswith("\nbye")


def _run(source: str) -> subprocess.CompletedProcess[str]:
    """The generated script, run by a real Python as the agent's child would run it."""
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("command", "sentence"),
    [
        (
            cat_command("/no/such/dir/it's-missing"),
            "cat: cannot read /no/such/dir/it's-missing: No such file or directory.",
        ),
        (cat_command("/"), "cat: cannot read /: Is a directory."),
        (python_command("1 / 0"), "ZeroDivisionError: division by zero"),
        (python_command("raise KeyError('x')"), "KeyError: 'x'"),
        (python_command("if"), "SyntaxError: invalid syntax (<py>, line 1)"),
    ],
)
def test_a_failing_shell_command_says_one_sentence_not_a_traceback(
    command: Command, sentence: str
) -> None:
    ran = _run(command.args["source"])
    assert ran.returncode == 1
    assert ran.stderr == sentence + "\n"
    assert ran.stdout == ""


def test_cat_and_py_still_print_what_they_read(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("hello\n")
    assert _run(cat_command(str(target)).args["source"]).stdout == "hello\n"
    assert _run(python_command("6 * 7").args["source"]).stdout == "42\n"


def test_only_a_shell_built_cat_or_py_ending_with_code_1_said_why_it_failed() -> None:
    exited_1 = exit_code_sentence(1)
    cat = cat_command("/missing").args
    py = python_command("1 / 0").args
    assert said_why_it_failed("script.run", cat, exited_1)
    assert said_why_it_failed("script.run", py, exited_1)
    # Another ending is news the console must still print.
    assert not said_why_it_failed("script.run", cat, exit_code_sentence(2))
    assert not said_why_it_failed("script.run", cat, "The script was cancelled and stopped.")
    assert not said_why_it_failed("script.run", cat, None)
    # A hand-written script that looks like a cat is not one; other actions never are.
    posing = {"source": cat["source"].replace("sys.stdout", "print and sys.stdout"), "params": {}}
    assert not said_why_it_failed("script.run", posing, exited_1)
    assert not said_why_it_failed("files.list", {"path": "/"}, exited_1)
    assert not said_why_it_failed("script.run", None, exited_1)
