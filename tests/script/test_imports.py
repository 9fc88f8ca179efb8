"""tether.script runs inside every script: it may import the stdlib, psutil and tether.protocol.

import-linter forbids the known packages; this allow-list also catches a new dependency.
"""

import ast
import sys
from pathlib import Path

import tether.script

PACKAGE = Path(tether.script.__file__).parent
ALLOWED_TETHER = ("tether.script", "tether.protocol", "tether.errors")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_helper_imports_only_what_it_may() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "__init__.py" in sources
    for source in sources:
        for name in imported_modules(source):
            top = name.partition(".")[0]
            allowed = (
                top in sys.stdlib_module_names
                or top == "psutil"
                or name == "tether.script"
                or name.startswith(ALLOWED_TETHER)
            )
            assert allowed, f"{source.relative_to(PACKAGE)} imports {name}"


def test_the_imports_check_would_catch_pydantic(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import pydantic\nfrom tether.agent import scripts\n")
    assert imported_modules(module) == {"pydantic", "tether.agent"}
