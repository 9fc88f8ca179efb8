"""`tether script list|show|history|save|delete`: the platform's script library."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from tether.cli.client import Api
from tether.cli.errors import CliError
from tether.cli.output import console, emit_json, plain, table
from tether.cli.times import short_time

script_app = typer.Typer(
    help="The script library: named scripts responders run on endpoints.", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

# Control characters except newline and tab: a source shown on a terminal must not drive it.
_TERMINAL_UNSAFE = dict.fromkeys([c for c in range(0x20) if c not in (0x09, 0x0A)] + [0x7F], "?")


def script_path(name: str) -> str:
    # Names may hold spaces and dots; nothing in them may be read as path structure.
    return f"/scripts/{quote(name, safe='')}"


def terminal_safe(source: str) -> str:
    """The source with escape and other control characters shown as '?', lines kept."""
    return source.translate(_TERMINAL_UNSAFE)


def read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text.") from exc
    except OSError as exc:
        raise CliError(f"Cannot read {path}: {exc.strerror or exc}.") from exc


def read_parameters(path: Path) -> dict[str, Any]:
    text = read_source(path)
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}.") from exc
    if not isinstance(schema, dict):
        raise CliError(f"{path} must hold a JSON object (a schema of type object).")
    return schema


@script_app.command("list")
def list_scripts(json_output: JsonOpt = False) -> None:
    """List the library's scripts with their latest version."""
    scripts = Api.from_profile().get("/scripts")
    if json_output:
        emit_json(scripts)
        return
    table(
        [{**s, "created_at": short_time(s.get("created_at"))} for s in scripts],
        [
            ("name", "Script"),
            ("version", "Version"),
            ("description", "Description"),
            ("created_by", "Saved by"),
            ("created_at", "Saved"),
        ],
    )


@script_app.command("show")
def show(
    name: str,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="That version, not the latest.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Print a script's source (the latest version unless --version is given)."""
    path = script_path(name) if version is None else f"{script_path(name)}/versions/{version}"
    script = Api.from_profile().get(path)
    if json_output:
        emit_json(script)
        return
    source = str(script["source"])
    if sys.stdout.isatty():
        source = terminal_safe(source)
    sys.stdout.write(source if source.endswith("\n") or not source else source + "\n")


@script_app.command("history")
def history(name: str, json_output: JsonOpt = False) -> None:
    """List every version of a script, oldest first."""
    versions = Api.from_profile().get(f"{script_path(name)}/versions")
    if json_output:
        emit_json(versions)
        return
    rows = [
        {**v, "sha256": str(v["sha256"])[:16], "created_at": short_time(v.get("created_at"))}
        for v in versions
    ]
    table(
        rows,
        [
            ("version", "Version"),
            ("description", "Description"),
            ("sha256", "SHA-256"),
            ("created_by", "Saved by"),
            ("created_at", "Saved"),
        ],
    )


@script_app.command("save")
def save(
    name: str,
    file: Annotated[Path, typer.Argument(help="The Python source to save.")],
    description: Annotated[str, typer.Option("--description", help="What the script does.")],
    parameters: Annotated[
        Path | None,
        typer.Option(
            "--parameters",
            help="JSON Schema (type object) of its parameters; without it the schema is kept.",
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Save FILE as the next version of script NAME (nothing changes if it is identical)."""
    body = {
        "source": read_source(file),
        "description": description,
        "parameters": read_parameters(parameters) if parameters is not None else None,
    }
    saved = Api.from_profile().put(script_path(name), json=body)
    if json_output:
        emit_json(saved)
    elif saved["new_version"]:
        console.print(f"Saved {plain(name)} version {saved['version']}.", markup=False)
    else:
        console.print(
            f"Unchanged: {plain(name)} version {saved['version']} already holds this.",
            markup=False,
        )


@script_app.command("delete")
def delete(name: str) -> None:
    """Remove a script from the library (its versions stay on record)."""
    Api.from_profile().delete(script_path(name))
    console.print(f"Deleted script {plain(name)}.", markup=False)
