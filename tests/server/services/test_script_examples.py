"""Shipped examples: loaded once at platform start, never over a responder's edit or deletion."""

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.server.services.audit import AuditLog
from tether.server.services.script_examples import load_examples, shipped_examples
from tether.server.services.scripts import ScriptLibrary

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"pid": {"type": "integer"}},
    "required": ["pid"],
}


@pytest.fixture
def library(engine: AsyncEngine, audit: AuditLog) -> ScriptLibrary:
    return ScriptLibrary(engine, audit)


def write_example(folder: Path, stem: str, name: str, source: str = "print('hi')\n") -> None:
    (folder / f"{stem}.py").write_text(source, encoding="utf-8")
    meta = {"name": name, "description": f"About {name}", "parameters": SCHEMA}
    (folder / f"{stem}.json").write_text(json.dumps(meta), encoding="utf-8")


async def test_examples_are_loaded_once_and_an_edit_survives_a_restart(
    library: ScriptLibrary, tmp_path: Path, audit: AuditLog
) -> None:
    write_example(tmp_path, "process_control", "Process control")
    write_example(tmp_path, "directory_access_control", "Directory access control")
    assert await load_examples(library, tmp_path) == [
        "Directory access control",
        "Process control",
    ]
    script = await library.get("Process control")
    assert (script.version, script.created_by, script.description, script.parameters) == (
        1,
        "tether",
        "About Process control",
        SCHEMA,
    )
    saves = [r async for r in audit.iter_records() if r.action == "script.save"]
    assert [(r.actor, r.source) for r in saves] == [("tether", "platform start")] * 2

    await library.save(
        "Process control", "print('edited')\n", "mine", None, actor="bob", source_addr="s"
    )
    await library.delete("Directory access control", actor="bob", source_addr="s")
    # A newer release ships a changed example: the responder's edit and deletion still stand.
    write_example(tmp_path, "process_control", "Process control", "print('new release')\n")
    assert await load_examples(library, tmp_path) == []
    assert (await library.get("Process control")).source == "print('edited')\n"
    assert [s.name for s in await library.list()] == ["Process control"]


async def test_half_pairs_and_broken_examples_are_skipped(
    library: ScriptLibrary, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "lonely.py").write_text("print(1)\n")
    (tmp_path / "orphan.json").write_text(json.dumps({"name": "orphan", "parameters": SCHEMA}))
    write_example(tmp_path, "broken", "broken", "def (\n")
    (tmp_path / "garbled.py").write_text("print(1)\n")
    (tmp_path / "garbled.json").write_text("{not json")
    write_example(tmp_path, "good", "good")
    with caplog.at_level(logging.WARNING):
        assert await load_examples(library, tmp_path) == ["good"]
    assert [s.name for s in await library.list()] == ["good"]
    assert "broken.json was not loaded: The script has a syntax error on line 1" in caplog.text
    assert "garbled.json was not loaded" in caplog.text


def test_without_the_examples_package_nothing_is_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.server.services import script_examples

    monkeypatch.setattr(script_examples, "EXAMPLES_PACKAGE", "tether.no_such_package.examples")
    assert shipped_examples() is None
