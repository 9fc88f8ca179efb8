import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.scripts import read_parameters, read_source, script_app, script_path, terminal_safe

SCRIPT = {
    "name": "Process control",
    "version": 2,
    "description": "Kill a process",
    "parameters": {"type": "object", "properties": {}},
    "source": "print('hi')\n",
    "sha256": "ab" * 32,
    "created_by": "alice",
    "created_at": "2026-11-29T04:00:00Z",
}


class FakeApi:
    """Records each request and answers with what the test queued."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, Any]] = []

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        self.calls.append((method, path, json))
        return self.answer

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def put(self, path: str, json: Any) -> Any:
        return self._call("PUT", path, json)

    def delete(self, path: str) -> Any:
        return self._call("DELETE", path)


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Any:
    def invoke(answer: Any, *args: str) -> tuple[FakeApi, str]:
        api = FakeApi(answer)
        monkeypatch.setattr(Api, "from_profile", classmethod(lambda cls: api))
        result = CliRunner().invoke(script_app, list(args))
        assert result.exit_code == 0, result.output
        return api, result.output

    return invoke


def test_script_names_are_one_path_segment() -> None:
    assert script_path("Process control") == "/scripts/Process%20control"
    assert script_path("../x") == "/scripts/..%2Fx"
    assert script_path("a/b?c#d") == "/scripts/a%2Fb%3Fc%23d"


def test_terminal_safe_keeps_lines_and_tabs_but_not_escapes() -> None:
    assert terminal_safe("a\tb\nc\x1b[2Jd\r\n") == "a\tb\nc?[2Jd?\n"


def test_show_prints_the_source_of_the_version_asked_for(run: Any) -> None:
    api, output = run(SCRIPT, "show", "Process control", "--version", "2")
    assert api.calls == [("GET", "/scripts/Process%20control/versions/2", None)]
    assert output == "print('hi')\n"
    api, output = run(SCRIPT, "show", "Process control", "--json")
    assert api.calls == [("GET", "/scripts/Process%20control", None)]
    assert json.loads(output) == SCRIPT


def test_list_and_history(run: Any) -> None:
    api, output = run([SCRIPT], "list")
    assert api.calls == [("GET", "/scripts", None)]
    assert "Process control" in output
    assert "Kill a process" in output
    api, output = run([SCRIPT], "history", "Process control", "--json")
    assert api.calls == [("GET", "/scripts/Process%20control/versions", None)]
    assert json.loads(output) == [SCRIPT]


def test_save_sends_source_description_and_schema(run: Any, tmp_path: Path) -> None:
    source = tmp_path / "kill.py"
    source.write_text("print('hi')\n")
    schema = tmp_path / "kill.json"
    schema.write_text('{"type": "object", "properties": {"pid": {"type": "integer"}}}')
    api, output = run(
        {**SCRIPT, "new_version": True},
        "save",
        "Process control",
        str(source),
        "--description",
        "Kill a process",
        "--parameters",
        str(schema),
    )
    assert api.calls == [
        (
            "PUT",
            "/scripts/Process%20control",
            {
                "source": "print('hi')\n",
                "description": "Kill a process",
                "parameters": {"type": "object", "properties": {"pid": {"type": "integer"}}},
            },
        )
    ]
    assert output == "Saved Process control version 2.\n"
    api, output = run(
        {**SCRIPT, "new_version": False},
        "save",
        "Process control",
        str(source),
        "--description",
        "d",
    )
    assert api.calls[0][2]["parameters"] is None
    assert output == "Unchanged: Process control version 2 already holds this.\n"


def test_delete(run: Any) -> None:
    api, output = run(None, "delete", "Process control")
    assert api.calls == [("DELETE", "/scripts/Process%20control", None)]
    assert output == "Deleted script Process control.\n"


def test_unreadable_files_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"^Cannot read .*missing\.py: No such file or directory\.$"):
        read_source(tmp_path / "missing.py")
    binary = tmp_path / "blob.py"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CliError, match=r"blob\.py is not UTF-8 text\.$"):
        read_source(binary)
    broken = tmp_path / "schema.json"
    broken.write_text("{nope")
    with pytest.raises(CliError, match=r"schema\.json is not valid JSON: Expecting"):
        read_parameters(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(CliError, match=r"list\.json must hold a JSON object"):
        read_parameters(listed)
