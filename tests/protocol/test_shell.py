"""The live shell's command language, shared by `tether shell` and the web console."""

import pytest

from tether.protocol.shell import Command, ShellInputError, help_text, read_line, resolve


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
