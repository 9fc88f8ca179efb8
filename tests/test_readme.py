"""The README's "Using it" is a sequence a new user follows top to bottom on the quickstart:
every line is a command the CLI accepts, and nothing is used before the line that makes it
(a segment, a user, a script file), so following it in order cannot fail on the order."""

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup

from tether.main import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "src" / "tether" / "script" / "examples"
# What the placeholders stand for when the commands are parsed.
PLACEHOLDERS = {"HOST": "ws-1", "ID": "1", "CODE": "ABCD-EFGH", "DIR": "/tmp/data", "PID": "4242"}


def using_it() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the Using it section holds no sh block"
    return block.group(1)


def commands(block: str) -> Iterator[list[str]]:
    """Each command of the block as words: continuations joined, comments, redirections and
    optional [--flag value] parts removed, `a && b` split, environment assignments dropped."""
    joined = block.replace("\\\n", " ")
    for line in joined.splitlines():
        words = shlex.split(re.sub(r"\s\[--[^\]]*\]", "", line), comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if current:
                    yield current
                current = []
            else:
                current.append(word)


def tether_commands() -> list[list[str]]:
    found = []
    for words in commands(using_it()):
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words and words[0] == "tether":
            if ">" in words:
                words = words[: words.index(">")]
            found.append([PLACEHOLDERS.get(w, w) for w in words[1:]])
    return found


def parse(command: Any, args: list[str], name: str = "tether") -> None:
    """Parse `args` as the CLI would, down to the leaf command, without running anything.
    (Typer parses with its own copy of click, so its classes and errors are Typer's.)"""
    context = command.make_context(name, list(args))
    if isinstance(command, TyperGroup):
        # What the group's own options left (click keeps the subcommand's name apart).
        rest = [*getattr(context, "_protected_args", ()), *context.args]
        if not rest:
            return  # a group that runs on its own (`tether sessions`)
        sub_name, sub, sub_args = command.resolve_command(context, rest)
        assert sub is not None
        assert sub_name is not None
        parse(sub, sub_args, sub_name)


def test_the_sequence_is_long_enough_to_be_the_real_one() -> None:
    assert len(tether_commands()) > 40


@pytest.mark.parametrize("args", tether_commands(), ids=" ".join)
def test_every_line_is_a_command_the_cli_accepts(args: list[str]) -> None:
    try:
        parse(typer.main.get_command(app), args)
    except typer.TyperException as exc:
        pytest.fail(f"tether {' '.join(args)}: {exc}")


def test_nothing_is_used_before_the_line_that_makes_it() -> None:
    segments, users = {"default"}, {"admin"}
    library = {json.loads(p.read_text())["name"] for p in EXAMPLES.glob("*.json")}
    for args in tether_commands():
        line = "tether " + " ".join(args)
        if args[:2] == ["segment", "create"]:
            segments.add(args[2])
        elif args[:2] == ["user", "add"]:
            users.add(args[2])
        named_segments = [args[i + 1] for i, w in enumerate(args) if w == "--segment"]
        if args[:2] in (["segment", "set"], ["host", "move"]):
            named_segments.append(args[2] if args[0] == "segment" else args[3])
        for segment in named_segments:
            assert segment in segments, f"{line}: segment {segment} is not created before"
        named_users = [args[i + 1] for i, w in enumerate(args) if w == "-u"]
        if args[:2] in (["role", "grant"], ["user", "enrollment-code"], ["user", "reset-mfa"]):
            named_users.append(args[2])
        for user in named_users:
            assert user in users, f"{line}: user {user} is not added before"
        if args[0] == "run" and "--script" in args:
            script = args[args.index("--script") + 1]
            assert script in library, f"{line}: no shipped example is named {script!r}"
        elif args[0] == "run":
            assert (ROOT / args[2]).is_file(), f"{line}: {args[2]} is not in the repository"


def test_the_host_is_revoked_only_after_its_last_use() -> None:
    uses = [i for i, args in enumerate(tether_commands()) if "ws-1" in args]
    revoked = [i for i, args in enumerate(tether_commands()) if args[:2] == ["host", "revoke"]]
    assert revoked == [uses[-1]]
