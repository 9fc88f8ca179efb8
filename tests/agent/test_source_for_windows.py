"""The agent's source, read as a tree: what would go wrong on the first Windows endpoint.

- every `os.open` carries O_BINARY in its flags: without it Windows opens the descriptor in
  text mode (CRLF collapsed, Ctrl-Z read as the end), and files move scrambled;
- no program is started by a bare name: Windows looks in the current directory first, so
  native tools are named by full path (tether.agent.windows_tools), and a command line never
  begins with a literal `*.exe` (a list or tuple whose first item is one): program names go
  through the functions that build the full path.
"""

import ast
from pathlib import Path

import pytest

import tether.agent

AGENT = Path(tether.agent.__file__).parent
SOURCES = sorted(AGENT.rglob("*.py"))
# Calls that start a program from their first argument.
STARTERS = {
    ("asyncio", "create_subprocess_exec"),
    ("asyncio", "create_subprocess_shell"),
    ("subprocess", "run"),
    ("subprocess", "Popen"),
    ("subprocess", "call"),
    ("subprocess", "check_call"),
    ("subprocess", "check_output"),
    ("os", "system"),
    ("os", "startfile"),
    ("os", "execv"),
    ("os", "execvp"),
    ("os", "spawnv"),
    (None, "run_command"),
}
PATH_BUILDERS = {"system_program"}


def _mentions_binary(node: ast.AST, names: dict[str, ast.AST], seen: frozenset[str]) -> bool:
    """Whether the expression takes O_BINARY in, directly or through a name assigned above."""
    for part in ast.walk(node):
        if isinstance(part, ast.Attribute) and part.attr == "O_BINARY":
            return True
        if isinstance(part, ast.Constant) and part.value == "O_BINARY":
            return True  # getattr(os, "O_BINARY", 0)
        if (
            isinstance(part, ast.Name)
            and part.id in names
            and part.id not in seen
            and _mentions_binary(names[part.id], names, seen | {part.id})
        ):
            return True
    return False


def _assignments(tree: ast.AST) -> dict[str, list[ast.expr]]:
    """Every value assigned to a plain name (or |= to it) in the module, by name."""
    found: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
        elif (
            isinstance(node, ast.AugAssign | ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.value is not None
        ):
            found.setdefault(node.target.id, []).append(node.value)
    return found


def _binary_flags(call: ast.Call, assigned: dict[str, list[ast.expr]]) -> bool:
    flags = call.args[1] if len(call.args) > 1 else None
    flags = flags or next((k.value for k in call.keywords if k.arg == "flags"), None)
    if flags is None:
        return False
    # A name counts when any value it is given (or |= with) takes O_BINARY in.
    merged: dict[str, ast.AST] = {
        name: ast.Tuple(elts=list(values), ctx=ast.Load()) for name, values in assigned.items()
    }
    return _mentions_binary(flags, merged, frozenset())


def _called(call: ast.Call) -> tuple[str | None, str] | None:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id, func.attr
    if isinstance(func, ast.Name):
        return None, func.id
    return None


def _bare_program(node: ast.AST) -> str | None:
    """The program a literal first argument names, when it is a bare name."""
    if isinstance(node, ast.List | ast.Tuple) and node.elts:
        node = node.elts[0]
    if isinstance(node, ast.Starred):
        return None
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "/" not in node.value
        and "\\" not in node.value
    ):
        return node.value
    return None


def _findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    assigned = _assignments(tree)
    where = path.relative_to(AGENT) if path.is_relative_to(AGENT) else path.name
    problems = []
    builder_args: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called(node) in {(None, b) for b in PATH_BUILDERS}:
            builder_args |= {id(arg) for arg in node.args}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = _called(node)
            if called == ("os", "open") and not _binary_flags(node, assigned):
                problems.append(f"{where}:{node.lineno}: os.open without O_BINARY")
            if called in STARTERS and node.args:
                bare = _bare_program(node.args[0])
                if bare is not None:
                    problems.append(f"{where}:{node.lineno}: {bare!r} started by a bare name")
        if isinstance(node, ast.List | ast.Tuple) and node.elts:
            first = node.elts[0]
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and first.value.lower().endswith(".exe")
                and "/" not in first.value
                and "\\" not in first.value
                and id(first) not in builder_args
            ):
                problems.append(f"{where}:{first.lineno}: command line starts with {first.value!r}")
    return problems


def test_the_agent_source_is_found() -> None:
    assert len(SOURCES) > 30
    assert AGENT / "transfer.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(AGENT)))
def test_every_open_is_binary_and_every_program_has_a_full_path(path: Path) -> None:
    assert _findings(path) == []


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """The walker itself: each mistake in a sample file is reported, each fix is not."""
    sample = tmp_path / "sample.py"
    text = (
        "import os, asyncio, subprocess\n"
        "FLAGS = os.O_RDONLY | getattr(os, 'O_BINARY', 0)\n"
        "fd = os.open(p, os.O_RDONLY)\n"  # 3: text mode on Windows
        "fd = os.open(p, FLAGS)\n"
        "fd = os.open(p, os.O_RDONLY | os.O_BINARY)\n"
        "subprocess.run(['powershell.exe', '-File', x])\n"  # 6: bare name (and .exe)
        "asyncio.create_subprocess_exec('icacls', x)\n"  # 7: bare name
        "subprocess.run([program, '-File', x])\n"
        "system_program('sc.exe')\n"
        "argv = ('cmd.exe', '/c', x)\n"  # 10: a command line to start later
        "CRITICAL = frozenset({'lsass.exe'})\n"  # a process name, not a program to start
    )
    sample.write_text(text)
    found = _findings(sample)
    lines = sorted(int(problem.split(":")[1]) for problem in found)
    assert lines == [3, 6, 6, 7, 10]
