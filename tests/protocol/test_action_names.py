"""Action names are spelled once, in tether.protocol.action_names; the code refers to them."""

import ast
from pathlib import Path

from tether.protocol import ACTIONS, action_names

SRC = Path(__file__).resolve().parents[2] / "src" / "tether"
DECLARATION = SRC / "protocol" / "action_names.py"


def _declared_names() -> dict[str, str]:
    return {
        constant: value
        for constant, value in vars(action_names).items()
        if constant.isupper() and isinstance(value, str)
    }


def literal_action_names(source: str, names: set[str]) -> list[int]:
    """Lines of `source` holding a string literal that is exactly an action's name."""
    return sorted(
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    )


def test_every_declared_action_has_a_name_constant_and_no_constant_is_spare() -> None:
    assert sorted(_declared_names().values()) == sorted(ACTIONS)


def test_no_module_outside_the_declaration_spells_an_action_name() -> None:
    names = set(ACTIONS)
    found = {
        f"{path.relative_to(SRC)}:{line}"
        for path in SRC.rglob("*.py")
        if path != DECLARATION
        for line in literal_action_names(path.read_text(encoding="utf-8"), names)
    }
    assert not found, f"spell these action names through tether.protocol.action_names: {found}"


def test_the_check_finds_a_literal_name_but_not_a_comment_or_a_longer_string() -> None:
    source = (
        'ACTION = "files.get"  # not "files.put"\n'
        'DOC = "Retrieve with files.get."\n'
        "def f(job):\n"
        '    return job.action == "script.run"\n'
    )
    assert literal_action_names(source, set(ACTIONS)) == [1, 4]
